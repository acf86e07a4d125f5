"""Tasks on in-memory samples built from known pixel patterns."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from iicnet.formats.config_file import load
from iicnet.model.config import ConfigError, from_dict
from iicnet.tasks import SampleError, get_task, task_names


def config(task: str, crop: int = 32, **sections):
    raw = {"data": {"task": task, "crop": crop, **sections.pop("data", {})}, **sections}
    return from_dict(raw)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def coordinates(height: int, width: int, frame: int = 0) -> np.ndarray:
    """R = x, G = y (mod 256), B = frame number: every pixel says where and when it is."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, np.full_like(x, frame)], axis=2).astype(np.uint8)


def clip(frames: int, height: int = 40, width: int = 60) -> dict:
    sample = {"__key__": "clip", "meta": {}}
    for f in range(frames):
        sample[f"{f:05d}.png"] = png(coordinates(height, width, frame=10 * f))
    return sample


def test_every_published_task_is_registered():
    assert set(task_names()) >= {"video", "stereo", "dualview", "multilayer", "hiding",
                                 "grayscale", "rescaling"}
    with pytest.raises(ConfigError, match=r"data\.task: unknown task 'nope'.*video"):
        get_task(config("nope"))


@pytest.mark.parametrize(("task", "model", "data", "field"), [
    ("video", {"num_images": 1, "embed_channels": 1}, {}, "model.num_images"),
    ("stereo", {"num_images": 3}, {}, "model.num_images"),
    ("dualview", {"num_images": 3}, {}, "model.num_images"),
    ("multilayer", {"num_images": 4}, {}, "model.num_images"),
    ("multilayer", {"num_images": 3}, {"matte": True}, "model.num_images"),
    ("hiding", {"num_images": 1, "embed_channels": 1}, {}, "model.num_images"),
    ("grayscale", {"num_images": 1, "downscale": "haar", "order": "hl"}, {},
     "model.embed_channels"),
    ("rescaling", {"num_images": 1, "embed_channels": 1}, {}, "model.downscale"),
])
def test_configs_that_do_not_fit_the_task_name_the_field(task, model, data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        get_task(config(task, model=model, data=data))


def test_video_windows_put_the_middle_frame_first():
    task = get_task(config("video", model={"num_images": 5}, data={"step": 2}))
    sample = clip(12)
    assert (task.name, task.source, task.num_images) == ("video", "davis", 5)
    assert task.output_names == ["frame_0", "frame_-2", "frame_-1", "frame_+1", "frame_+2"]
    assert task.windows(sample) == 12 - 2 * 4
    images, reference = task.make(sample, 1, None, train=False)
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 32, 32)
    assert images[:, 2, 0, 0].tolist() == [10 * f for f in (5, 1, 3, 7, 9)]
    assert reference.dtype == torch.float32
    torch.testing.assert_close(reference, images[0].float() / 255)
    assert task.windows(clip(8)) == 0


