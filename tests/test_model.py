from pathlib import Path

import pytest
import torch

from iicnet.formats import checkpoint
from iicnet.formats.config_file import load
from iicnet.model import IICNet
from tests.helpers import perturb

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


def _clip(cfg, size, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    m = cfg.model
    shape = (batch, m.num_images, m.image_channels, size, size)
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_encode_decode_shapes_for_every_config(path):
    cfg = load(path)
    model = IICNet(cfg).eval()
    images = _clip(cfg, 16, batch=2)
    emb = model.encode(images)
    s = model.scale
    assert emb.dtype == torch.uint8
    assert emb.shape == (2, cfg.model.embed_channels, 16 // s, 16 // s)
    restored = model.decode(emb)
    assert restored.dtype == torch.uint8 and restored.shape == images.shape


def test_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    published = {"video-k3", "video-k5", "video-k7", "video-k9", "video-k3-x2", "video-k5-x2",
                 "stereo", "dualview-x2", "dualview-x4", "dualview-x8", "multilayer",
                 "hide-k2", "hide-k3", "hide-k4", "hide-k5", "gray", "rescale-x2"}
    assert published <= names
    blocks = {n: load(p).model.blocks for n, p in zip((p.stem for p in CONFIGS), CONFIGS)}
    assert blocks["stereo"] == blocks["gray"] == blocks["rescale-x2"] == 16
    assert blocks["video-k5"] == blocks["hide-k3"] == blocks["dualview-x4"] == 10


def _small(path="configs/video-k3.yaml", **model):
    cfg = load(Path(__file__).parent.parent / path)
    return cfg.override([f"model.{k}={v}" for k, v in {"nf": 8, "growth": 8, "blocks": 2,
                                                         **model}.items()])


def test_training_forward_returns_both_embeddings_and_restored_stack():
    cfg = _small()
    model = perturb(IICNet(cfg)).train()
    x = torch.rand(2, 3, 3, 12, 12)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.embedding.shape == out.quantized.shape == (2, 3, 12, 12)
    assert out.restored.shape == x.shape
    noise = (out.quantized - out.embedding.clamp(0, 1)) * 255
    assert 0 < noise.abs().max() <= 0.5 + 1e-4


def test_fused_and_straightforward_formulations_match():
    cfg = _small("configs/video-k5-x2.yaml")
    model = perturb(IICNet(cfg)).train()
    x = torch.rand(1, 5, 3, 16, 16)
    results = []
    for fused in (False, True):
        model.set_fused(fused)
        model.zero_grad()
        out = model(x, generator=torch.Generator().manual_seed(0))
        (out.embedding.sum() + out.restored.pow(2).sum()).backward()
        results.append((out.restored.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_fused_inference_layout_matches_straightforward():
    model = perturb(IICNet(_small("configs/video-k5-x2.yaml"))).eval()
    x = torch.rand(1, 5, 3, 16, 16)
    outs = []
    for fused in (False, True):
        model.set_fused(fused)
        with torch.no_grad():
            e = model.embed(x)
            outs.append((e, model.restore(e)))
            assert model._layout() == (torch.channels_last if fused else torch.contiguous_format)
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


def test_encode_rejects_wrong_inputs():
    model = IICNet(_small())
    with pytest.raises(TypeError, match="uint8"):
        model.encode(torch.rand(1, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="expected 3 images"):
        model.encode(torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiples of 2"):
        IICNet(_small("configs/video-k3-x2.yaml")).encode(torch.zeros(1, 3, 3, 7, 8,
                                                                      dtype=torch.uint8))


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    cfg = _small("configs/video-k3-x2.yaml")
    model = perturb(IICNet(cfg)).eval()
    images = _clip(cfg, 16)
    target = checkpoint.save(tmp_path / "ckpt", model, cfg)
    assert sorted(p.name for p in target.iterdir()) == ["complete.json", "config.json",
                                                        "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp left"
    loaded, loaded_cfg = checkpoint.load(target)
    assert loaded_cfg == cfg
    assert torch.equal(loaded.encode(images), model.encode(images))
    emb = model.encode(images)
    assert torch.equal(loaded.decode(emb), model.decode(emb))
    assert target.joinpath("model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"[:8]


def test_checkpoint_load_errors_name_the_problem(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="config.json"):
        checkpoint.load(tmp_path)
    cfg = _small()
    checkpoint.save(tmp_path / "a", IICNet(cfg), cfg)
    other = cfg.override(["model.blocks=3"])
    (tmp_path / "a" / "config.json").write_text(other.to_json())
    with pytest.raises(checkpoint.CheckpointError, match="config.json does not match its sha"):
        checkpoint.load(tmp_path / "a")
    checkpoint.seal(tmp_path / "a")
    with pytest.raises(checkpoint.CheckpointError, match="do not match"):
        checkpoint.load(tmp_path / "a")
