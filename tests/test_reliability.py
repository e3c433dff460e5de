"""Nothing lost: atomic checkpoints, kill -9 then --resume, exact resume, signals, divergence."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image
from safetensors.torch import load_file

from sagan_cli.atomic import write_atomically
from sagan_cli.checkpoint import load_generator, read_checkpoint_info
from sagan_cli.errors import EXIT_FAILURE, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, SaganError

TINY = ["--batch-size", "8", "--g-width", "8", "--d-width", "8", "--z-dim", "16", "--no-download", "--log-every", "1"]
# Subprocesses get one OpenMP thread: two threads on two busy shared cores spin against each other.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def checkpoint_steps(run: Path) -> dict[str, int]:
    """Every file under a run's real checkpoint names, with its step: each must be a complete checkpoint."""
    return {p.name: read_checkpoint_info(p).step for p in sorted((run / "checkpoints").glob("*.safetensors"))}


def assert_same_tensors(first: Path, second: Path) -> None:
    a, b = load_file(str(first)), load_file(str(second))
    assert sorted(a) == sorted(b)
    parts = {name.split(".")[0] for name in a}
    assert parts == {"generator", "generator_ema", "discriminator", "optimizer_g", "optimizer_d"}
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def losses(run: Path) -> list[tuple[int, float, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss_d"], r["loss_g"]) for r in records]


# --- atomic writes ------------------------------------------------------------------------------


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "final.safetensors"
    write_atomically(target, b"old complete file", durable=True)

    def crash(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)  # the process "dies" after writing the temp file, before the rename
    with pytest.raises(SaganError, match="cannot write .*final.safetensors: No space left on device"):
        write_atomically(target, b"new file", durable=True)
    assert target.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["final.safetensors"]


def test_run_files_get_the_mode_the_umask_gives_like_any_other_file(tiny_run: Path) -> None:
    # Was: 0600 (mkstemp's mode), so nobody else on a shared machine could read a checkpoint.
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    for path in (tiny_run / "config.json", tiny_run / "checkpoints" / "final.safetensors", tiny_run / "metrics.jsonl"):
        assert path.stat().st_mode & 0o777 == expected, path


def _train_with_a_signal_pending(tmp_path: Path, max_steps: int, save_every: int) -> tuple[Exception | None, Path]:
    """The library trainer with SIGTERM already requested: it arrives during the first step."""
    from sagan_cli.config import TrainConfig
    from sagan_cli.data import load_dataset
    from sagan_cli.model import ModelConfig
    from sagan_cli.progress import PlainReporter
    from sagan_cli.rundir import RunDir
    from sagan_cli.train import StopFlag, train

    config = TrainConfig(
        max_steps=max_steps,
        batch_size=8,
        save_every=save_every,
        keep=10,
        model=ModelConfig(g_width=8, d_width=8, z_dim=16),
    )
    run = RunDir.create(tmp_path / "run", config)
    stop = StopFlag()
    stop.request(signal.SIGTERM)
    try:
        train(config, load_dataset("mnist", download=False), run, torch.device("cpu"), PlainReporter(), stop=stop)
    except Exception as exc:  # the test inspects what ended training
        return exc, run.path
    return None, run.path


def test_a_signal_during_the_last_step_still_finishes_the_run(tmp_path: Path) -> None:
    # Was: step_000001 saved instead of final, and exit 143 "stopped" although training had completed.
    error, run = _train_with_a_signal_pending(tmp_path, max_steps=1, save_every=500)
    assert error is None
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final.safetensors"]


def test_a_signal_on_a_save_step_stops_there_with_that_checkpoint_to_resume_from(tmp_path: Path) -> None:
    error, run = _train_with_a_signal_pending(tmp_path, max_steps=5, save_every=1)
    assert error is not None and error.exit_code == EXIT_SIGTERM
    assert f"saved {run / 'checkpoints' / 'step_000001.safetensors'}" in str(error)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001.safetensors"]


def test_keep_holds_the_newest_periodic_checkpoints_plus_final(tmp_path: Path) -> None:
    result = run_cli(
        "train", *TINY, "--max-steps", "5", "--save-every", "1", "--keep", "2", "--out", tmp_path, "--name", "k"
    )
    assert result.exit_code == 0, result.stderr
    assert checkpoint_steps(tmp_path / "k") == {
        "final.safetensors": 5,
        "step_000003.safetensors": 3,
        "step_000004.safetensors": 4,
    }
    assert not list((tmp_path / "k").rglob("*.tmp"))


# --- exact resume -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 grey 28x28 images: 2 batches of 8 per epoch, so a few steps cross several epoch boundaries."""
    folder = tmp_path_factory.mktemp("folder")
    generator = torch.Generator().manual_seed(5)
    for i in range(20):
        pixels = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy(), "L").save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.parametrize("setup", ["mnist-conditional-2dsteps", "folder-epochs"])
def test_n_steps_then_resume_n_steps_equals_2n_straight(setup: str, small_folder: Path, tmp_path: Path) -> None:
    if setup == "folder-epochs":
        flags = [*TINY, "--dataset", str(small_folder), "--image-size", "28", "--channels", "1", "--seed", "3"]
    else:
        flags = [*TINY, "--conditional", "--d-steps", "2", "--ema-decay", "0.5", "--seed", "11"]
    flags += ["--save-every", "2", "--sample-every", "2", "--out", str(tmp_path)]
    straight = run_cli("train", *flags, "--max-steps", "6", "--name", "straight")
    assert straight.exit_code == 0, straight.stderr
    first = run_cli("train", *flags, "--max-steps", "3", "--name", "resumed")
    assert first.exit_code == 0, first.stderr
    resumed = run_cli("train", "--resume", tmp_path / "resumed", "--max-steps", "6")
    assert resumed.exit_code == 0, resumed.stderr
    assert "from step 3 (final.safetensors)" in resumed.stderr

    final_straight = tmp_path / "straight" / "checkpoints" / "final.safetensors"
    final_resumed = tmp_path / "resumed" / "checkpoints" / "final.safetensors"
    assert read_checkpoint_info(final_resumed).step == 6
    assert_same_tensors(final_straight, final_resumed)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_resume_from_a_periodic_checkpoint_mid_run_is_exact(tmp_path: Path) -> None:
    flags = [*TINY, "--save-every", "2", "--keep", "10", "--out", str(tmp_path)]
    assert run_cli("train", *flags, "--max-steps", "5", "--name", "a").exit_code == 0
    checkpoints = tmp_path / "a" / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    # Going back to step 2 abandons steps 3..5: refused without --force, and nothing is touched.
    refused = run_cli("train", "--resume", checkpoints / "step_000002.safetensors", "--max-steps", "5")
    assert refused.exit_code == EXIT_USAGE
    assert "later checkpoints (step_000004.safetensors, final.safetensors)" in refused.stderr
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
    # With --force the run forgets steps 3..5 (metrics included) and redoes them.
    result = run_cli("train", "--resume", checkpoints / "step_000002.safetensors", "--max-steps", "5", "--force")
    assert result.exit_code == 0, result.stderr
    assert "from step 2" in result.stderr
    assert [step for step, _, _ in losses(tmp_path / "a")] == [1, 2, 3, 4, 5]
    assert run_cli("train", *flags, "--max-steps", "5", "--name", "b").exit_code == 0
    assert_same_tensors(
        tmp_path / "a" / "checkpoints" / "final.safetensors", tmp_path / "b" / "checkpoints" / "final.safetensors"
    )
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_going_back_to_an_earlier_checkpoint_drops_the_abandoned_steps(tmp_path: Path) -> None:
    # Was: step 3's checkpoint and preview outlived a resume from step 1 to 2, and the next plain
    # --resume picked step 3 up again, a step of the abandoned timeline.
    flags = [*TINY, "--save-every", "1", "--sample-every", "1", "--keep", "10", "--out", str(tmp_path)]
    assert run_cli("train", *flags, "--max-steps", "4", "--name", "rw").exit_code == 0
    run = tmp_path / "rw"
    result = run_cli(
        "train", "--resume", run / "checkpoints" / "step_000001.safetensors", "--max-steps", "2", "--force"
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final.safetensors", "step_000001.safetensors"]
    assert read_checkpoint_info(run / "checkpoints" / "final.safetensors").step == 2
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_000001.png", "step_000002.png"]
    assert [step for step, _, _ in losses(run)] == [1, 2]


# --- divergence ---------------------------------------------------------------------------------


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "boom"
    assert (
        run_cli("train", *TINY, "--max-steps", "2", "--save-every", "1", "--out", tmp_path, "--name", "boom").exit_code
        == 0
    )
    # The run's config is what a resume trains with: absurd learning rates make the next steps blow up.
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "lr_g": 1e30, "lr_d": 1e30}))
    result = run_cli("train", "--resume", run, "--max-steps", "30")
    assert result.exit_code == EXIT_FAILURE, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r"error: training diverged at step (\d+): non-finite .*the last good checkpoint is (\S+);.*--lr-g/--lr-d\)",
        line,
    )
    assert match, line
    step, kept = int(match.group(1)), Path(match.group(2))
    assert 2 < step < 30
    assert checkpoint_steps(run) == {"final.safetensors": 2, "step_000001.safetensors": 1}  # nothing non-finite saved
    assert kept == run / "checkpoints" / "final.safetensors"
    generator, _ = load_generator(kept)  # still a complete, loadable checkpoint
    assert all(bool(torch.isfinite(t).all()) for t in generator.state_dict().values() if t.is_floating_point())


