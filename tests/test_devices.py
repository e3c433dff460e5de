"""Device mix-ups without a GPU: the sampling, walk and training paths with the model on the `meta` device.

Meta tensors carry shapes and devices but no data, so every op checks that its inputs share a device
exactly as it would on CUDA or MPS. The one thing meta cannot do, copy data back to the CPU, returns
zeros of the right shape here (MetaCopiesAsZeros); everything before that copy runs for real.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sagan_cli.config import TrainConfig
from sagan_cli.data import ImageData
from sagan_cli.model import Generator, ModelConfig
from sagan_cli.sampling import generate, sample_labels, sample_latents
from sagan_cli.train import build_state, preview_grid, train_step
from sagan_cli.walk import plan_rows, walk

META = torch.device("meta")
TINY = ModelConfig(image_size=28, g_width=8, d_width=8, z_dim=16, num_classes=10)


class MetaCopiesAsZeros(TorchDispatchMode):
    """Copies from the meta device to a real one give zeros of the right shape and dtype."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        target = kwargs.get("device")
        copies_out = func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.to)
        if copies_out and args[0].device == META and target is not None and torch.device(target) != META:
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device=target)
        return func(*args, **kwargs)


@pytest.fixture
def meta_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(TINY).to(META).eval()


def test_sample_path_keeps_latents_and_labels_on_the_models_device(meta_generator: Generator) -> None:
    with MetaCopiesAsZeros():
        images = generate(meta_generator, sample_latents(5, TINY.z_dim, 0), sample_labels(5, TINY, 0), 2)
    assert images.shape == (5, 1, 28, 28) and images.device.type == "cpu" and images.dtype == torch.uint8


@pytest.mark.parametrize("classes", [None, (1, 7)])
def test_interpolate_paths_keep_every_tensor_on_the_models_device(meta_generator: Generator, classes: Any) -> None:
    # Was: --classes blended a CPU weight tensor with the generator's class table ("not on the expected device").
    rows = plan_rows([3, 4], TINY, None, classes)
    with MetaCopiesAsZeros():
        frames = walk(meta_generator, rows, 5)
    assert frames.shape == (len(rows), 5, 1, 28, 28) and frames.device.type == "cpu"
    assert all(m.scale.weight.device == META for m in meta_generator.modules() if hasattr(m, "scale"))  # table restored


def test_a_training_step_and_its_preview_run_on_the_models_device() -> None:
    config = TrainConfig(batch_size=4, model=TINY)
    data = ImageData(torch.zeros(8, 1, 28, 28, dtype=torch.uint8), torch.arange(8) % 10, 10, "zeros", "test")
    state = build_state(config, META)
    with MetaCopiesAsZeros():
        losses = train_step(state, data, config, META)
        grid = preview_grid(state, config)
    assert {tensor.device for tensor in losses.values()} == {META}  # nothing synced back to the CPU per step
    assert grid.device.type == "cpu" and state.step == 1


@pytest.mark.gpu
def test_cuda_samples_and_class_walks_match_the_cpu(tiny_checkpoint: Any) -> None:
    # Runs only where CUDA exists (not on the development machine): the real device, not meta.
    from sagan_cli.checkpoint import load_generator
    from sagan_cli.sampling import sample_from_checkpoint

    on_cpu, _, _ = sample_from_checkpoint(tiny_checkpoint, 8, device="cpu")
    on_cuda, _, _ = sample_from_checkpoint(tiny_checkpoint, 8, device="cuda")
    assert (on_cpu.int() - on_cuda.int()).abs().max() <= 2  # uint8 levels: kernels round differently
    generator, _ = load_generator(tiny_checkpoint, device="cuda")
    frames = walk(generator, plan_rows([3, 4], ModelConfig(), None, None), 4)
    assert frames.shape[:2] == (1, 4) and frames.device.type == "cpu"
