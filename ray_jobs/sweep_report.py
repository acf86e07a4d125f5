"""A sweep's objective and its report: the score, the Pareto front, the best trial, the
results table (CSV, JSON, text) and the embedding-vs-restored PSNR plot. No Ray here.

The objective. A sweep that only maximised restored PSNR would find weights whose embedding
no longer looks like the reference image (the network hides the other images in visible
noise), and one that only maximised embedding PSNR would find a pretty embedding that
restores nothing. So the default question is constrained: *maximise restored PSNR subject to
embedding PSNR >= T*. Early stopping needs one number that orders every trial, feasible or
not, so the constraint becomes a penalty::

    objective = restored_psnr - penalty * max(0, T - embedding_psnr)      (dB)

With the default penalty of 10 dB per dB below T, a feasible trial scores exactly its
restored PSNR and an infeasible one pays ten times its shortfall, so it ranks below nearly
every feasible trial while still being ordered by how close it came. The best trial is the
feasible trial with the highest restored PSNR; only when no trial is feasible is it the one
with the highest objective, and the report says so.

Trials that ASHA stopped early are scored at the step where they stopped, which does not
compare with a trial that ran all its steps; so the Pareto front and the best trial are taken
over the completed trials (over every scored trial only when none completed). The plot shows
all trials, the early-stopped ones with their own marker.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EMBEDDING = "val/embedding_psnr"
RESTORED = "val/restored_psnr"
SCORE_COLUMNS = ("embedding_psnr", "restored_psnr", "embedding_ssim", "restored_ssim")


def objective(restored_psnr: float, embedding_psnr: float, min_embedding_psnr: float,
              penalty: float) -> float:
    """Restored PSNR less ``penalty`` dB per dB that embedding PSNR falls below the threshold."""
    return restored_psnr - penalty * max(0.0, min_embedding_psnr - embedding_psnr)


def objective_metrics(metrics: dict[str, Any], min_embedding_psnr: float,
                      penalty: float) -> dict[str, float]:
    """``objective`` and ``feasible`` (1.0 / 0.0) for a report that carries validation scores;
    empty for one that does not."""
    if EMBEDDING not in metrics or RESTORED not in metrics:
        return {}
    emb, restored = float(metrics[EMBEDDING]), float(metrics[RESTORED])
    return {"objective": objective(restored, emb, min_embedding_psnr, penalty),
            "feasible": float(emb >= min_embedding_psnr)}


def _scored(row: dict[str, Any]) -> bool:
    return all(_finite(row.get(k)) for k in ("embedding_psnr", "restored_psnr", "objective"))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def pareto_front(points: Sequence[tuple[float, float] | None]) -> list[bool]:
    """Which ``(embedding_psnr, restored_psnr)`` points no other point dominates (at least as
    good on both axes, better on one); ``None`` points are never on the front."""
    flags = []
    for i, p in enumerate(points):
        if p is None:
            flags.append(False)
            continue
        dominated = any(q is not None and j != i and q[0] >= p[0] and q[1] >= p[1]
                        and (q[0] > p[0] or q[1] > p[1]) for j, q in enumerate(points))
        flags.append(not dominated)
    return flags


def pick_best(rows: Sequence[dict[str, Any]]) -> int | None:
    """Index of the best trial (see the module docstring), or None when none was scored."""
    scored = [i for i, r in enumerate(rows) if _scored(r)]
    if not scored:
        return None
    feasible = [i for i in scored if rows[i]["feasible"]]
    if feasible:
        return max(feasible, key=lambda i: rows[i]["restored_psnr"])
    return max(scored, key=lambda i: rows[i]["objective"])


def trial_row(trial_id: str, params: dict[str, Any], metrics: dict[str, Any], status: str,
              min_embedding_psnr: float, penalty: float, **extra: Any) -> dict[str, Any]:
    """One table row from a trial's searched ``params`` and last reported ``metrics``."""
    row: dict[str, Any] = {"trial_id": trial_id, "status": status,
                           "step": metrics.get("step"), **extra, **params}
    for column in SCORE_COLUMNS:
        value = metrics.get(f"val/{column}")
        row[column] = float(value) if _finite(value) else None
    if row["embedding_psnr"] is not None and row["restored_psnr"] is not None:
        row.update(objective_metrics(metrics, min_embedding_psnr, penalty))
        row["feasible"] = bool(row["feasible"])
    else:
        row.update(objective=None, feasible=False)
    return row


