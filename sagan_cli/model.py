"""The SAGAN model: self-attention, generator and discriminator.

Pure module: tensors in, tensors out. No file I/O, printing or device choice.
Follows Zhang et al. 2018 (arXiv 1805.08318) and the official code: spectral
norm on every conv/linear of G and D, residual up/down blocks, BatchNorm in G
(conditional BatchNorm when class-conditional), a projection discriminator,
and self-attention blocks whose gate gamma starts at 0.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

# Bottom (first) feature-map size of G / last of D for each supported image size.
# 28 = 7 * 2^2 (MNIST native); the others are powers of two over 4x4.
BOTTOM_RESOLUTION = {28: 7, 32: 4, 64: 4, 128: 4, 256: 4}
SUPPORTED_IMAGE_SIZES = tuple(sorted(BOTTOM_RESOLUTION))
MAX_CHANNEL_MULT = 8


def feature_resolutions(image_size: int) -> list[int]:
    """Feature-map sizes of G's blocks, bottom to top (e.g. 28 -> [7, 14, 28])."""
    if image_size not in BOTTOM_RESOLUTION:
        raise ValueError(f"image size {image_size} is not supported; use one of {SUPPORTED_IMAGE_SIZES}")
    resolutions = [BOTTOM_RESOLUTION[image_size]]
    while resolutions[-1] < image_size:
        resolutions.append(resolutions[-1] * 2)
    return resolutions


def check_image_shape(
    image_size: int, channels: int, size_name: str = "image size", channels_name: str = "channels"
) -> None:
    """Raise ValueError unless the model can make images of this size and channel count.

    The names let a caller speak the user's words (the train command passes its flags).
    """
    if image_size not in BOTTOM_RESOLUTION:
        raise ValueError(
            f"{size_name} {image_size} is not supported; use one of {', '.join(map(str, SUPPORTED_IMAGE_SIZES))}"
        )
    if channels not in (1, 3):
        raise ValueError(f"{channels_name} must be 1 or 3, got {channels}")


