"""The sweep's plain parts: the --space grammar, the objective, the Pareto front, the best
trial, the table and the plot (no Ray, no MLflow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from iicnet.model.config import Config, ConfigError
from ray_jobs import sweep_report, sweep_space


@pytest.fixture
def base() -> Config:
    return Config().override(["model.blocks=2"])


@pytest.mark.parametrize(("item", "kind", "args"), [
    ("loss.lambda_res=loguniform:0.1:10", "loguniform", (0.1, 10.0)),
    ("optim.lr=uniform:1.0e-4:5e-4", "uniform", (1e-4, 5e-4)),
    ("model.blocks=randint:1:4", "randint", (1, 4)),
    ("model.blocks=choice:2,4,8", "choice", (2, 4, 8)),
    ("model.downscale=choice:none,haar", "choice", ("none", "haar")),
    ("model.fused=choice:true,false", "choice", (True, False)),
    ("optim.lr=choice:1e-4,2.0e-4", "choice", (1e-4, 2e-4)),
])
def test_the_space_grammar_reads_each_kind(base, item, kind, args):
    dim = sweep_space.parse(item, base)
    assert (dim.field, dim.kind, dim.args) == (item.partition("=")[0], kind, args)
    assert sweep_space.parse(dim.spec, base) == dim


@pytest.mark.parametrize(("item", "message"), [
    ("loss.lambda_res=normal:0:1", "expected FIELD=KIND:ARGS"),
    ("loss.lambda_res", "expected FIELD=KIND:ARGS"),
    ("loss.nope=uniform:0:1", "unknown field 'loss.nope'"),
    ("model.blocks=uniform:1:4", "not a float field; use randint or choice"),
    ("loss.lambda_res=randint:1:4", "not an integer field"),
    ("model.downscale=uniform:1:2", "not a float field; use choice"),
    ("loss.lambda_res=loguniform:0:10", "loguniform needs LOW > 0"),
    ("loss.lambda_res=uniform:3:1", "LOW must be below HIGH"),
    ("loss.lambda_res=uniform:a:1", "'a' is not a number"),
    ("loss.lambda_res=uniform:1", "takes LOW:HIGH"),
    ("model.blocks=choice:0,2", "model.blocks: must be positive"),
    ("model.downscale=choice:none,wavelet", "'wavelet' is not one of"),
    ("model.blocks=choice:", "at least one value"),
])
def test_a_bad_space_names_the_problem(base, item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        sweep_space.parse(item, base)
    assert item in str(info.value)


def test_the_default_space_and_how_flags_change_it(base):
    fields = {d.field: d for d in sweep_space.build(base, [], [])}
    assert list(fields) == ["loss.lambda_emb", "loss.lambda_freq", "loss.lambda_res",
                            "model.blocks"]
    assert all(fields[f].kind == "loguniform" for f in list(fields)[:3])
    assert fields["model.blocks"].args == (1, 2, 3)
    assert sweep_space.default_space(Config())[-1].args == (5, 10, 15)

    built = sweep_space.build(base, ["model.blocks=choice:4,8", "optim.lr=loguniform:1e-4:1e-3"],
                              ["loss.lambda_freq"])
    assert [d.field for d in built] == ["loss.lambda_emb", "loss.lambda_res", "model.blocks",
                                        "optim.lr"]
    assert built[2].args == (4, 8)
    with pytest.raises(ConfigError, match="both --set and --space"):
        sweep_space.build(base, ["model.blocks=choice:4,8"], ["model.blocks"])
    with pytest.raises(ConfigError, match="nothing left to search"):
        sweep_space.build(base, [], [d.field for d in sweep_space.default_space(base)])


def test_apply_sets_typed_values_and_validates(base):
    cfg = sweep_space.apply(base, {"loss.lambda_res": 1e-5, "model.blocks": 3})
    assert (cfg.loss.lambda_res, cfg.model.blocks) == (1e-5, 3)
    with pytest.raises(ConfigError, match="model.blocks"):
        sweep_space.apply(base, {"model.blocks": 0})


def test_tune_domains_cover_the_declared_ranges():
    from ray import tune

    dim = sweep_space.Dimension("model.blocks", "randint", (1, 3))
    domain = dim.to_tune()
    assert isinstance(domain, tune.search.sample.Integer)
    assert {domain.sample() for _ in range(200)} == {1, 2, 3}  # HIGH included
    assert sweep_space.Dimension("x.y", "choice", (2, 4)).to_tune().categories == [2, 4]
    log = sweep_space.Dimension("x.y", "loguniform", (0.1, 10.0)).to_tune()
    assert (log.lower, log.upper) == (0.1, 10.0)


def test_the_objective_is_restored_psnr_with_a_penalty_below_the_threshold():
    assert sweep_report.objective(30.0, 32.0, 30.0, 10.0) == 30.0
    assert sweep_report.objective(30.0, 30.0, 30.0, 10.0) == 30.0
    assert sweep_report.objective(30.0, 29.5, 30.0, 10.0) == 25.0
    assert sweep_report.objective(30.0, 20.0, 30.0, 0.0) == 30.0
    metrics = {"val/embedding_psnr": 29.0, "val/restored_psnr": 31.0, "step": 4}
    assert sweep_report.objective_metrics(metrics, 30.0, 2.0) == {"objective": 29.0,
                                                                   "feasible": 0.0}
    assert sweep_report.objective_metrics({"step": 4}, 30.0, 2.0) == {}


def test_the_pareto_front_keeps_undominated_points():
    points = [(30, 30), (32, 28), (29, 29), (30, 30), (35, 20), None, (31, 28)]
    assert sweep_report.pareto_front(points) == [True, True, False, True, True, False, False]
    assert sweep_report.pareto_front([]) == []


def row(trial, emb, restored, status="completed", min_emb=30.0):
    metrics = {"step": 10}
    if emb is not None:
        metrics.update({"val/embedding_psnr": emb, "val/restored_psnr": restored,
                        "val/embedding_ssim": 0.9, "val/restored_ssim": 0.8})
    return sweep_report.trial_row(trial, {"loss.lambda_res": 1.0}, metrics, status, min_emb,
                                  10.0, run_id=f"run-{trial}")


def test_the_best_trial_is_the_feasible_one_restoring_best():
    rows = [row("a", 31, 30), row("b", 29.9, 34), row("c", 35, 31), row("d", None, None,
                                                                         "failed")]
    best = sweep_report.annotate(rows)
    assert rows[best]["trial_id"] == "c"  # b restores better but its embedding is too poor
    assert [r["pareto"] for r in rows] == [False, True, True, False]
    assert [r["best"] for r in rows] == [False, False, True, False]
    assert rows[3]["objective"] is None and rows[3]["feasible"] is False


def test_early_stopped_trials_are_plotted_but_not_picked():
    rows = [row("a", 31, 30), row("b", 32, 35, "early-stopped"), row("c", 29, 31)]
    assert rows[sweep_report.annotate(rows)]["trial_id"] == "a"
    assert [r["pareto"] for r in rows] == [True, False, True]
    only_stopped = [row("b", 32, 35, "early-stopped"), row("d", 31, 36, "early-stopped")]
    assert only_stopped[sweep_report.annotate(only_stopped)]["trial_id"] == "d"


def test_with_no_feasible_trial_the_best_is_the_highest_objective():
    rows = [row("a", 25, 40), row("b", 29, 33), row("c", None, None, "failed")]
    assert rows[sweep_report.annotate(rows)]["trial_id"] == "b"  # 33 - 10 > 40 - 50
    assert sweep_report.pick_best([row("c", None, None, "failed")]) is None


def test_tables_and_plot_are_written(tmp_path: Path):
    rows = [row("a", 31, 30), row("b", 29, 34, "early-stopped"), row("c", 33, 31),
            row("d", None, None, "failed")]
    sweep_report.annotate(rows)
    fields = ["loss.lambda_res"]
    csv_path, json_path = sweep_report.write_tables(rows, fields, tmp_path / "out",
                                                    {"sweep": "s"})
    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert [r["trial_id"] for r in table] == ["a", "b", "c", "d"]
    assert list(table[0])[:4] == ["trial_id", "status", "step", "loss.lambda_res"]
    assert table[3]["restored_psnr"] == "" and table[0]["best"] == "False"
    data = json.loads(json_path.read_text())
    assert data["sweep"] == "s" and len(data["trials"]) == 4
    assert [t["best"] for t in data["trials"]] == [False, False, True, False]
    text = sweep_report.format_table(rows, fields)
    assert text.splitlines()[3].lstrip().startswith("*P") and "run-a" not in text
    png = sweep_report.plot(rows, 30.0, tmp_path / "out" / "pareto.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
