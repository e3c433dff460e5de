"""`sagan train --max-minutes`: a time budget that ends with a final checkpoint and can be extended on resume."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_TRAIN_FLAGS, run_cli
from test_cli_errors import assert_one_error

from sagan_cli.checkpoint import read_checkpoint_info
from sagan_cli.errors import EXIT_USAGE

# 0.0001 minutes (6 ms) is over after the first step of even the tiny model.
TINY_BUDGET = "0.0001"


def train_with_budget(out: Path, *extra: str):
    return run_cli(
        "train",
        *TINY_TRAIN_FLAGS,
        "--max-steps",
        "50",
        "--max-minutes",
        TINY_BUDGET,
        *extra,
        "--out",
        out,
        "--name",
        "b",
    )


def test_max_minutes_stops_at_the_first_step_past_the_budget_with_a_final_checkpoint(tmp_path: Path) -> None:
    result = train_with_budget(tmp_path)
    assert result.exit_code == 0, result.stderr
    final = tmp_path / "b" / "checkpoints" / "final.safetensors"
    assert result.stdout.strip() == str(final)
    info = read_checkpoint_info(final)
    assert info.step == 1  # far below --max-steps 50
    assert info.train_seconds >= 0.0001 * 60
    assert "time budget of 0.0001 minutes reached at step 1" in result.stderr
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["max_minutes"] == 0.0001 and config["max_steps"] == 50
    metrics = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 1  # the last step is logged and previewed like a --max-steps end
    assert (tmp_path / "b" / "samples" / "step_000001.png").exists()


def test_a_run_that_used_its_budget_resumes_to_a_new_budget_of_minutes_or_steps(tmp_path: Path) -> None:
    assert train_with_budget(tmp_path).exit_code == 0
    run = tmp_path / "b"
    final = run / "checkpoints" / "final.safetensors"
    assert_one_error(run_cli("train", "--resume", run), EXIT_USAGE, "already finished at step 1", "--max-minutes")
    assert_one_error(run_cli("train", "--resume", run, "--max-minutes", TINY_BUDGET), EXIT_USAGE, "already finished")

    budget = read_checkpoint_info(final).train_seconds / 60 * 1.01  # a larger total budget: a step or a few more
    result = run_cli("train", "--resume", run, "--max-minutes", str(budget))
    assert result.exit_code == 0, result.stderr
    step = read_checkpoint_info(final).step
    assert 1 < step < 50
    assert json.loads((run / "config.json").read_text())["max_minutes"] == budget

    result = run_cli("train", "--resume", run, "--max-steps", str(step + 2))  # steps alone: the time budget is lifted
    assert result.exit_code == 0, result.stderr
    assert read_checkpoint_info(final).step == step + 2
    config = json.loads((run / "config.json").read_text())
    assert config["max_minutes"] is None and config["max_steps"] == step + 2


def test_max_minutes_must_be_positive(tmp_path: Path) -> None:
    for value in ("0", "-1", "nan"):
        result = run_cli("train", *TINY_TRAIN_FLAGS, "--max-minutes", value, "--out", tmp_path)
        assert_one_error(result, EXIT_USAGE, "--max-minutes must be a positive number", value)
    assert list(tmp_path.iterdir()) == []
