"""The authors' released checkpoints (official format) imported through ``iicnet
import-official``: our CLI must give the official code's pixels on the parity data in
``../shared/parity`` (three checkpoints and the official outputs on one input), and a bad
file (truncated, another configuration, a pickle that would run code) is refused."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from iicnet.app.cli import main
from iicnet.formats import checkpoint, embedding_png, official
from iicnet.model import IICNet
from iicnet.model.config import from_dict
from tests.fixtures_mlflow import mlflow_server  # noqa: F401 (fixture)
from tests.test_convert import ROOT

PARITY = Path(os.environ.get("IICNET_PARITY") or ROOT.parent / "shared" / "parity")
"""The parity data (official checkpoints and outputs); ``IICNET_PARITY`` names another place."""
STEMS = ["st-06", "dual-01-1block", "supp-gray-01-1block"]
INFERRED = {
    "st-06": "configs/video-k3-x2.yaml",
    "dual-01-1block": "nearest: configs/dualview-x2.yaml with --set model.blocks=1",
    "supp-gray-01-1block": "nearest: configs/gray.yaml with --set model.blocks=1",
}
MAX_OFF_FRACTION = 0.001
"""At most this share of 8-bit values may differ from the official ones, by one level."""
FLOAT_TOLERANCE = 1e-5

pytestmark = pytest.mark.skipif(not PARITY.is_dir(), reason="no ../shared/parity here")


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Each parity checkpoint imported through the CLI: ``{stem: (folder, stdout)}``."""
    base = tmp_path_factory.mktemp("official")
    done = {}
    for stem in STEMS:
        out = base / stem
        code = main(["import-official", str(PARITY / f"{stem}.pth"), "-o", str(out)])
        assert code == 0 and (out / checkpoint.CONFIG).is_file()
        done[stem] = out
    return done


def outputs(stem: str) -> dict[str, torch.Tensor]:
    return load_file(str(PARITY / f"{stem}.outputs.safetensors"))


def natural_order(folder: Path) -> list[int]:
    """``order[i]``: the natural position of stack image ``i`` (video: middle first)."""
    import iicnet

    return iicnet.load(str(folder), device="cpu").order


def assert_pixels_match(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    off = float((diff > 0).mean())
    print(f"{what}: max |diff| {diff.max()} levels, {off:.5%} of values differ")
    assert diff.max() <= 1 and off <= MAX_OFF_FRACTION, (what, int(diff.max()), off)


@pytest.mark.parametrize("stem", STEMS)
def test_import_prints_the_inferred_config(stem: str, capsys, tmp_path: Path):
    code, out, _ = run(capsys, "import-official", PARITY / f"{stem}.pth", "-o", tmp_path / "c")
    assert code == 0 and INFERRED[stem] in out
    meta = json.loads((PARITY / f"{stem}.json").read_text())
    cfg = checkpoint.load_config(tmp_path / "c")
    assert (cfg.model.num_images, cfg.model.blocks, cfg.model.embed_channels) == (
        meta["num_of_frames"], meta["block_num"], meta["cs_out_nc"])
    assert cfg.model.downscale == (meta["down"]["type"] if meta["down"]["use_down"] else "none")
    model, _ = checkpoint.load(tmp_path / "c")
    state = official.read_state(PARITY / f"{stem}.pth")
    assert sum(t.numel() for t in state.values()) == meta["params"]
    fixed = state[official.HAAR_KEY].numel() if official.HAAR_KEY in state else 0
    assert sum(p.numel() for p in model.parameters()) == meta["params"] - fixed


@pytest.mark.parametrize("stem", STEMS)
def test_cli_embeds_the_official_pixels_from_rgb_files(stem: str, imported, capsys,
                                                       tmp_path: Path):
    folder = imported[stem]
    ref = outputs(stem)
    stack = ref["images_rgb_uint8"][0].permute(0, 2, 3, 1).numpy()  # (K, H, W, 3), stack order
    order = natural_order(folder)
    files = [tmp_path / f"{position}.png" for position in range(len(order))]
    for stack_index, position in enumerate(order):
        Image.fromarray(stack[stack_index]).save(files[position])
    code, _, err = run(capsys, "embed", "--model", folder, "--device", "cpu", *files,
                       "-o", tmp_path / "e.png")
    assert code == 0, err
    pixels, info = embedding_png.read(tmp_path / "e.png")
    assert info is not None
    expected = ref["embedding_rgb_uint8"][0].permute(1, 2, 0).numpy()
    assert pixels.shape == expected.shape
    assert_pixels_match(pixels, expected, f"{stem} embedding")


@pytest.mark.parametrize("stem", STEMS)
def test_cli_restores_the_official_pixels_from_a_plain_png(stem: str, imported, capsys,
                                                           tmp_path: Path):
    folder = imported[stem]
    ref = outputs(stem)
    embedding = ref["embedding_rgb_uint8"][0].permute(1, 2, 0).numpy()
    plain = tmp_path / "official.png"
    Image.fromarray(embedding[..., 0] if embedding.shape[2] == 1 else embedding).save(plain)
    code, _, err = run(capsys, "restore", "--model", folder, "--device", "cpu", plain,
                       "-o", tmp_path / "back")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "could not be checked" in line]
    assert len(notes) == 1 and str(folder) in notes[0]
    restored = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "back").iterdir())]
    expected = ref["restored_rgb_uint8"][0].permute(0, 2, 3, 1).numpy()
    for stack_index, position in enumerate(natural_order(folder)):
        assert_pixels_match(restored[position], expected[stack_index],
                            f"{stem} restored image {position}")