def test_divergence_before_any_checkpoint_says_so(tmp_path: Path) -> None:
    result = run_cli(
        "train", *TINY, "--lr-g", "1e30", "--lr-d", "1e30", "--max-steps", "30", "--out", tmp_path, "--name", "x"
    )
    assert result.exit_code == EXIT_FAILURE, result.stderr
    assert re.fullmatch(
        r"error: training diverged at step \d+: .*no checkpoint was saved yet.*", result.stderr.strip().splitlines()[-1]
    )
    assert checkpoint_steps(tmp_path / "x") == {}


# --- real processes: kill -9, SIGINT, SIGTERM -----------------------------------------------------


def start_training(out: Path, name: str, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "sagan_cli",
        "train",
        *TINY,
        "--save-every",
        "1",
        "--out",
        str(out),
        "--name",
        name,
        *extra,
    ]
    log = (out / f"{name}.log").open("w")
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=ENV)


def wait_for_checkpoints(process: subprocess.Popen, run: Path, count: int, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while len(list((run / "checkpoints").glob("step_*.safetensors"))) < count:
        assert process.poll() is None, f"training ended early ({process.returncode})"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)


@pytest.mark.slow  # ~1 minute of real processes killed and resumed
def test_kill_9_at_any_moment_then_resume_continues_from_the_last_complete_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "k"
    process = start_training(tmp_path, "k", "--max-steps", "500", "--keep", "2")
    try:
        wait_for_checkpoints(process, run, 2)
        time.sleep(0.3)  # land somewhere in a step or a checkpoint write
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    steps = checkpoint_steps(run)  # every real name holds a complete checkpoint, whatever the moment
    last = max(steps.values())
    assert len([n for n in steps if n.startswith("step_")]) <= 3  # --keep 2, plus one if killed just before pruning
    # What a kill during a write leaves behind: a temp file and a half-written metrics line.
    (run / "checkpoints" / f".step_{last + 1:06d}.safetensors.x1y2z3.tmp").write_bytes(b"\x00" * 64)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 99999, "loss_d"')

    result = subprocess.run(
        [sys.executable, "-m", "sagan_cli", "train", "--resume", str(run), "--max-steps", str(last + 2)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"from step {last} (step_{last:06d}.safetensors)" in result.stderr
    final = run / "checkpoints" / "final.safetensors"
    assert result.stdout.strip() == str(final)
    assert read_checkpoint_info(final).step == last + 2
    assert not list(run.rglob("*.tmp"))
    logged = [step for step, _, _ in losses(run)]  # every line parses again
    assert logged == list(range(1, last + 3))


@pytest.mark.slow  # ~1 minute of real processes signalled mid-run
def test_sigint_and_sigterm_save_a_checkpoint_and_exit_130_and_143(tmp_path: Path) -> None:
    # Both runs at once: each waits mostly on its own interpreter start-up.
    cases = {"int": (signal.SIGINT, EXIT_SIGINT), "term": (signal.SIGTERM, EXIT_SIGTERM)}
    processes = {name: start_training(tmp_path, name, "--max-steps", "500", "--keep", "50") for name in cases}
    try:
        for name, process in processes.items():
            wait_for_checkpoints(process, tmp_path / name, 1)
            process.send_signal(cases[name][0])
        for process in processes.values():
            process.wait(timeout=120)
    finally:
        for process in processes.values():
            process.kill()
    for name, process in processes.items():
        run = tmp_path / name
        assert process.returncode == cases[name][1], (name, process.returncode)
        last_line = (tmp_path / f"{name}.log").read_text().strip().splitlines()[-1]
        match = re.fullmatch(
            r"error: stopped at step (\d+); saved (\S+); continue with: sagan train --resume (\S+)", last_line
        )
        assert match, last_line
        step, saved = int(match.group(1)), Path(match.group(2))
        assert saved == run / "checkpoints" / f"step_{step:06d}.safetensors" and Path(match.group(3)) == run
        assert max(checkpoint_steps(run).values()) == step == read_checkpoint_info(saved).step
        assert read_checkpoint_info(saved).has_training_state
        assert not list(run.rglob("*.tmp"))


# --- safe by construction -----------------------------------------------------------------------


def test_only_safetensors_is_loaded_from_user_paths() -> None:
    """No unrestricted unpickling in our code: only torch.load(weights_only=True), for the (trusted) Inception
    weights and for checking metrics-cache files before torch-fidelity loads them."""
    package = Path(__file__).resolve().parent.parent / "sagan_cli"
    unpicklers = re.compile(
        r"\b(torch\.load|torch\.jit\.load|pickle\.loads?|dill\.load|joblib\.load|numpy\.load|np\.load)\("
    )
    found = {}
    for source in sorted(package.rglob("*.py")):
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if unpicklers.search(line):
                found[f"{source.name}:{number}"] = line.strip()
    allowed = {where: line for where, line in found.items() if "torch.load(" in line and "weights_only=True" in line}
    assert found == allowed, f"pickle-capable loaders outside the Inception weights check: {set(found) - set(allowed)}"


def test_checkpoints_and_runs_from_before_num_workers_was_retired_still_load(tiny_run: Path, tmp_path: Path) -> None:
    # Earlier versions wrote `"num_workers": 0` into every run config and checkpoint; those must keep
    # loading now that the field is gone (sample, evaluate and --resume all read them through
    # TrainConfig.from_dict).
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sagan_cli.config import TrainConfig

    source = tiny_run / "checkpoints" / "final.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    train = json.loads(metadata["train_config"])
    assert "num_workers" not in train
    metadata["train_config"] = json.dumps({**train, "num_workers": 0})
    old = tmp_path / "old.safetensors"
    save_file(load_file(source), str(old), metadata=metadata)
    assert read_checkpoint_info(old).train == read_checkpoint_info(source).train
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "num_workers": 0}) == TrainConfig()
    result = run_cli("sample", old, "-n", 4, "-o", tmp_path / "grid.png")
    assert result.exit_code == 0, result.stderr
