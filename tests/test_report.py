"""Training curves: curves.png in every run, and `sagan report` for any run's metrics.jsonl."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import run_cli
from PIL import Image


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    return run


def test_training_draws_curves_with_the_previews(tiny_run: Path) -> None:
    with Image.open(tiny_run / "curves.png") as picture:
        assert picture.format == "PNG" and picture.width >= 600
        assert picture.text["step"] == "4"  # redrawn with the last preview, not only the first
        assert picture.text["seed"] == "0"


def test_report_summarises_a_running_run_with_quality_metrics(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny_run, tmp_path)
    (run / "curves.png").unlink()
    with (run / "metrics.jsonl").open("a") as handle:  # evaluation records, then a half-written line
        handle.write(json.dumps({"step": 2, "fid": 80.5, "isc": 2.5}) + "\n")
        handle.write(json.dumps({"step": 4, "fid": 60.25, "isc": 2.0}) + "\n")
        handle.write('{"step": 6, "loss_d": 1.')
    result = run_cli("report", run, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 4 and summary["records"] == 4
    assert summary["best"] == {"fid": {"value": 60.25, "step": 4}, "isc": {"value": 2.5, "step": 2}}
    assert set(summary["final"]) >= {
        "loss_d",
        "loss_g",
        "d_real",
        "d_fake",
        "images_per_second",
        "gamma_g14",
        "gamma_d14",
    }
    assert summary["curves"] == str(run / "curves.png") and (run / "curves.png").is_file()
    assert "best fid: 60.25 at step 4" in result.stderr and "final gammas: g14" in result.stderr
    assert "skipped 1 unreadable line" in result.stderr


def test_report_writes_elsewhere_only_with_force_to_overwrite(tiny_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "curves.png"
    first = run_cli("report", tiny_run, "-o", target)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.strip() == str(target)
    assert "4 steps" in first.stderr
    again = run_cli("report", tiny_run, "-o", target)
    assert again.exit_code == 2 and "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert run_cli("report", tiny_run, "-o", target, "--force").exit_code == 0


def test_report_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    result = run_cli("report", tmp_path)
    assert result.exit_code == 2 and "has no metrics.jsonl" in result.stderr
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss')
    result = run_cli("report", tmp_path)
    assert result.exit_code == 2 and "no logged step yet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_old_runs_without_gammas_or_time_still_summarise(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": s, "loss_d": 1.0 / s, "loss_g": 0.5}) for s in (10, 20)) + "\n")
    result = run_cli("report", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (
        summary["steps"] == 20
        and summary["train_seconds"] is None
        and summary["final"] == {"loss_d": 0.05, "loss_g": 0.5}
    )
    assert (tmp_path / "curves.png").is_file()