def default_attention_resolutions(image_size: int) -> tuple[int, ...]:
    """Where attention goes by default: the feature map at half the image size, at most 64x64
    (attention cost grows with the square of the positions: a 128x128 map has 16,384)."""
    return (min(image_size // 2, 64),)


ATTENTION_IN = ("both", "g", "d")  # which networks carry the attention blocks (the paper: both)


def attention_sizes(image_size: int, network: str) -> list[int]:
    """Feature-map sizes after a block, where an attention block can sit: G's blocks output every size
    but its bottom one, D's every size but the image's (e.g. 28 px: G [14, 28], D [7, 14])."""
    resolutions = feature_resolutions(image_size)
    return resolutions[1:] if network == "g" else resolutions[:-1]


def default_d_width(image_size: int) -> int:
    """D width when none is given: 32 at every size (docs/results.md: issue 12, and "D width at 64 px").

    D does most of a step's work. At 64 px width 64 made D 4x G's parameters and the step 2.1x
    slower, and width 32 reached digits-FID 10.0 where 64 reached 22.5 in the same time. At 28 px
    width 32 trains about 2x faster (~206 against ~100 images/s with 2 threads); width 64 learns a
    little more per step, not twice as much, and the default run at width 32 reaches digits-FID ~0.8.
    """
    return 32


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a SAGAN; stored as JSON in every checkpoint."""

    image_size: int = 28
    channels: int = 1  # 1 (grayscale) or 3 (RGB)
    z_dim: int = 128
    g_width: int = 32  # G channels at the top block; lower blocks double up to 8x
    d_width: int | None = None  # D channels at the first block, doubling up to 8x; None = default_d_width(image_size)
    attention: bool = True
    attn_resolutions: tuple[int, ...] = field(default_factory=tuple)  # empty = default placement
    attention_in: str = "both"  # "g" or "d": only that network gets the attention blocks
    num_classes: int = 0  # > 0: class-conditional (conditional BN in G, projection D)
    class_weights: tuple[int, ...] = field(default_factory=tuple)  # how often samples draw each class; () = uniform

    def __post_init__(self) -> None:
        check_image_shape(self.image_size, self.channels)
        if self.d_width is None:
            object.__setattr__(self, "d_width", default_d_width(self.image_size))
        for name in ("z_dim", "g_width", "d_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        weights = tuple(int(w) for w in self.class_weights)
        object.__setattr__(self, "class_weights", weights)
        if weights and (len(weights) != self.num_classes or min(weights) < 0 or sum(weights) == 0):
            raise ValueError(f"class_weights must be {self.num_classes} counts >= 0, not all 0; got {len(weights)}")
        if self.attention_in not in ATTENTION_IN:
            raise ValueError(f"attention_in must be one of {', '.join(ATTENTION_IN)}, got {self.attention_in!r}")
        attn = tuple(int(r) for r in self.attn_resolutions) or default_attention_resolutions(self.image_size)
        object.__setattr__(self, "attn_resolutions", attn)
        # G's sizes for both (a size only D has, its bottom one, stays without attention in G and D alike).
        allowed = attention_sizes(self.image_size, "d" if self.attention_in == "d" else "g")
        bad = [r for r in attn if r not in allowed]
        if bad:
            raise ValueError(
                f"attention resolution(s) {bad} do not exist for image size {self.image_size}; choose from {allowed}"
            )

    @property
    def active_attn_resolutions(self) -> tuple[int, ...]:
        """Resolutions that actually carry an attention block (none when attention is off)."""
        return self.attn_resolutions if self.attention else ()

    def attn_resolutions_of(self, network: str) -> tuple[int, ...]:
        """The attention resolutions of one network, "g" or "d" (none when attention is off or elsewhere)."""
        return self.active_attn_resolutions if self.attention_in in ("both", network) else ()

    def drawn_classes(self) -> tuple[int, ...]:
        """The classes samples can draw: all of them, or (with class_weights) the clusters that held images."""
        return tuple(c for c in range(self.num_classes) if not self.class_weights or self.class_weights[c] > 0)

    def to_json(self) -> str:
        """Serialise to a JSON string (round-trips through from_json); attention_in only when not "both"
        and class_weights only when set, so the checkpoints of other models stay what earlier versions read."""
        data = asdict(self)
        if data["attention_in"] == "both":
            del data["attention_in"]
        if not data["class_weights"]:
            del data["class_weights"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Parse a config; unknown keys are an error, missing keys take defaults."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        if "attn_resolutions" in raw:
            raw["attn_resolutions"] = tuple(raw["attn_resolutions"])
        if "class_weights" in raw:
            raw["class_weights"] = tuple(raw["class_weights"])
        return cls(**raw)


def full_precision(device_type: str) -> contextlib.AbstractContextManager[None]:
    """Leave autocast for a numerically delicate step (nothing to leave when autocast is off)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class FP32SpectralNorm(_SpectralNorm):
    """torch's spectral norm, with its power iteration and sigma in fp32 even under autocast.

    In fp16 the normalisation's eps (1e-12) underflows to 0 and sigma loses digits; the weight is
    fp32 anyway, so this costs two matrix-vector products per layer in fp32. Same buffers (_u, _v)
    and state_dict keys as torch.nn.utils.parametrizations.spectral_norm.
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with full_precision(weight.device.type):
            return super().forward(weight)


def spectral_norm(module: nn.Module) -> nn.Module:
    """torch.nn.utils.parametrizations.spectral_norm (1 power iteration, dim 0), kept in fp32 under autocast."""
    # The same construction as torch's function (and the same random draws for u and v), so
    # weights initialise exactly as before and earlier checkpoints load unchanged.
    weight = module.weight
    assert isinstance(weight, torch.Tensor), f"{type(module).__name__} has no weight tensor"
    parametrize.register_parametrization(module, "weight", FP32SpectralNorm(weight, 1, 0, 1e-12))
    return module


def sn_conv(in_ch: int, out_ch: int, kernel_size: int, padding: int = 0, bias: bool = True) -> nn.Conv2d:
    """A Conv2d with spectral norm on its weight (registered in place; `.weight` is the normalised one)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, bias=bias)
    spectral_norm(conv)
    return conv


def sn_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """A Linear with spectral norm on its weight (registered in place)."""
    linear = nn.Linear(in_features, out_features, bias=bias)
    spectral_norm(linear)
    return linear


# Two exact rewrites that do the same arithmetic with fewer multiply-adds (docs/model.md derives them).
# Along one axis, nearest 2x upsampling followed by a 3x3 conv (padding 1) gives output pixel 2i the
# input rows (i-1, i) with taps (w0, w1+w2), and pixel 2i+1 the rows (i, i+1) with taps (w0+w1, w2):
# a stride-2 transposed conv whose 4-tap kernel is UPSAMPLE_TAPS @ w (16 instead of 36 MACs per
# input pixel and channel pair). A 3x3 conv followed by 2x2 average pooling is a stride-2 conv with
# the 4-tap kernel POOL_TAPS @ w (16 instead of 36 MACs per output pixel and channel pair).
UPSAMPLE_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))  # (4, 3)
POOL_TAPS = ((0.5, 0.0, 0.0), (0.5, 0.5, 0.0), (0.0, 0.5, 0.5), (0.0, 0.0, 0.5))  # (4, 3)


