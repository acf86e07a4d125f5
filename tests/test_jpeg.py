"""The differentiable JPEG stage: agreement with Pillow's real JPEG, gradients, the config that
turns it on, and a network unchanged when it is off."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from data_prep.samples import photos
from iicnet.formats.config_file import load
from iicnet.model import IICNet
from iicnet.model.config import Config, ConfigError, from_dict
from iicnet.model.modules import JpegDistortion, differentiable_jpeg
from iicnet.model.modules.jpeg import quant_tables
from iicnet.model.modules.quantize import quantize
from iicnet.training.trainer import Trainer
from ray_jobs import sweep_space
from tests.helpers import perturb
from tests.test_training import batch, tiny

CONFIGS = Path(__file__).parent.parent / "configs"


def _pillow_jpeg(pixels: np.ndarray, quality: int) -> tuple[np.ndarray, Image.Image]:
    """Encode uint8 ``(H, W, 3)`` or ``(H, W)`` with Pillow's defaults, decode it again."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    decoded = Image.open(buf)
    decoded.load()
    return np.asarray(decoded), decoded


def _ours(pixels: np.ndarray, quality: int, rounding: str = "ste") -> np.ndarray:
    """The differentiable JPEG of uint8 ``(H, W, 3)`` or ``(H, W)``, as 0..255 floats."""
    x = torch.from_numpy(np.array(pixels)).float() / 255
    x = x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None]
    y = differentiable_jpeg(x, torch.tensor([quality]), rounding)[0] * 255
    return y.permute(1, 2, 0).squeeze(-1).numpy().astype(np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


@pytest.fixture(scope="module")
def photographs() -> dict[str, np.ndarray]:
    """scikit-image's colour photographs, centre crops of at most 512x512 (time)."""
    crops = {}
    for name, im in photos().items():
        pixels = np.asarray(im.convert("RGB"))
        top, left = max(0, (pixels.shape[0] - 512) // 2), max(0, (pixels.shape[1] - 512) // 2)
        crops[name] = np.ascontiguousarray(pixels[top:top + 512, left:left + 512])
    return crops


@pytest.mark.parametrize("quality", [100, 95, 90, 75, 50, 20, 5, 1])
def test_quantisation_tables_are_the_ones_pillow_writes(quality):
    _, decoded = _pillow_jpeg(np.full((16, 16, 3), 128, np.uint8), quality)
    ours = quant_tables(torch.tensor([quality]))[0]
    for index in (0, 1):  # luminance, chrominance; Pillow lists them in natural order
        theirs = torch.tensor(list(decoded.quantization[index]), dtype=torch.float32)
        assert torch.equal(ours[index].flatten(), theirs), (quality, index)


@pytest.mark.parametrize("quality", [95, 90, 75, 50])
def test_agrees_with_pillow_on_photographs(photographs, quality):
    rows = []
    for name, pixels in photographs.items():
        real, decoded = _pillow_jpeg(pixels, quality)
        assert decoded.layer[0][1:3] == (2, 2)  # the 4:2:0 sampling the model assumes
        ours = _ours(pixels, quality)
        rows.append((name, _psnr(pixels, real), _psnr(pixels, ours), np.abs(ours - real).mean()))
    print(f"\nquality {quality}: photo, PSNR Pillow / ours (dB), mean |ours - Pillow| (levels)")
    for name, theirs, ours, mad in rows:
        print(f"  {name:12s} {theirs:6.2f} {ours:6.2f} {mad:.3f}")
    for name, theirs, ours, mad in rows:
        assert abs(ours - theirs) < 1.0, (name, theirs, ours)
        assert mad < 1.0, (name, mad)


@pytest.mark.parametrize("quality", [90, 50])
def test_agrees_with_pillow_in_grayscale_and_at_odd_sizes(photographs, quality):
    astronaut = photographs["astronaut"]
    for pixels in (astronaut[100:201, 150:227], astronaut[:, :, 1], astronaut[7:50, 3:40, 0]):
        real, _ = _pillow_jpeg(np.ascontiguousarray(pixels), quality)
        ours = _ours(pixels, quality)
        assert ours.shape == real.shape
        assert abs(_psnr(pixels, ours) - _psnr(pixels, real)) < 1.0
        assert np.abs(ours - real).mean() < 1.0


def test_quality_changes_the_result_the_way_jpeg_does(photographs):
    pixels = photographs["coffee"][:128, :128]
    scores = [_psnr(pixels, _ours(pixels, q)) for q in (30, 60, 90, 100)]
    assert scores == sorted(scores) and scores[-1] - scores[0] > 8


@pytest.mark.parametrize("rounding", ["ste", "cubic"])
@pytest.mark.parametrize("channels", [3, 1])
def test_gradients_flow_and_are_finite(rounding, channels):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, channels, 21, 34, generator=gen).requires_grad_()
    target = torch.rand(2, channels, 21, 34, generator=gen)
    y = differentiable_jpeg(x, torch.tensor([50, 90]), rounding)
    assert y.shape == x.shape and 0 <= float(y.detach().min()) <= float(y.detach().max()) <= 1
    ((y - target) ** 2).mean().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.5  # most pixels get a gradient


def test_cubic_rounding_stays_near_the_exact_codec(photographs):
    pixels = photographs["chelsea"][:96, :96]
    exact, cubic = _ours(pixels, 75, "ste"), _ours(pixels, 75, "cubic")
    assert 0 < np.abs(exact - cubic).mean() < 1.0


def test_rejects_what_it_cannot_code():
    with pytest.raises(ValueError, match="1 or 3"):
        differentiable_jpeg(torch.rand(1, 2, 8, 8), torch.tensor([50]))
    with pytest.raises(ValueError, match="one per image"):
        differentiable_jpeg(torch.rand(2, 3, 8, 8), torch.tensor([50]))
    with pytest.raises(ValueError, match="1..100"):
        differentiable_jpeg(torch.rand(1, 3, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="rounding"):
        differentiable_jpeg(torch.rand(1, 3, 8, 8), torch.tensor([50]), "floor")
    with pytest.raises(ValueError, match="low <= high"):
        JpegDistortion(90, 50)


def test_distortion_draws_one_quality_per_sample_within_the_range():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).expand(12, 3, 16, 16)
    low = differentiable_jpeg(x[:1], torch.tensor([20]))
    high = differentiable_jpeg(x[:1], torch.tensor([21]))
    assert not torch.equal(low, high)
    out = JpegDistortion(20, 21)(x, torch.Generator().manual_seed(0))
    at_low = [torch.equal(o, low[0]) for o in out]
    at_high = [torch.equal(o, high[0]) for o in out]
    assert all(a != b for a, b in zip(at_low, at_high))  # each sample is one of the two
    assert any(at_low) and any(at_high)


def test_bf16_autocast_does_not_reach_the_dct():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    plain = differentiable_jpeg(x, torch.tensor([75]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = differentiable_jpeg(x, torch.tensor([75]))
    assert torch.equal(plain, auto)


def _tiny(**distortion) -> Config:
    return load(CONFIGS / "video-k3-small.yaml").override(
        ["model.blocks=1"] + [f"distortion.{k}={v}" for k, v in distortion.items()])


def test_distortion_off_leaves_the_network_as_it_was():
    cfg = _tiny()
    assert cfg.distortion.kind == "off"
    model = perturb(IICNet(cfg)).train()
    assert model.distortion is None
    x = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = model(x, generator=torch.Generator().manual_seed(5))
    # the training forward as it was before the distortion stage existed
    embedding = model.embed(x)
    quantized = quantize(embedding, training=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out.quantized, quantized)
    assert torch.equal(out.restored, model.restore(quantized))


def test_jpeg_stage_runs_in_the_training_forward_only():
    off = perturb(IICNet(_tiny()))
    on = IICNet(_tiny(kind="jpeg", quality="[40, 60]"))
    on.load_state_dict(off.state_dict(), strict=True)  # no parameters of its own
    assert set(on.state_dict()) == set(off.state_dict())
    x = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = off.train()(x, generator=torch.Generator().manual_seed(3))
    b = on.train()(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.quantized, b.quantized)
    assert not torch.allclose(a.restored, b.restored)
    loss = (b.restored - x).abs().mean()
    loss.backward()
    grads = [p.grad for p in on.coupling.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)  # the encoder learns through JPEG
    images = (x * 255).round().to(torch.uint8)
    off.eval(), on.eval()
    assert torch.equal(off(x).restored, on(x).restored)
    assert torch.equal(off.encode(images), on.encode(images))
    assert torch.equal(off.decode(off.encode(images)), on.decode(on.encode(images)))


def test_a_trainer_steps_through_the_jpeg_stage():
    trainer = Trainer(tiny("distortion.kind=jpeg", "distortion.quality=[50, 90]"))
    assert isinstance(trainer.model.distortion, JpegDistortion)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train_step(*batch())
    assert result.exploded is None and 0 < result.grad_norm < float("inf")
    assert all(np.isfinite(v) for v in result.losses.values())
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_published_configs_keep_distortion_off():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load(path)
        assert cfg.distortion.kind == ("jpeg" if path.stem.endswith("-jpeg") else "off"), path


def test_robust_config_differs_from_its_baseline_only_in_distortion():
    robust = load(CONFIGS / "video-k3-small-jpeg.yaml")
    baseline = load(CONFIGS / "video-k3-small.yaml")
    assert robust.distortion.kind == "jpeg" and robust.distortion.quality == [50, 95]
    assert {k: v for k, v in robust.to_dict().items() if k != "distortion"} == \
        {k: v for k, v in baseline.to_dict().items() if k != "distortion"}


def test_config_reads_off_from_yaml_overrides_and_json():
    assert from_dict(yaml.safe_load("distortion: {kind: off}")).distortion.kind == "off"
    cfg = Config().override(["distortion.kind=jpeg", "distortion.quality=[60, 90]",
                             "distortion.rounding=cubic"])
    assert (cfg.distortion.kind, cfg.distortion.quality) == ("jpeg", [60, 90])
    assert cfg.flat()["distortion.kind"] == "jpeg"
    assert cfg.override(["distortion.kind=off"]).distortion.kind == "off"
    assert from_dict(json.loads(cfg.to_json())) == cfg
    old = {k: v for k, v in Config().to_dict().items() if k != "distortion"}
    assert from_dict(old).distortion.kind == "off"  # configs saved before the section existed


def test_distortion_is_a_tune_search_dimension():
    dim = sweep_space.parse("distortion.kind=choice:off,jpeg", Config())
    kinds = [sweep_space.apply(Config(), {dim.field: v}).distortion.kind for v in dim.args]
    assert kinds == ["off", "jpeg"]


@pytest.mark.parametrize("raw, field", [
    ({"distortion": {"kind": "png"}}, "distortion.kind"),
    ({"distortion": {"kind": True}}, "distortion.kind"),
    ({"distortion": {"quality": [90, 50]}}, "distortion.quality"),
    ({"distortion": {"quality": [0, 50]}}, "distortion.quality"),
    ({"distortion": {"quality": [50, 101]}}, "distortion.quality"),
    ({"distortion": {"quality": [50]}}, "distortion.quality"),
    ({"distortion": {"quality": 75}}, "distortion.quality"),
    ({"distortion": {"quality": [50.5, 90]}}, "distortion.quality[0]"),
    ({"distortion": {"rounding": "floor"}}, "distortion.rounding"),
    ({"distortion": {"strength": 1}}, "distortion.strength"),
    ({"distortion": {"kind": "jpeg"},
      "model": {"num_images": 2, "image_channels": 4, "embed_channels": 4}}, "distortion.kind"),
])
def test_config_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert str(err.value).startswith(field)