@pytest.mark.parametrize("stem", STEMS)
def test_network_matches_the_official_floats(stem: str, imported):
    """Float32, no rounding but the official one: the embedding (unquantised) and the
    images restored from the official rounded embedding, against the official floats."""
    model, cfg = checkpoint.load(imported[stem])
    ref = outputs(stem)
    b, n, h, w = ref["input_bgr"].shape
    k = cfg.model.num_images
    bgr = ref["input_bgr"].reshape(b, k, 3, h, w)
    rgb_model = cfg.model.channel_order == "rgb"
    flip_e = rgb_model and cfg.model.embed_channels == 3
    with torch.no_grad():
        embedding = model.embed(bgr.flip(2) if rgb_model else bgr)
        rounded = ref["embedding_rounded_bgr"]
        restored = model.restore(rounded.flip(1) if flip_e else rounded)
    if rgb_model:
        restored = restored.flip(2)
    expected = ref["embedding_bgr"].flip(1) if flip_e else ref["embedding_bgr"]
    e_err = (embedding - expected).abs().max().item()
    r_err = (restored.reshape(b, n, h, w) - ref["restored_bgr"]).abs().max().item()
    print(f"{stem}: float32 max |diff| embedding {e_err:.2e}, restored {r_err:.2e}")
    assert e_err < FLOAT_TOLERANCE and r_err < FLOAT_TOLERANCE


def test_colour_is_handled_by_permutation_where_exact_else_by_channel_order(imported):
    orders = {stem: checkpoint.load_config(imported[stem]).model.channel_order
              for stem in STEMS}
    assert orders == {"st-06": "rgb", "dual-01-1block": "rgb", "supp-gray-01-1block": "bgr"}
    # the permuted weights differ from the official ones; the kept ones do not
    state = official.read_state(PARITY / "dual-01-1block.pth")
    model, _ = checkpoint.load(imported["dual-01-1block"])
    head = model.state_dict()["relation.head_dense.blocks.0.convs.0.weight"]
    official_head = state["0.forw_rel.DB_heads.0.conv1.weight"]
    assert torch.equal(head, official_head.flip(1))


def test_every_key_maps_both_ways():
    cfg = from_dict({"model": {"num_images": 3, "blocks": 2, "downscale": "haar",
                               "order": "hl", "nf": 8, "growth": 8}})
    for key in IICNet(cfg).state_dict():
        assert official.our_key(official.official_key(key)) == key


def _saved(tmp_path: Path, name: str, prefix: str = "", zip_format: bool = True) -> Path:
    state = torch.load(PARITY / "dual-01-1block.pth", map_location="cpu", weights_only=True)
    path = tmp_path / name
    torch.save({prefix + k: v for k, v in state.items()}, path,
               _use_new_zipfile_serialization=zip_format)
    return path


@pytest.mark.parametrize("prefix,zip_format", [("module.", False), ("", True),
                                               ("module.", True)])
