"""--precision: autocast for G and D, fp32 weights and checkpoints, loss scaling for fp16."""

from __future__ import annotations

import json
import shutil

import torch
from conftest import TINY_TRAIN_FLAGS, run_cli
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from sagan_cli.checkpoint import read_checkpoint_info
from sagan_cli.model import SelfAttention, spectral_norm


def test_auto_precision_is_fp32_on_cpu_and_recorded(tiny_checkpoint) -> None:
    info = read_checkpoint_info(tiny_checkpoint)
    assert info.metadata["precision"] == "fp32" and info.metadata["world_size"] == "1"


def test_bf16_run_stays_finite_and_stores_fp32_weights(tmp_path) -> None:
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--precision", "bf16", "--out", tmp_path, "--name", "bf16")
    assert result.exit_code == 0, result.stderr
    assert "precision bf16" in result.stderr
    final = tmp_path / "bf16" / "checkpoints" / "final.safetensors"
    assert read_checkpoint_info(final).metadata["precision"] == "bf16"
    floats = {k: v for k, v in load_file(str(final)).items() if v.is_floating_point()}
    assert floats and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats.values())
    sampled = run_cli("sample", final, "-n", "4", "-o", tmp_path / "grid.png")
    assert sampled.exit_code == 0, sampled.stderr


def test_fp16_scales_losses_and_its_scale_resumes_exactly(tmp_path) -> None:
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--precision", "fp16", "--out", tmp_path, "--name", "fp16")
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "fp16"
    metadata = read_checkpoint_info(run / "checkpoints" / "step_000002.safetensors").metadata
    assert '"scale"' in metadata["grad_scaler_g"] and '"scale"' in metadata["grad_scaler_d"]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    resumed = run_cli("train", "--resume", copy / "checkpoints" / "step_000002.safetensors", "--force")
    assert resumed.exit_code == 0, resumed.stderr
    first, second = (load_file(str(r / "checkpoints" / "final.safetensors")) for r in (run, copy))
    assert all(first[k].equal(second[k]) for k in first)


def test_unknown_precision_is_one_line(tmp_path) -> None:
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--precision", "fp8", "--out", tmp_path, "--name", "x")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --precision 'fp8' is not one of auto, fp32, bf16, fp16"
    assert not (tmp_path / "x").exists()


def test_spectral_norm_matches_torch_and_stays_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    ours = spectral_norm(nn.Conv2d(8, 4, 3))
    torch.manual_seed(0)
    reference = torch_spectral_norm(nn.Conv2d(8, 4, 3))
    assert ours.state_dict().keys() == reference.state_dict().keys()
    assert all(ours.state_dict()[k].equal(reference.state_dict()[k]) for k in ours.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours.weight.dtype == torch.float32  # sigma from an fp32 power iteration
        assert ours(torch.randn(2, 8, 5, 5)).dtype == torch.bfloat16  # the conv itself is autocast


def test_attention_softmax_runs_in_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    block = SelfAttention(16)
    block.gamma.data.fill_(1.0)
    x = torch.randn(2, 16, 8, 8) * 1000  # q.k beyond fp16's 65504 (scale 1, no 1/sqrt(d))
    block.capture_weights = True  # also computes the written-out softmax(QK^T) inside the forward
    with torch.autocast("cpu", dtype=torch.float16):
        output = block(x)
    weights = block.weights  # (B, N, N)
    assert weights is not None and weights.dtype == torch.float32
    assert torch.isfinite(weights).all() and torch.allclose(weights.sum(dim=-1), torch.ones(2, 64))
    assert torch.isfinite(output).all()


def test_default_runs_write_no_key_an_earlier_sagan_would_refuse(tiny_run, tmp_path) -> None:
    # 0.2.0 refuses unknown config keys: runs with default precision/sync-bn/timeout must not write them.
    config = json.loads((tiny_run / "config.json").read_text())
    assert not {"precision", "sync_bn", "dist_timeout"} & set(config)
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--precision", "bf16", "--out", tmp_path, "--name", "b")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "b" / "config.json").read_text())["precision"] == "bf16"
