"""The model against the paper: shapes, attention maths, gamma, spectral norm, config round trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sagan_cli.model import (
    SUPPORTED_IMAGE_SIZES,
    Discriminator,
    Generator,
    ModelConfig,
    SelfAttention,
    attention_gammas,
    conv3x3_avgpool,
    feature_resolutions,
    upsample_conv3x3,
)

TINY = {"g_width": 4, "d_width": 4, "z_dim": 16}


@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_discriminator_shapes(image_size: int, channels: int) -> None:
    config = ModelConfig(image_size=image_size, channels=channels, **TINY)
    generator, discriminator = Generator(config), Discriminator(config)
    images = generator(torch.randn(2, 16))
    assert images.shape == (2, channels, image_size, image_size)
    assert images.abs().max() <= 1.0
    assert discriminator(images).shape == (2,)


def test_conditional_model_uses_labels() -> None:
    config = ModelConfig(image_size=32, channels=3, num_classes=10, **TINY)
    generator, discriminator = Generator(config).eval(), Discriminator(config).eval()
    with torch.no_grad():
        generator.blocks[0].bn1.scale.weight.normal_()  # make classes differ (init is identity)
    z = torch.randn(2, 16)
    a = generator(z, torch.tensor([0, 0]))
    b = generator(z, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    assert discriminator(a, torch.tensor([0, 3])).shape == (2,)


def test_attention_placement_follows_resolution() -> None:
    config = ModelConfig(image_size=64, channels=3, attn_resolutions=(16, 32), **TINY)
    assert set(Generator(config).attention) == {"16", "32"}
    assert set(Discriminator(config).attention) == {"16", "32"}
    no_attention = ModelConfig(image_size=64, channels=3, attention=False, **TINY)
    assert len(Generator(no_attention).attention) == 0
    assert attention_gammas(Generator(no_attention)) == {}
    assert ModelConfig(image_size=28).attn_resolutions == (14,)


def test_attention_in_one_network_puts_the_blocks_there_only() -> None:
    g_only = ModelConfig(image_size=28, attention_in="g", attn_resolutions=(28,), **TINY)  # G's top map
    assert set(Generator(g_only).attention) == {"28"} and len(Discriminator(g_only).attention) == 0
    d_only = ModelConfig(image_size=28, attention_in="d", attn_resolutions=(7,), **TINY)  # D's bottom map
    assert len(Generator(d_only).attention) == 0 and set(Discriminator(d_only).attention) == {"7"}
    images = torch.randn(2, 1, 28, 28)
    assert Discriminator(d_only)(images).shape == (2,)
    assert Generator(g_only)(torch.randn(2, TINY["z_dim"])).shape == (2, 1, 28, 28)
    for config in (g_only, d_only):
        assert ModelConfig.from_json(config.to_json()) == config
    # Attention in both, the paper's model, writes the JSON that versions before --attention-in wrote.
    assert "attention_in" not in ModelConfig(image_size=28).to_json()
    with pytest.raises(ValueError, match="choose from"):
        ModelConfig(image_size=28, attention_in="g", attn_resolutions=(7,))  # G has no block output at 7x7
    with pytest.raises(ValueError, match="attention_in"):
        ModelConfig(image_size=28, attention_in="G+D")


def test_default_d_width_follows_image_size_and_is_stored_resolved() -> None:
    # 64 up to 32 px (the width with a measured full-length default run), 32 from 64 px on (docs/results.md).
    assert [ModelConfig(image_size=s).d_width for s in (28, 32, 64, 128, 256)] == [32, 32, 32, 32, 32]
    assert ModelConfig(image_size=64, d_width=64).d_width == 64  # --d-width wins
    narrow = ModelConfig(image_size=28, d_width=32)
    assert ModelConfig.from_json(narrow.to_json()).d_width == 32
    config = ModelConfig(image_size=64)
    assert '"d_width": 32' in config.to_json()  # checkpoints hold the number, not "default"
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="d_width must be positive"):
        ModelConfig(image_size=64, d_width=0)


def test_bad_attention_resolution_is_rejected() -> None:
    with pytest.raises(ValueError, match="choose from"):
        ModelConfig(image_size=28, attn_resolutions=(16,))
    with pytest.raises(ValueError, match="not supported"):
        ModelConfig(image_size=48)


def reference_attention(block: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The paper's equations written out with an explicit N x N map (eqs. 1-3 of arXiv 1805.08318)."""
    b, c, h, w = x.shape
    g = block.query(x).reshape(b, -1, h * w)  # (B, C/8, N): the paper's g, the query
    f = block.key(x).reshape(b, -1, h * w)  # (B, C/8, N): the paper's f, the key
    v = block.value(x).reshape(b, -1, h * w)  # (B, C/8, N)
    s = g.transpose(1, 2) @ f  # (B, N_query, N_key): s[j, i] = f(x_i)^T g(x_j)
    beta = s.softmax(dim=-1)
    o = (v @ beta.transpose(1, 2)).reshape(b, -1, h, w)  # (B, C/8, H, W)
    return x + block.gamma * block.out(o)