def test_module_prefix_and_zip_serialisation_import_alike(prefix: str, zip_format: bool,
                                                          imported, capsys, tmp_path: Path):
    path = _saved(tmp_path, "dual-01.pth", prefix, zip_format)
    code, _, err = run(capsys, "import-official", path, "-o", tmp_path / "c")
    assert code == 0, err
    assert load_file(str(tmp_path / "c" / checkpoint.WEIGHTS)) .keys() == load_file(
        str(imported["dual-01-1block"] / checkpoint.WEIGHTS)).keys()
    ours = load_file(str(tmp_path / "c" / checkpoint.WEIGHTS))
    reference = load_file(str(imported["dual-01-1block"] / checkpoint.WEIGHTS))
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_truncated_file_is_refused(capsys, tmp_path: Path):
    for zip_format in (False, True):
        whole = _saved(tmp_path, f"whole-{zip_format}.pth", zip_format=zip_format).read_bytes()
        cut = tmp_path / f"cut-{zip_format}.pth"
        cut.write_bytes(whole[:len(whole) // 2])
        code, _, err = run(capsys, "import-official", cut, "-o", tmp_path / "c")
        assert code == 2 and str(cut) in err and "truncated or damaged" in err, err
        assert not (tmp_path / "c").exists()


def test_checkpoint_of_another_configuration_names_the_right_one(capsys, tmp_path: Path):
    code, _, err = run(capsys, "import-official", PARITY / "st-06.pth", "--config",
                       ROOT / "configs" / "video-k5-x2.yaml", "-o", tmp_path / "c")
    assert code == 2 and not (tmp_path / "c").exists()
    assert "key '0.forw_rel.conv_merges.0.weight' has shape (64, 192, 3, 3)" in err, err
    assert "needs (64, 320, 3, 3)" in err and "fit configs/video-k3-x2.yaml" in err
    code, _, err = run(capsys, "import-official", PARITY / "dual-01-1block.pth", "--config",
                       ROOT / "configs" / "dualview-x2.yaml", "-o", tmp_path / "c")
    assert code == 2 and "'2.operations.1.F.conv1.weight' is missing" in err, err
    assert "nearest: configs/dualview-x2.yaml with --set model.blocks=1" in err
    code, out, _ = run(capsys, "import-official", PARITY / "dual-01-1block.pth", "--config",
                       ROOT / "configs" / "hide-k2.yaml", "--set", "model.blocks=1",
                       "-o", tmp_path / "c")
    assert code == 0 and "task hiding" in out


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(capsys, tmp_path: Path):
    proof = tmp_path / "proof-the-payload-works"
    pickle.loads(pickle.dumps(_Payload(proof))).close()
    assert proof.exists()
    marker = tmp_path / "created-by-the-checkpoint"
    state = torch.load(PARITY / "supp-gray-01-1block.pth", map_location="cpu",
                       weights_only=True)
    for zip_format in (True, False):
        evil = tmp_path / f"evil-{zip_format}.pth"
        torch.save({**state, "extra": _Payload(marker)}, evil,
                   _use_new_zipfile_serialization=zip_format)
        code, _, err = run(capsys, "import-official", evil, "-o", tmp_path / "c")
        assert code == 2 and "refused" in err and "nothing in it was run" in err, err
        assert not marker.exists() and not (tmp_path / "c").exists()


def test_plain_png_with_the_wrong_channels_is_refused(imported, capsys, tmp_path: Path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(grey)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(rgb)
    for stem, png in (("dual-01-1block", grey), ("supp-gray-01-1block", rgb)):
        back = tmp_path / f"back-{stem}"
        code, _, err = run(capsys, "restore", "--model", imported[stem], png, "-o", back)
        assert code == 2 and str(png) in err and "embeddings" in err, err
        assert not back.exists()


@pytest.mark.slow
def test_register_makes_models_uri_work(mlflow_server: str, imported,  # noqa: F811
                                        monkeypatch: pytest.MonkeyPatch, capsys,
                                        tmp_path: Path):
    from mlflow import MlflowClient

    import iicnet

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    code, out, err = run(capsys, "import-official", PARITY / "dual-01-1block.pth",
                         "-o", tmp_path / "c", "--register", "iicnet-official-dual",
                         "--alias", "paper")
    assert code == 0, err
    assert "registered models:/iicnet-official-dual@paper (version 1" in out
    sha = official.sha256(PARITY / "dual-01-1block.pth")
    version = MlflowClient(mlflow_server).get_model_version_by_alias("iicnet-official-dual",
                                                                    "paper")
    assert version.tags["source"] == f"imported from the official checkpoint {sha}"
    from_registry = iicnet.load("models:/iicnet-official-dual@paper", device="cpu")
    assert from_registry.fingerprint == iicnet.load(str(tmp_path / "c"),
                                                    device="cpu").fingerprint
