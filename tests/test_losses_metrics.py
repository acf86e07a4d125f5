import math

import pytest
import torch

from iicnet.model import Output
from iicnet.model.config import LossConfig
from iicnet.model.losses import embedding_loss, frequency_loss, iicnet_loss, restoration_loss
from iicnet.model.metrics import luma, psnr, ssim


def test_embedding_loss_sums_per_sample_and_averages_the_batch():
    e = torch.zeros(2, 3, 2, 2)
    ref = torch.zeros(2, 3, 2, 2)
    ref[0] = 0.5  # 12 elements * 0.25 = 3 ; sample 1 contributes 0
    assert embedding_loss(e, ref).item() == pytest.approx(1.5)


def test_frequency_loss_of_a_constant_offset_is_in_the_dc_term():
    e = torch.zeros(1, 1, 4, 4)
    ref = torch.full((1, 1, 4, 4), 0.25)
    # rfft2 of a constant c on 4x4: DC = 16c = 4, every other bin 0 -> squared error 16
    assert frequency_loss(e, ref).item() == pytest.approx(16.0)
    ref2 = torch.zeros(1, 1, 4, 4)
    ref2[0, 0, 0, 0] = 1.0  # a delta: all 4x3 one-sided bins equal 1 (real) -> 12
    assert frequency_loss(e, ref2).item() == pytest.approx(12.0)


def test_frame_balance_pushes_the_worse_image_harder_and_keeps_the_scale():
    x = torch.zeros(2, 3, 3, 4, 4)
    y = x.clone()
    y[:, 1] += 0.1  # image 1 restored well, image 2 badly
    y[:, 2] += 0.4
    plain = restoration_loss(y, x)
    assert restoration_loss(y, x, balance=0.0).item() == plain.item()

    def gradient(balance: float) -> torch.Tensor:
        restored = y.clone().requires_grad_(True)
        restoration_loss(restored, x, balance=balance).backward()
        return restored.grad.abs().flatten(2).sum(2).mean(0).tolist()  # per image

    same, balanced = gradient(0.0), gradient(1.0)
    assert same[1] == pytest.approx(same[2], rel=1e-3)  # Charbonnier: no harder push
    assert balanced[2] / balanced[1] == pytest.approx(4.0, rel=1e-2)  # 0.4 / 0.1
    # Weights average 1: equal errors leave the loss as published.
    even = x + 0.2
    assert restoration_loss(even, x, balance=1.0).item() == pytest.approx(
        restoration_loss(even, x).item(), rel=1e-6)


def test_restoration_loss_is_charbonnier_divided_by_k():
    x = torch.zeros(1, 2, 1, 1, 2)
    y = torch.tensor([[[[[0.3, 0.0]]], [[[0.4, 0.0]]]]])
    expected = (math.sqrt(0.09 + 1e-6) + math.sqrt(1e-6) + math.sqrt(0.16 + 1e-6)
                + math.sqrt(1e-6)) / 2
    assert restoration_loss(y, x).item() == pytest.approx(expected, rel=1e-6)


def test_total_loss_weights_the_terms():
    cfg = LossConfig(lambda_emb=2.0, lambda_freq=0.5, lambda_res=3.0)
    images = torch.rand(1, 2, 3, 4, 4)
    out = Output(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(1, 2, 3, 4, 4))
    terms = iicnet_loss(out, images, images[:, 0], cfg)
    assert terms.total.item() == pytest.approx(
        2 * terms.emb.item() + 0.5 * terms.freq.item() + 3 * terms.res.item(), rel=1e-6)
    assert set(terms.as_floats()) == {"loss/total", "loss/emb", "loss/freq", "loss/res"}


def test_psnr_on_uint8_in_rgb_and_y():
    a = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    b = a + 1
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(255**2), rel=1e-12)
    b2 = a.clone()
    b2[2] += 10  # blue only: RGB MSE 100/3; Y MSE (24.966*10/255)^2
    assert psnr(a, b2).item() == pytest.approx(10 * math.log10(255**2 / (100 / 3)))
    assert psnr(a, b2, y_channel=True).item() == pytest.approx(
        10 * math.log10(255**2 / (24.966 * 10 / 255) ** 2))
    assert math.isinf(psnr(a, a).item())
    with pytest.raises(TypeError, match="uint8"):
        psnr(a.float(), b.float())


def test_luma_of_white_is_235():
    white = torch.full((3, 1, 1), 255.0, dtype=torch.float64)
    assert luma(white).item() == pytest.approx(235.0, abs=1e-3)


def test_ssim_identical_is_one_and_noise_lowers_it():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 3, 32, 32), generator=gen, dtype=torch.uint8)
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    noisy = (a.int() + torch.randint(-20, 21, a.shape, generator=gen)).clamp(0, 255)
    s = ssim(a, noisy.to(torch.uint8))
    assert s.shape == (2,) and (s < 0.99).all() and (s > 0).all()


def test_ssim_constant_shift_matches_the_formula():
    a = torch.full((1, 16, 16), 100, dtype=torch.uint8)
    b = torch.full((1, 16, 16), 110, dtype=torch.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-9)