def test_attention_matches_the_paper_formulation() -> None:
    torch.manual_seed(0)
    block = SelfAttention(32).eval()
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(3, 32, 8, 8)
    torch.testing.assert_close(block(x), reference_attention(block, x), rtol=1e-5, atol=1e-5)
    block.fused = False  # the written-out softmax(Q K^T) V path beside the fused call
    torch.testing.assert_close(block(x), reference_attention(block, x), rtol=1e-5, atol=1e-5)


def test_gamma_starts_at_zero_and_receives_gradient() -> None:
    torch.manual_seed(0)
    config = ModelConfig(image_size=28, channels=1, **TINY)
    generator, discriminator = Generator(config), Discriminator(config)
    assert all(value == 0.0 for value in attention_gammas(generator).values())
    assert all(value == 0.0 for value in attention_gammas(discriminator).values())
    discriminator(generator(torch.randn(4, 16))).mean().backward()
    for module in (generator, discriminator):
        gammas = [m.gamma for m in module.modules() if isinstance(m, SelfAttention)]
        assert gammas and all(g.grad is not None and g.grad.abs() > 0 for g in gammas)


def test_attention_is_identity_at_init() -> None:
    block = SelfAttention(16)
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(block(x), x)


def test_spectral_norm_of_every_layer_is_about_one() -> None:
    torch.manual_seed(0)
    config = ModelConfig(image_size=32, channels=3, g_width=8, d_width=8, z_dim=16)
    discriminator = Discriminator(config)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(30):  # each training-mode forward runs one power iteration
        discriminator(x)
    checked = 0
    for module in discriminator.modules():
        if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
            weight = module.weight.detach()
            sigma = torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2)
            assert sigma == pytest.approx(1.0, abs=0.05), module
            checked += 1
    assert checked >= 8
    generator = Generator(config)
    sn_layers = [m for m in generator.modules() if hasattr(m, "parametrizations")]
    convs_and_linears = [m for m in generator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(sn_layers) == len(convs_and_linears)


def test_model_config_json_round_trip_and_strictness() -> None:
    config = ModelConfig(image_size=64, channels=3, attn_resolutions=(16, 32), num_classes=5, g_width=8)
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_json('{"image_size": 28, "colour": 1}')


def test_feature_resolutions() -> None:
    assert feature_resolutions(28) == [7, 14, 28]
    assert feature_resolutions(128) == [4, 8, 16, 32, 64, 128]


def _textbook_upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)


def _textbook_conv_avgpool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.conv2d(x, weight, bias, padding=1), 2)


# (ours, the textbook formulation, output size for input size S); sizes include MNIST's odd 7 and 14
REWRITES = {
    "upsample_conv3x3": (upsample_conv3x3, _textbook_upsample_conv, lambda size: 2 * size),
    "conv3x3_avgpool": (conv3x3_avgpool, _textbook_conv_avgpool, lambda size: size // 2),
}


@pytest.mark.parametrize(
    "rewrite,size",
    [("upsample_conv3x3", s) for s in (4, 7, 14)] + [("conv3x3_avgpool", s) for s in (8, 14, 28)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_rewrites_equal_the_textbook_formulation(rewrite: str, size: int, channels_last: bool) -> None:
    """G's up-conv (a transposed conv on the small map) and D's conv + average pooling (one stride-2
    conv) must give the values and gradients of the textbook formulation, in both memory formats."""
    ours_fn, textbook_fn, out_size = REWRITES[rewrite]
    torch.manual_seed(0)
    x = torch.randn(3, 5, size, size, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(6, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ours, reference = ours_fn(x, weight, bias), textbook_fn(x, weight, bias)
    assert ours.shape == reference.shape == (3, 6, out_size(size), out_size(size))
    assert torch.allclose(ours, reference, atol=1e-10)
    probe = torch.randn_like(reference)
    grads = torch.autograd.grad(ours, (x, weight, bias), probe)
    reference_grads = torch.autograd.grad(reference, (x, weight, bias), probe)
    for got, want in zip(grads, reference_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-9)
    if channels_last:  # a contiguous input gradient would make every later elementwise backward slow
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
