"""`sagan train --eval-every`: FID / IS during training, best.safetensors, and a training that does not notice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, run_cli
from eval_support import isolate_caches
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sagan_cli.checkpoint import read_checkpoint_info
from sagan_cli.errors import EXIT_USAGE

EVAL = ["--eval-every", "2", "--eval-samples", "60"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_caches(monkeypatch, tmp_path)  # no real Inception weights: grey models get the digits extractor


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def eval_records(run: Path) -> list[dict]:
    return [r for r in records(run) if "fid" in r]


def same_tensors(first: Path, second: Path) -> list[str]:
    """Names of tensors that differ (all parts: G, EMA, D, both optimizers)."""
    a, b = load_file(str(first)), load_file(str(second))
    assert sorted(a) == sorted(b)
    return [name for name in a if not torch.equal(a[name], b[name])]


def test_eval_logs_fid_and_is_and_keeps_the_best_checkpoint_evaluate_agrees_with(tmp_path: Path) -> None:
    result = run_cli(
        "train", *TINY_TRAIN_FLAGS, *EVAL, "--max-steps", "5", "--keep", "1", "--out", tmp_path, "--name", "a"
    )
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "a"
    evals = eval_records(run)
    assert [r["step"] for r in evals] == [2, 4, 5]  # every 2 steps, and the last step
    for r in evals:
        assert r["fid"] > 0 and r["isc"] >= 1 and r["eval_seconds"] > 0
        assert (r["eval_samples"], r["eval_seed"], r["extractor"]) == (60, 0, "digits")
        assert "train_seconds" not in r and "images_per_second" not in r  # evaluation time is its own number
    assert "eval step 2: FID" in result.stderr
    best = min(evals, key=lambda r: r["fid"])
    best_path = run / "checkpoints" / "best.safetensors"
    info = read_checkpoint_info(best_path)
    assert info.step == best["step"] and info.has_training_state  # a full checkpoint: --resume takes it
    assert round(float(info.metadata["best_fid"]), 5) == best["fid"]
    assert (info.metadata["eval_extractor"], info.metadata["eval_samples"], info.metadata["eval_seed"]) == (
        "digits",
        "60",
        "0",
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.safetensors",
        "final.safetensors",
        "step_000004.safetensors",
    ]

    # The number logged is the number `sagan evaluate` gives for that checkpoint with the recorded settings.
    scored = run_cli("evaluate", best_path, "-n", "60", "--seed", "0", "--fid", "--isc", "--json")
    assert scored.exit_code == 0, scored.stderr
    metrics = json.loads(scored.stdout)["metrics"]
    assert metrics["frechet_inception_distance"] == pytest.approx(best["fid"], abs=1e-4)
    assert metrics["inception_score_mean"] == pytest.approx(best["isc"], abs=1e-4)


@pytest.mark.parametrize("ema", ["--ema", "--no-ema"])
def test_evaluation_does_not_change_the_training(ema: str, tmp_path: Path) -> None:
    # --no-ema scores the raw generator, which trains in train mode (BatchNorm batch statistics):
    # scoring it must put it back, or the next steps would train a different model.
    flags = [*TINY_TRAIN_FLAGS, ema, "--out", tmp_path]
    plain = run_cli("train", *flags, "--name", "plain")
    assert plain.exit_code == 0, plain.stderr
    watched = run_cli("train", *flags, "--eval-every", "1", "--eval-samples", "20", "--name", "watched")
    assert watched.exit_code == 0, watched.stderr
    assert len(eval_records(tmp_path / "watched")) == 4
    final = Path("checkpoints") / "final.safetensors"
    assert same_tensors(tmp_path / "plain" / final, tmp_path / "watched" / final) == []
    losses = [
        {k: v for k, v in r.items() if k.startswith(("loss", "d_", "gamma"))} for r in records(tmp_path / "plain")
    ]
    assert losses == [
        {k: v for k, v in r.items() if k.startswith(("loss", "d_", "gamma"))}
        for r in records(tmp_path / "watched")
        if "fid" not in r
    ]


def test_resume_drops_a_best_checkpoint_of_abandoned_steps(tmp_path: Path) -> None:
    flags = [*TINY_TRAIN_FLAGS, *EVAL, "--keep", "10", "--out", tmp_path]
    assert run_cli("train", *flags, "--max-steps", "6", "--name", "a").exit_code == 0
    checkpoints = tmp_path / "a" / "checkpoints"
    # Make step 4 the best on record, then go back to step 2: step 4 is abandoned, and so is its best.
    shutil.copy(checkpoints / "step_000004.safetensors", checkpoints / "best.safetensors")
    result = run_cli("train", "--resume", checkpoints / "step_000002.safetensors", "--max-steps", "2", "--force")
    assert result.exit_code == 0, result.stderr
    assert [r["step"] for r in eval_records(tmp_path / "a")] == [2]
    assert not (checkpoints / "best.safetensors").exists()


def _set_best_metadata(path: Path, **changes: str) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = {**handle.metadata(), **changes}
    save_file(load_file(str(path)), str(path), metadata=metadata)


def test_a_resumed_run_competes_with_the_best_fid_on_record(tmp_path: Path) -> None:
    assert run_cli("train", *TINY_TRAIN_FLAGS, *EVAL, "--out", tmp_path, "--name", "a").exit_code == 0
    best = tmp_path / "a" / "checkpoints" / "best.safetensors"
    _set_best_metadata(best, best_fid="0.5")  # no tiny model comes near: the record must stand
    before = best.read_bytes()
    result = run_cli("train", "--resume", tmp_path / "a", "--max-steps", "6")
    assert result.exit_code == 0, result.stderr
    assert [r["step"] for r in eval_records(tmp_path / "a")] == [2, 4, 6]
    assert best.read_bytes() == before
    # Scored another way (here: another sample count), the record is not comparable and the next score replaces it.
    _set_best_metadata(best, eval_samples="999")
    result = run_cli("train", "--resume", tmp_path / "a", "--max-steps", "8")
    assert result.exit_code == 0, result.stderr
    assert "was scored differently" in result.stderr
    assert read_checkpoint_info(best).step == 8


def test_eval_is_a_resumable_override(tmp_path: Path) -> None:
    assert run_cli("train", *TINY_TRAIN_FLAGS, "--out", tmp_path, "--name", "a").exit_code == 0
    result = run_cli("train", "--resume", tmp_path / "a", "--max-steps", "6", *EVAL)
    assert result.exit_code == 0, result.stderr
    assert [r["step"] for r in eval_records(tmp_path / "a")] == [6]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["eval_every"] == 2


def test_an_rgb_model_without_inception_weights_trains_with_a_one_line_notice(tmp_path: Path) -> None:
    result = run_cli("train", *TINY_TRAIN_FLAGS, *EVAL, "--channels", "3", "--out", tmp_path, "--name", "rgb")
    assert result.exit_code == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if "--eval-every 2: no evaluation" in line]
    assert len(notices) == 1 and "Inception weights not found" in notices[0]
    assert eval_records(tmp_path / "rgb") == []
    assert not (tmp_path / "rgb" / "checkpoints" / "best.safetensors").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--eval-every", "-1"], "--eval-every must be 0 (never) or a number of steps, got -1"),
        (["--eval-every", "2", "--eval-samples", "1"], "--eval-samples must be at least 2, got 1"),
        (["--eval-samples", "100"], "--eval-samples 100 is only used with --eval-every N"),
    ],
)
def test_bad_eval_flags_are_one_line_before_any_work(flags: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("train", *TINY_TRAIN_FLAGS, *flags, "--out", tmp_path, "--name", "x")
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "x").exists()