def annotate(rows: list[dict[str, Any]]) -> int | None:
    """Mark ``pareto`` and ``best`` on every row (over the completed trials, see the module
    docstring); returns the best row's index."""
    scored = [i for i, r in enumerate(rows) if _scored(r)]
    pool = [i for i in scored if rows[i]["status"] == "completed"] or scored
    points = [(r["embedding_psnr"], r["restored_psnr"]) if i in pool else None
              for i, r in enumerate(rows)]
    for row, on_front in zip(rows, pareto_front(points)):
        row["pareto"] = on_front
    best = pick_best([rows[i] for i in pool])
    best = pool[best] if best is not None else None
    for i, row in enumerate(rows):
        row["best"] = i == best
    return best


def columns(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[str]:
    extra = [k for r in rows for k in r if k not in fields]
    ordered = ["trial_id", "status", "step", *fields, *SCORE_COLUMNS, "objective", "feasible",
               "pareto", "best"]
    return ordered + [k for k in dict.fromkeys(extra) if k not in ordered]


def write_tables(rows: Sequence[dict[str, Any]], fields: Sequence[str], directory: Path,
                 summary: dict[str, Any]) -> tuple[Path, Path]:
    """``results.csv`` (one row per trial) and ``results.json`` (``summary`` plus the rows)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = columns(rows, fields)
    csv_path, json_path = directory / "results.csv", directory / "results.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in names})
    json_path.write_text(json.dumps({**summary, "trials": list(rows)}, indent=1,
                                    default=str) + "\n")
    return csv_path, json_path


def format_table(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    """The table as aligned text, best row marked ``*`` and Pareto rows ``P``."""
    names = [n for n in columns(rows, fields)
             if n not in ("embedding_ssim", "restored_ssim", "pareto", "best", "run_id")]
    header = ["", *names]
    lines = [header]
    for row in rows:
        mark = ("*" if row.get("best") else " ") + ("P" if row.get("pareto") else " ")
        lines.append([mark, *(_cell(row.get(n)) for n in names)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 0.01 or abs(value) >= 1000 else f"{value:.3f}"
    return str(value)


def plot(rows: Sequence[dict[str, Any]], min_embedding_psnr: float, path: Path,
         title: str = "") -> Path:
    """Embedding PSNR (x) against restored PSNR (y) for every scored trial: the Pareto front
    joined by a line, the best trial ringed, the embedding threshold as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    scored = [r for r in rows if _scored(r)]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for status, marker in (("completed", "o"), ("early-stopped", "x")):
        group = [r for r in scored if r["status"] == status and not r["pareto"]]
        if group:
            ax.scatter([r["embedding_psnr"] for r in group], [r["restored_psnr"] for r in group],
                       marker=marker, color="tab:gray", label=f"{status} trial")
    front = sorted((r for r in scored if r["pareto"]), key=lambda r: r["embedding_psnr"])
    if front:
        ax.plot([r["embedding_psnr"] for r in front], [r["restored_psnr"] for r in front],
                "-o", color="tab:red", label="Pareto front")
    for r in scored:
        ax.annotate(str(r["trial_id"]), (r["embedding_psnr"], r["restored_psnr"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    best = [r for r in scored if r["best"]]
    if best:
        ax.scatter([best[0]["embedding_psnr"]], [best[0]["restored_psnr"]], s=220,
                   facecolors="none", edgecolors="tab:blue", linewidths=2, label="best (tuned)")
    ax.axvline(min_embedding_psnr, color="tab:green", linestyle="--",
               label=f"min embedding PSNR {min_embedding_psnr:g} dB")
    ax.set_xlabel("embedding PSNR (dB, validation)")
    ax.set_ylabel("restored PSNR (dB, validation)")
    ax.set_title(title or "trials: embedding vs restored PSNR")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
