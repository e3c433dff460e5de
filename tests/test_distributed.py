"""torchrun / DDP training: two CPU processes with gloo, a tiny model, a few steps, driven as users do."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, run_cli
from safetensors.torch import load_file

from sagan_cli.checkpoint import load_tensors, read_checkpoint_info

DDP_FLAGS = [*TINY_TRAIN_FLAGS, "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def torchrun_command(*args: str | Path, processes: int = 2) -> list[str]:
    """`torchrun --standalone --nproc-per-node N -m sagan_cli train ARGS` as an argv (a free port each time)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    return [*launcher, "-m", "sagan_cli", "train", *map(str, args)]


def torchrun(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `torchrun_command(ARGS)` to the end, output captured."""
    return subprocess.run(torchrun_command(*args), capture_output=True, text=True, timeout=timeout, env=ENV)


def same_tensors(a: Path, b: Path) -> bool:
    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A finished 4-step run trained by two processes (checkpoints at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("ddp")
    result = torchrun(*DDP_FLAGS, "--out", out, "--name", "ddp")
    assert result.returncode == 0, result.stderr
    return out / "ddp", result


def test_torchrun_trains_with_two_processes_and_only_rank_0_writes(ddp_run) -> None:
    run, result = ddp_run
    final = run / "checkpoints" / "final.safetensors"
    assert result.stdout.split() == [str(final)]  # printed once, by rank 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final.safetensors", "step_000002.safetensors"]
    steps = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2  # one line per logged step, not one per rank
    assert result.stderr.count("step 4/4") == 1 and result.stderr.count("global batch 8 = 2 x 4") == 1
    assert "error" not in result.stderr.lower()
    info = read_checkpoint_info(final)
    assert info.metadata["world_size"] == "2" and info.metadata["precision"] == "fp32"
    assert info.step == 4 and info.has_training_state


def test_ddp_checkpoint_samples_and_resumes_in_one_process(ddp_run, tmp_path) -> None:
    run, _ = ddp_run
    sampled = run_cli("sample", run / "checkpoints" / "final.safetensors", "-n", "4", "-o", tmp_path / "grid.png")
    assert sampled.exit_code == 0, sampled.stderr
    copy = tmp_path / "ddp"
    shutil.copytree(run, copy)
    resumed = run_cli("train", "--resume", copy / "checkpoints" / "step_000002.safetensors", "--force")
    assert resumed.exit_code == 0, resumed.stderr
    info = read_checkpoint_info(copy / "checkpoints" / "final.safetensors")
    assert info.step == 4 and info.metadata["world_size"] == "1"


def test_torchrun_resume_continues_bit_for_bit(ddp_run, tmp_path) -> None:
    run, _ = ddp_run
    copy = tmp_path / "ddp"
    shutil.copytree(run, copy)
    result = torchrun("--resume", copy / "checkpoints" / "step_000002.safetensors", "--force")
    assert result.returncode == 0, result.stderr
    assert same_tensors(copy / "checkpoints" / "final.safetensors", run / "checkpoints" / "final.safetensors")


def test_same_command_and_world_size_give_the_same_weights(ddp_run, tmp_path) -> None:
    run, _ = ddp_run
    again = torchrun(*DDP_FLAGS, "--out", tmp_path, "--name", "ddp")
    assert again.returncode == 0, again.stderr
    assert same_tensors(
        tmp_path / "ddp" / "checkpoints" / "final.safetensors", run / "checkpoints" / "final.safetensors"
    )


def test_torchrun_trains_with_the_r1_penalty(tmp_path) -> None:
    # The penalty back-propagates through D's input gradient (a double backward) inside DDP's D step.
    result = torchrun(*DDP_FLAGS, "--attention", "--r1", "1", "--out", tmp_path, "--name", "r1")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower() and "error" not in result.stderr.lower()
    config = read_checkpoint_info(tmp_path / "r1" / "checkpoints" / "final.safetensors").train
    assert config is not None and config.r1 == 1


def test_torchrun_ranks_train_on_the_clusters_one_process_finds(tmp_path) -> None:
    # Every rank clusters the images itself, from the run's seed; the ranks agree only because k-means is
    # deterministic for a seed, so a two-process run must find exactly the clusters one process finds
    # (config.json keeps the clusters a run started with).
    flags = [*DDP_FLAGS, "--no-conditional", "--clusters", "5", "--recluster-every", "2", "--out", tmp_path]
    result = torchrun(*flags, "--name", "two")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("clustered 10000 images into 5 clusters") == 1  # logged by rank 0 only
    single = run_cli("train", *flags, "--name", "one")
    assert single.exit_code == 0, single.stderr
    started = [json.loads((tmp_path / name / "config.json").read_text())["model"] for name in ("two", "one")]
    assert started[0]["class_weights"] == started[1]["class_weights"] and sum(started[0]["class_weights"]) == 10_000
    # Re-clustering at step 2 reads D, whose weights two processes sum in another order than one: the
    # clusters may differ in a few images, not more; every rank takes rank 0's (a broadcast).
    assert result.stderr.count("step 2: re-clustered 10000 images") == 1
    two_file, one_file = (tmp_path / name / "checkpoints" / "final.safetensors" for name in ("two", "one"))
    two, one = (load_tensors(path, "clusters")["labels"] for path in (two_file, one_file))
    assert float((two == one).double().mean()) > 0.9
    assert read_checkpoint_info(two_file).model.class_weights == tuple(torch.bincount(two.long(), minlength=5).tolist())


def test_torchrun_resumes_a_single_process_run(tiny_run, tmp_path) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_run, copy)
    result = torchrun("--resume", copy, "--max-steps", "6", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    info = read_checkpoint_info(copy / "checkpoints" / "final.safetensors")
    assert info.step == 6 and info.metadata["world_size"] == "2"


def as_rank(monkeypatch: pytest.MonkeyPatch, rank: int = 0, world_size: int = 2) -> None:
    """The environment torchrun gives a worker (the checks below refuse before joining any group)."""
    for name, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", world_size)):
        monkeypatch.setenv(name, str(value))


def test_global_batch_must_divide_among_the_processes(monkeypatch, tmp_path) -> None:
    as_rank(monkeypatch)
    result = run_cli("train", *DDP_FLAGS, "--batch-size", "9", "--out", tmp_path, "--name", "odd")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --batch-size 9 (the global batch) does not divide among 2 processes; use a multiple of 2, e.g. 8 or 10"
    )
    assert not (tmp_path / "odd").exists()


def test_sync_bn_is_refused_on_cpu_processes(monkeypatch, tmp_path) -> None:
    as_rank(monkeypatch)
    result = run_cli("train", *DDP_FLAGS, "--sync-bn", "--out", tmp_path, "--name", "sync")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --sync-bn needs CUDA")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ranks(tmp_path: Path, timeout: int) -> list[subprocess.Popen[str]]:
    """Two workers started by hand, as torchrun would (no torchrun agent to tear them down)."""
    port = free_port()
    processes = []
    for rank in range(2):
        env = {
            **ENV,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        flags = [*DDP_FLAGS, "--max-steps", "100000", "--log-every", "1", "--dist-timeout", str(timeout)]
        stderr = (tmp_path / f"rank{rank}.log").open("w")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "sagan_cli", "train", *flags, "--out", str(tmp_path), "--name", "run"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                text=True,
            )
        )
    return processes


def wait_for_training(log: Path, processes: list[subprocess.Popen[str]], limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while "step 2/" not in log.read_text():
        assert all(p.poll() is None for p in processes), log.read_text()
        assert time.monotonic() < deadline, "the two ranks never started training"
        time.sleep(0.5)


@pytest.mark.parametrize(
    "failure", ["killed", pytest.param("hung", marks=pytest.mark.slow)]
)  # hung: waits out a 15 s timeout
def test_a_failed_rank_makes_the_other_exit_with_one_line_not_hang(tmp_path, failure) -> None:
    timeout = 15
    processes = start_ranks(tmp_path, timeout)
    try:
        wait_for_training(tmp_path / "rank0.log", processes)
        processes[1].send_signal(signal.SIGKILL if failure == "killed" else signal.SIGSTOP)
        started = time.monotonic()
        code = processes[0].wait(timeout=timeout + 60)
        waited = time.monotonic() - started
    finally:
        for process in processes:
            process.kill()
            process.wait()
    lines = (tmp_path / "rank0.log").read_text().strip().splitlines()
    assert code == 1
    assert lines[-1].startswith("error: another training process failed or stopped responding ("), lines[-3:]
    assert "Traceback" not in "\n".join(lines)
    assert waited < timeout + 30


def test_sigterm_to_torchrun_saves_once_at_a_step_every_rank_agreed_on(tmp_path) -> None:
    command = torchrun_command(
        *DDP_FLAGS,
        "--max-steps",
        "100000",
        "--log-every",
        "1",
        "--save-every",
        "100000",
        "--out",
        tmp_path,
        "--name",
        "run",
    )
    log = tmp_path / "torchrun.log"
    with log.open("w") as stderr:
        launcher = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        try:
            wait_for_training(log, [launcher])
            launcher.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
            launcher.wait(timeout=120)
        finally:
            launcher.kill()
            launcher.wait()
    text = log.read_text()
    saved = list((tmp_path / "run" / "checkpoints").glob("step_*.safetensors"))
    assert len(saved) == 1, text[-2000:]
    step = read_checkpoint_info(saved[0]).step
    assert f"error: stopped at step {step}; saved {saved[0]}" in text  # rank 0, at the step it saved
    assert "(rank 1)" not in text and text.count("saving a checkpoint after this step") == 1


@pytest.mark.gpu
@pytest.mark.parametrize("sync_bn", ["--no-sync-bn", "--sync-bn"])
def test_torchrun_on_cuda_uses_nccl_and_auto_precision(tmp_path, sync_bn) -> None:
    # Runs only where CUDA exists (never on the development machine): NCCL, cuda:LOCAL_RANK, autocast.
    import torch

    processes = min(2, torch.cuda.device_count())
    command = torchrun_command(
        *TINY_TRAIN_FLAGS, "--device", "cuda", sync_bn, "--out", tmp_path, "--name", "cuda", processes=processes
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr
    info = read_checkpoint_info(tmp_path / "cuda" / "checkpoints" / "final.safetensors")
    assert info.metadata["world_size"] == str(processes)
    assert info.metadata["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    sampled = run_cli(
        "sample",
        tmp_path / "cuda" / "checkpoints" / "final.safetensors",
        "-n",
        "4",
        "--device",
        "cpu",
        "-o",
        tmp_path / "grid.png",
    )
    assert sampled.exit_code == 0, sampled.stderr


def test_each_rank_streams_its_shard_of_the_global_batch(tmp_path) -> None:
    # Streamed under torchrun, each rank's loader decodes only its slice of the trainer's indices:
    # the weights equal those of the same run preloaded, where each rank indexes its slice in memory.
    from test_streaming import TINY, png_folder

    folder = png_folder(tmp_path / "pngs")
    flags = [*TINY, "--device", "cpu", "--max-steps", "2", "--dataset", folder, "--out", tmp_path]
    memory = torchrun(*flags, "--name", "memory", "--data-mode", "memory")
    assert memory.returncode == 0, memory.stderr
    stream = torchrun(*flags, "--name", "stream", "--data-mode", "stream", "--data-workers", "1")
    assert stream.returncode == 0, stream.stderr
    assert "streaming them from disk" in stream.stderr and "global batch 8 = 2 x 4" in stream.stderr
    assert same_tensors(
        tmp_path / "memory" / "checkpoints" / "final.safetensors",
        tmp_path / "stream" / "checkpoints" / "final.safetensors",
    )