def _like_input(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # A kernel in x's memory format keeps oneDNN's gradients in that format too (a contiguous
    # kernel on a channels_last input gives a contiguous input gradient, and every elementwise
    # backward op after it then runs on mixed layouts, several times slower).
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return kernel.contiguous(memory_format=torch.channels_last) if channels_last else kernel


@functools.cache
def _taps(kind: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(UPSAMPLE_TAPS if kind == "up" else POOL_TAPS, device=device, dtype=dtype)  # (4, 3)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3x3(nearest_upsample_2x(x)) with padding 1, computed on the small map: (B,Cin,H,W)->(B,Cout,2H,2W)."""
    taps = _taps("up", weight.device, weight.dtype)
    kernel = torch.einsum("ka,lb,oiab->iokl", taps, taps, weight)  # (Cin, Cout, 4, 4), transposed-conv layout
    return F.conv_transpose2d(x, _like_input(kernel, x), bias, stride=2, padding=1)


def conv3x3_avgpool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """avg_pool2d(conv3x3(x), 2) with padding 1, as one stride-2 conv: (B,Cin,H,W)->(B,Cout,H/2,W/2)."""
    taps = _taps("pool", weight.device, weight.dtype)
    kernel = torch.einsum("ka,lb,oiab->oikl", taps, taps, weight)  # (Cout, Cin, 4, 4)
    return F.conv2d(x, _like_input(kernel, x), bias, stride=2, padding=1)


class SelfAttention(nn.Module):
    """SAGAN self-attention: y = x + gamma * W_v(softmax(Q K^T) V), Q = g(x), K = f(x), V = h(x).

    In the paper (eq. 1-2) s_ij = f(x_i)^T g(x_j) and position j attends over positions i, so g is
    the query and f the key; `query` holds W_g, `key` W_f, `value` W_h, `out` W_v. All are 1x1
    convs to C/8 channels (the paper's C-bar, k = 8), so q, k and v share a head dimension and
    scaled_dot_product_attention can use its fused kernel (no N x N map in memory). Scale is 1,
    as in the paper (no 1/sqrt(d)). gamma starts at 0, so the block is the identity at init.

    With `capture_weights` set, a forward also keeps the attention weights it used in `weights`
    (B, N, N): softmax(Q K^T) from the very q and k of that forward (the fused kernel never
    materialises them, so they are computed beside it). Row j is how query position j weighs every
    position (row-major over H x W). Off by default: the N x N map is what the fused kernel avoids.
    """

    fused = True  # False: the written-out softmax(Q K^T) V (same values; an N x N map in memory)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.inner = max(1, channels // 8)
        self.query = sn_conv(channels, self.inner, 1, bias=False)
        self.key = sn_conv(channels, self.inner, 1, bias=False)
        self.value = sn_conv(channels, self.inner, 1, bias=False)
        self.out = sn_conv(self.inner, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.capture_weights = False
        self.weights: torch.Tensor | None = None  # (B, N, N) of the last forward while capturing

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, 1, self.inner, h * w).transpose(-1, -2)  # (B, 1, N, C/8)

        return heads(self.query(x)), heads(self.key(x)), heads(self.value(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape  # (B, C, H, W)
        q, k, v = self._qkv(x)  # each (B, 1, N, C/8)
        attention = None
        with full_precision(x.device.type):  # softmax over N logits with scale 1: fp32 under autocast too
            q, k, v = q.float(), k.float(), v.float()
            if self.fused:
                attended = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, 1, N, C/8)
            else:
                attention = (q @ k.transpose(-1, -2)).softmax(dim=-1)  # (B, 1, N, N): row j = beta_j over keys i
                attended = attention @ v  # (B, 1, N, C/8)
            if self.capture_weights:  # inspection only (sagan attention): what the fused kernel computes inside
                if attention is None:
                    attention = (q @ k.transpose(-1, -2)).softmax(dim=-1)  # (B, 1, N, N)
                self.weights = attention[:, 0].detach()  # (B, N, N)
        attended = attended.transpose(-1, -2).reshape(b, self.inner, h, w)  # (B, C/8, H, W)
        return x + self.gamma * self.out(attended)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are looked up per class (unconditional when num_classes=0)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes > 0:
            self.scale = nn.Embedding(num_classes, channels)
            self.shift = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.scale.weight)
            nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.bn(x)
        if self.num_classes == 0:
            return out
        assert y is not None, "conditional BatchNorm needs labels"
        return out * self.scale(y)[:, :, None, None] + self.shift(y)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """Residual up-block: BN-ReLU-up-conv3-BN-ReLU-conv3, shortcut up-conv1. (B,Cin,H,W)->(B,Cout,2H,2W).

    up-conv3 runs as one transposed conv on the small map (`upsample_conv3x3`), same values.
    """

    def __init__(self, in_ch: int, out_ch: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_ch, num_classes)
        self.conv1 = sn_conv(in_ch, out_ch, 3, padding=1)
        self.bn2 = ConditionalBatchNorm2d(out_ch, num_classes)
        self.conv2 = sn_conv(out_ch, out_ch, 3, padding=1)
        self.shortcut = sn_conv(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = upsample_conv3x3(F.relu(self.bn1(x, y)), self.conv1.weight, self.conv1.bias)  # (B, Cout, 2H, 2W)
        h = self.conv2(F.relu(self.bn2(h, y)))
        # 1x1 conv then nearest upsampling: the same values as upsample-then-conv, 4x cheaper.
        return h + F.interpolate(self.shortcut(x), scale_factor=2, mode="nearest")


class DiscriminatorBlock(nn.Module):
    """Residual block: (ReLU)-conv3-ReLU-conv3-[avgpool], shortcut conv1-[avgpool] or identity.

    (B, Cin, H, W) -> (B, Cout, H/2, W/2) when `down`, else (B, Cout, H, W). conv3-avgpool runs
    as one stride-2 conv (`conv3x3_avgpool`), same values.
    """

    def __init__(self, in_ch: int, out_ch: int, first: bool, down: bool = True) -> None:
        super().__init__()
        self.first = first  # the first block sees images: no ReLU before its first conv
        self.down = down
        self.conv1 = sn_conv(in_ch, out_ch, 3, padding=1)
        self.conv2 = sn_conv(out_ch, out_ch, 3, padding=1)
        self.shortcut = sn_conv(in_ch, out_ch, 1) if (down or in_ch != out_ch) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.relu(self.conv1(h))
        if not self.down:
            return self.conv2(h) + (x if self.shortcut is None else self.shortcut(x))
        h = conv3x3_avgpool(h, self.conv2.weight, self.conv2.bias)  # (B, Cout, H/2, W/2)
        assert self.shortcut is not None  # every down block has one (__init__)
        return h + self.shortcut(F.avg_pool2d(x, 2))  # pool then 1x1 conv: same values as conv then pool, 4x cheaper


def _width(base: int, blocks_from_top: int) -> int:
    return base * min(MAX_CHANNEL_MULT, 2**blocks_from_top)


class Generator(nn.Module):
    """z (B, z_dim) [+ labels (B,)] -> images (B, C, S, S) in [-1, 1]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        resolutions = feature_resolutions(config.image_size)  # e.g. [7, 14, 28]
        n_blocks = len(resolutions) - 1
        widths = [_width(config.g_width, n_blocks - i) for i in range(n_blocks + 1)]  # bottom..top
        self.bottom = resolutions[0]
        self.bottom_width = widths[0]
        self.project = sn_linear(config.z_dim, widths[0] * self.bottom**2)
        self.blocks = nn.ModuleList(
            GeneratorBlock(widths[i], widths[i + 1], config.num_classes) for i in range(n_blocks)
        )
        self.attention = nn.ModuleDict(
            {
                str(res): SelfAttention(widths[i + 1])
                for i, res in enumerate(resolutions[1:])
                if res in config.attn_resolutions_of("g")
            }
        )
        self.out_bn = nn.BatchNorm2d(widths[-1])
        self.out_conv = sn_conv(widths[-1], config.channels, 3, padding=1)
        self.resolutions = resolutions

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], self.bottom_width, self.bottom, self.bottom)  # (B, C0, r0, r0)
        for block, res in zip(self.blocks, self.resolutions[1:], strict=True):
            h = block(h, y)  # (B, C, res, res)
            if str(res) in self.attention:
                h = self.attention[str(res)](h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))  # (B, channels, S, S)


class Discriminator(nn.Module):
    """images (B, C, S, S) [+ labels (B,)] -> scores (B,); projection term when conditional."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        resolutions = feature_resolutions(config.image_size)[::-1]  # e.g. [28, 14, 7]
        n_blocks = len(resolutions) - 1
        d_width = config.d_width
        assert d_width is not None  # ModelConfig.__post_init__ resolved it
        widths = [config.channels] + [_width(d_width, i) for i in range(n_blocks)]
        self.blocks = nn.ModuleList(DiscriminatorBlock(widths[i], widths[i + 1], first=i == 0) for i in range(n_blocks))
        self.attention = nn.ModuleDict(
            {
                str(res): SelfAttention(widths[i + 1])
                for i, res in enumerate(resolutions[1:])
                if res in config.attn_resolutions_of("d")
            }
        )
        self.resolutions = resolutions
        self.bottom = resolutions[-1]
        # One more block at the bottom size, without downsampling (as in SNGAN / BigGAN's D).
        self.bottom_block = DiscriminatorBlock(widths[-1], widths[-1], first=False, down=False)
        # Position-aware head: a linear map over the whole bottom feature map (as DCGAN's last conv),
        # not SAGAN's global sum pooling. On 28-32 px images the D is shallow, and with sum pooling it
        # could not even tell one repeated image from real digits in 40 steps (loss rose); with
        # this head it does in 10 (docs/model.md).
        self.linear = sn_linear(widths[-1] * self.bottom**2, 1)
        if config.num_classes > 0:
            self.embed = spectral_norm(nn.Embedding(config.num_classes, widths[-1]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """images (B, C, S, S) -> the feature map (B, C_last, r0, r0) that the head and projection read."""
        h = x
        for block, res in zip(self.blocks, self.resolutions[1:], strict=True):
            h = block(h)  # (B, C, res, res)
            if str(res) in self.attention:
                h = self.attention[str(res)](h)
        return F.relu(self.bottom_block(h))  # (B, C_last, r0, r0)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)  # (B, C_last, r0, r0)
        score = self.linear(h.flatten(1)).squeeze(1)  # (B,)
        if self.config.num_classes > 0:
            assert y is not None, "a conditional discriminator needs labels"
            pooled = h.sum(dim=(2, 3))  # (B, C_last)
            score = score + (self.embed(y) * pooled).sum(dim=1)  # projection term
        return score


def attention_gammas(module: nn.Module) -> dict[str, float]:
    """The gate value of every attention block, keyed by its feature-map size ("14", ...)."""
    return {
        name.rsplit(".", 1)[-1]: float(m.gamma.detach())
        for name, m in module.named_modules()
        if isinstance(m, SelfAttention)
    }


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
