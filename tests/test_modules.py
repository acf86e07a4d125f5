import pytest
import torch

from iicnet.model.modules import (
    ChannelSqueeze,
    CouplingBlock,
    CouplingStack,
    DenseBlock,
    GroupedDenseBlocks,
    InvertibleDownscale,
    RelationModule,
    quantize,
)
from tests.helpers import perturb

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def test_dense_block_starts_at_zero_and_has_the_published_widths():
    block = DenseBlock(3, 12, growth=32)
    assert [c.in_channels for c in block.convs] == [3, 35, 67, 99, 131]
    assert [c.out_channels for c in block.convs] == [32, 32, 32, 32, 12]
    assert torch.count_nonzero(block(torch.rand(1, 3, 8, 8))) == 0


def test_grouped_dense_blocks_fused_matches_loop():
    torch.manual_seed(0)
    blocks = perturb(GroupedDenseBlocks(4, 3, 8, growth=8))
    x = torch.rand(2, 12, 10, 10)
    blocks.fused = False
    looped = blocks(x)
    blocks.fused = True
    assert torch.allclose(blocks(x), looped, atol=1e-6)
    assert looped.shape == (2, 32, 10, 10)


def test_relation_module_fused_matches_straightforward_and_is_residual():
    torch.manual_seed(0)
    rel = RelationModule(3, 3, nf=8, growth=8)
    x = torch.rand(2, 9, 12, 12)
    assert torch.equal(rel(x), x), "zero-initialised tails make a fresh module the identity"
    perturb(rel)
    rel.fused = False
    straightforward = rel(x)
    rel.fused = True
    assert torch.allclose(rel(x), straightforward, atol=1e-6)
    assert not torch.allclose(straightforward, x, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coupling_block_inverts(dtype):
    torch.manual_seed(0)
    block = perturb(CouplingBlock(15, 3, growth=8)).to(dtype)
    x = torch.rand(2, 15, 9, 9, dtype=dtype)
    y = block(x)
    assert not torch.allclose(y, x, atol=1e-3), "perturbed block must not be the identity"
    assert (block.inverse(y) - x).abs().max() < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coupling_stack_inverts(dtype):
    torch.manual_seed(1)
    stack = perturb(CouplingStack(12, 3, blocks=4, growth=8)).to(dtype)
    x = torch.rand(2, 12, 8, 8, dtype=dtype)
    y = stack(x)
    assert not torch.allclose(y, x, atol=1e-3)
    assert (stack.inverse(y) - x).abs().max() < TOLERANCE[dtype]


def test_coupling_block_follows_equations_3_to_6():
    torch.manual_seed(2)
    block = perturb(CouplingBlock(6, 2, growth=4))
    x = torch.rand(1, 6, 5, 5)
    t, b = x[:, :2], x[:, 2:]
    t2 = t + block.F(b)
    b2 = b * torch.exp(1.0 * (2 * torch.sigmoid(block.H(t2)) - 1)) + block.G(t2)
    assert torch.allclose(block(x), torch.cat((t2, b2), 1), atol=1e-6)


def test_memory_saving_gives_the_same_gradients():
    torch.manual_seed(3)
    stack = perturb(CouplingStack(12, 3, blocks=3, growth=8))
    x = torch.rand(1, 12, 8, 8)
    grads = []
    for saving in (False, True):
        stack.memory_saving = saving
        stack.zero_grad()
        (stack.inverse(stack(x) * 0.9) ** 2).sum().backward()
        grads.append([p.grad.clone() for p in stack.parameters()])
    for plain, saved in zip(*grads):
        assert torch.allclose(plain, saved, atol=1e-6)


@pytest.mark.parametrize("kind", ["haar", "squeeze"])
@pytest.mark.parametrize("order", ["ref", "hl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_downscale_inverts(kind, order, dtype):
    torch.manual_seed(4)
    down = perturb(InvertibleDownscale(3, 3, kind, order), scale=0.01).to(dtype)
    x = torch.rand(2, 9, 8, 12, dtype=dtype)
    y = down(x)
    assert y.shape == (2, 36, 4, 6)
    assert (down.inverse(y) - x).abs().max() < TOLERANCE[dtype]


def test_downscale_mix_starts_orthogonal():
    down = InvertibleDownscale(2, 3, "haar", "ref")
    eye = down.mix @ down.mix.T
    assert torch.allclose(eye, torch.eye(24), atol=1e-5)


def _unmixed(kind, order, x):
    down = InvertibleDownscale(2, 3, kind, order)
    with torch.no_grad():
        down.mix.copy_(torch.eye(24))
    return down(x)


def test_haar_bands_average_and_details():
    x = torch.zeros(1, 6, 2, 2)
    x[:, :, 0, :] = 1.0  # top row bright: average 0.5, vertical detail 0.5, others 0
    y = _unmixed("haar", "hl", x)[0, :, 0, 0]
    assert torch.allclose(y[:6], torch.full((6,), 0.5))
    assert torch.allclose(y[6:12], torch.zeros(6))
    assert torch.allclose(y[12:18], torch.full((6,), 0.5))
    assert torch.allclose(y[18:], torch.zeros(6))


def test_channel_orders_put_reference_or_low_bands_first():
    x = torch.zeros(1, 6, 4, 4)
    x[:, :3] = torch.rand(1, 3, 4, 4)  # only image 0 (the reference) is non-zero
    ref = _unmixed("squeeze", "ref", x)
    assert torch.count_nonzero(ref[:, 12:]) == 0 and torch.count_nonzero(ref[:, :12]) > 0
    x = torch.rand(1, 6, 4, 4)
    hl = _unmixed("haar", "hl", x)
    expected_low = torch.nn.functional.avg_pool2d(x, 2)
    assert torch.allclose(hl[:, :6], expected_low, atol=1e-6)


def test_channel_squeeze_averages_and_repeats():
    sq = ChannelSqueeze(9, 3)
    v = torch.arange(9.0).reshape(1, 9, 1, 1)
    assert torch.equal(sq(v).flatten(), torch.tensor([3.0, 4.0, 5.0]))
    e = torch.rand(2, 3, 4, 4)
    assert torch.allclose(sq(sq.inverse(e)), e, atol=1e-7)
    assert torch.equal(sq.inverse(e)[:, 6:], e)


def test_quantize_rounds_in_evaluation_and_clamps():
    x = torch.tensor([-0.1, 0.0, 0.5 / 255, 0.7 / 255, 100.4 / 255, 1.2])
    q = quantize(x, training=False)
    assert torch.allclose(q * 255, torch.tensor([0.0, 0.0, 0.0, 1.0, 100.0, 255.0]))


def test_quantize_adds_bounded_noise_in_training():
    gen = torch.Generator().manual_seed(0)
    x = torch.full((10000,), 0.5)
    q = quantize(x, training=True, generator=gen)
    diff = (q - x) * 255
    assert diff.abs().max() <= 0.5 + 1e-4
    assert diff.std() > 0.25, "uniform noise on [-0.5, 0.5] has std 0.29"
    edge = quantize(torch.ones(1000), training=True, generator=gen)
    assert edge.max() <= 1.0
    y = torch.full((4,), 0.3, requires_grad=True)
    quantize(y, training=True).sum().backward()
    assert torch.allclose(y.grad, torch.ones(4)), "noise quantisation passes gradients"