def test_training_crops_are_random_and_aligned_evaluation_crops_centred():
    task = get_task(config("video", crop=16, model={"num_images": 3}, data={"step": 1}))
    sample = clip(3, height=40, width=60)
    corners = set()
    for seed in range(6):
        images, _ = task.make(sample, 0, np.random.default_rng(seed), train=True)
        x, y = images[:, 0, 0, 0], images[:, 1, 0, 0]
        assert (x == x[0]).all() and (y == y[0]).all(), "all K crops cut at the same place"
        corners.add((int(x[0]), int(y[0])))
    assert len(corners) > 1
    images, _ = task.make(sample, 0, np.random.default_rng(0), train=False)
    assert (int(images[0, 0, 0, 0]), int(images[0, 1, 0, 0])) == ((60 - 16) // 2, (40 - 16) // 2)


def test_evaluation_keeps_full_frames_cut_to_the_downscaling_factor():
    cfg = config("video", crop=512, model={"num_images": 3, "downscale": "haar",
                                           "order": "hl"}, data={"step": 1})
    task = get_task(cfg)
    images, reference = task.make(clip(3, height=37, width=50), 0, None, train=False)
    assert images.shape == (3, 3, 36, 50)
    assert reference.shape == (3, 18, 25)
    expected = F.avg_pool2d(images[0].float()[None] / 255, 2)[0]
    torch.testing.assert_close(reference, expected)


def test_grayscale_reference_is_luma():
    task = get_task(config("grayscale", model={"num_images": 1, "embed_channels": 1}))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    images, reference = task.make({"__key__": "g", "image.png": png(image)}, 0, None, False)
    assert images.shape == (1, 3, 32, 32) and reference.shape == (1, 32, 32)
    crop = images[0].float() / 255
    torch.testing.assert_close(reference[0], 0.299 * crop[0] + 0.587 * crop[1] + 0.114 * crop[2])


def test_stereo_left_view_first_and_cropped_like_the_right():
    task = get_task(config("stereo", model={"num_images": 2}))
    left, right = coordinates(48, 64, frame=1), coordinates(48, 64, frame=2)
    sample = {"__key__": "p", "left.png": png(left), "right.png": png(right)}
    assert task.output_names == ["left", "right"] and task.source == "flickr1024"
    images, _ = task.make(sample, 0, np.random.default_rng(3), train=True)
    assert images[:, 2, 0, 0].tolist() == [1, 2]
    assert torch.equal(images[0, :2], images[1, :2])
    with pytest.raises(SampleError, match="right"):
        task.make({"__key__": "p", "left.png": png(left)}, 0, None, train=False)


@pytest.mark.parametrize("scale", [2, 4])
def test_dual_view_crops_are_scale_aware(scale):
    task = get_task(config("dualview", crop=16, model={"num_images": 2},
                           data={"scale": scale}))
    hr_h, hr_w = 64 * scale, 96 * scale
    y, x = np.mgrid[0:hr_h, 0:hr_w]
    hr = np.stack([x * 255 // (hr_w - 1), y * 255 // (hr_h - 1), np.zeros_like(x)], 2)
    sample = {"__key__": "d", "image.png": png(hr.astype(np.uint8))}
    assert task.output_names == ["normal", f"zoom_x{scale}"]
    for seed in [None, 0, 1, 2, 3]:
        rng = None if seed is None else np.random.default_rng(seed)
        images, reference = task.make(sample, 0, rng, train=seed is not None)
        normal, zoom = images.float()
        # a horizontal ramp: the centre of both crops shows the same point of the scene
        assert abs(normal[0, 8, 7:9].mean() - zoom[0, 8, 7:9].mean()) <= 2.5
        assert abs(normal[1, 7:9, 8].mean() - zoom[1, 7:9, 8].mean()) <= 2.5
        # the zoomed view is s times sharper: its ramp across the crop is s times flatter
        spread = (normal[0, 8, -1] - normal[0, 8, 0]) / (zoom[0, 8, -1] - zoom[0, 8, 0])
        assert spread == pytest.approx(scale, rel=0.25)
        torch.testing.assert_close(reference, images[0].float() / 255)


def test_dual_view_prefers_the_shipped_low_resolution_image():
    task = get_task(config("dualview", crop=16, model={"num_images": 2}, data={"scale": 2}))
    hr = np.full((64, 64, 3), 100, np.uint8)
    lr = np.full((32, 32, 3), 7, np.uint8)
    images, _ = task.make({"__key__": "d", "image.png": png(hr), "lr_x2.png": png(lr)}, 0,
                          None, train=False)
    assert images[0].unique().tolist() == [7] and images[1].unique().tolist() == [100]


@pytest.mark.parametrize("matte", [False, True])
def test_multilayer_composes_at_256(matte):
    k = 4 if matte else 3
    task = get_task(config("multilayer", crop=256, model={"num_images": k},
                           data={"matte": matte}))
    sample = {"__key__": "m", "fg.png": png(np.full((100, 80, 3), 200, np.uint8)),
              "alpha.png": png(np.full((100, 80), 51, np.uint8)),
              "bg.png": png(np.full((300, 200, 3), 50, np.uint8))}
    images, reference = task.make(sample, 0, None, train=False)
    assert images.shape == (k, 3, 256, 256)
    alpha = 51 / 255
    values = [round(alpha * 200 + (1 - alpha) * 50), 50, round(alpha * 200)] + [51] * matte
    assert [int(v) for v in images[:, :, 100, 100].max(dim=1).values] == values
    assert task.output_names[0] == "composite" and len(task.output_names) == k
    torch.testing.assert_close(reference, images[0].float() / 255)


def test_hiding_crops_each_image_to_a_common_size_cover_first():
    task = get_task(config("hiding", crop=64, model={"num_images": 3}))
    parts = [{"__key__": f"i{n}", "image.png": png(np.full((h, w, 3), n, np.uint8))}
             for n, (h, w) in enumerate([(100, 90), (40, 120), (80, 50)])]
    assert task.group == 3 and task.output_names == ["cover", "secret_1", "secret_2"]
    images, _ = task.make({"__key__": "i0+i1+i2", "parts": parts}, 0,
                          np.random.default_rng(0), train=True)
    assert images.shape == (3, 3, 40, 50)
    assert images[:, 0, 0, 0].tolist() == [0, 1, 2]


def test_rescaling_reference_is_half_size():
    task = get_task(config("rescaling", crop=32, model={"num_images": 1,
                                                        "downscale": "squeeze",
                                                        "order": "hl"}))
    image = coordinates(48, 48)
    images, reference = task.make({"__key__": "r", "image.jpg": png(image)}, 0, None, False)
    assert images.shape == (1, 3, 32, 32) and reference.shape == (3, 16, 16)
    assert task.sources[0] == "div2k" and "folder" in task.sources


def test_undecodable_entry_is_a_sample_error():
    task = get_task(config("grayscale", model={"num_images": 1, "embed_channels": 1}))
    with pytest.raises(SampleError, match="does not decode"):
        task.make({"__key__": "bad", "image.jpg": b"\xff\xd8 not a jpeg"}, 0, None, False)


def test_every_shipped_config_builds_its_task():
    paths = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    assert paths
    for path in paths:
        cfg = load(path)
        task = get_task(cfg)
        assert task.name == cfg.data.task
        assert len(task.output_names) == task.num_images == cfg.model.num_images, path
