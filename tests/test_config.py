import pytest

from iicnet.formats.config_file import load
from iicnet.model.config import Config, ConfigError, from_dict


def test_defaults_are_the_published_video_k5_design():
    cfg = Config()
    assert (cfg.model.num_images, cfg.model.blocks, cfg.model.nf) == (5, 10, 64)
    assert (cfg.loss.lambda_emb, cfg.loss.lambda_freq, cfg.loss.lambda_res) == (1, 0.001, 3)
    assert cfg.optim.lr == 2e-4 and cfg.optim.grad_clip == 10 and cfg.data.crop == 144


@pytest.mark.parametrize("raw, field", [
    ({"model": {"blocks": 0}}, "model.blocks"),
    ({"model": {"blocks": "ten"}}, "model.blocks"),
    ({"model": {"downscale": "bicubic"}}, "model.downscale"),
    ({"model": {"bloks": 3}}, "model.bloks"),
    ({"modle": {}}, "modle"),
    ({"loss": {"lambda_res": -1}}, "loss.lambda_res"),
    ({"model": {"embed_channels": 2}}, "model.embed_channels"),
    ({"optim": {"milestones": [3, 1]}}, "optim.milestones"),
    ({"optim": {"milestones": "often"}}, "optim.milestones"),
    ({"model": {"fused": "yes"}}, "model.fused"),
    ({"data": {"scale": 3}}, "data.scale"),
    ({"model": {"downscale": "haar"}, "data": {"crop": 145}}, "data.crop"),
    ({"model": {"num_images": 1, "downscale": "squeeze", "order": "ref"}}, "model"),
    ({"model": {"num_images": 1}}, "model"),
])
def test_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert str(err.value).startswith(field)


def test_load_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nf: -4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: model\.nf: must be positive"):
        load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    bad.write_text("model: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


def test_overrides_parse_values_and_reject_unknown_fields():
    cfg = Config().override(["model.blocks=4", "optim.milestones=[10, 20]", "data.task=stereo"])
    assert cfg.model.blocks == 4 and cfg.optim.milestones == [10, 20]
    assert cfg.data.task == "stereo"
    assert Config().override(["optim.lr=1e-3"]).optim.lr == 1e-3
    assert cfg.flat()["model.blocks"] == 4
    with pytest.raises(ConfigError, match="unknown field 'model.depth'"):
        cfg.override(["model.depth=3"])
    with pytest.raises(ConfigError, match="model.blocks"):
        cfg.override(["model.blocks=-1"])
    with pytest.raises(ConfigError, match="section.field=value"):
        cfg.override(["blocks"])


def test_json_round_trip():
    cfg = Config().override(["model.downscale=haar", "model.order=hl"])
    import json
    assert from_dict(json.loads(cfg.to_json())) == cfg
