"""The bad-input catalogue: every mistake gets one `error:` line, the right exit code, and changes nothing."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image
from safetensors.torch import save_file

from sagan_cli.cli import app
from sagan_cli.config import LR_UNCONDITIONAL
from sagan_cli.errors import EXIT_FAILURE, EXIT_SIGINT, EXIT_USAGE

TINY = ["--batch-size", "8", "--g-width", "8", "--d-width", "8", "--z-dim", "16", "--no-download", "--log-every", "1"]


def assert_one_error(result, code: int, *fragments: str) -> str:
    """Exit code `code`, and stderr is a single `error: ...` line containing every fragment (no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert not any(line.startswith("error: ") for line in lines[:-1]) and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cond")
    result = run_cli("train", *TINY, "--conditional", "--max-steps", "1", "--out", out, "--name", "cond")
    assert result.exit_code == 0, result.stderr
    return out / "cond" / "checkpoints" / "final.safetensors"


@pytest.fixture(scope="module")
def resumable_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-step unconditional run with periodic checkpoints at steps 1 and 2."""
    out = tmp_path_factory.mktemp("resumable")
    result = run_cli(
        "train",
        *TINY,
        "--no-conditional",
        "--clusters",
        "0",
        "--max-steps",
        "3",
        "--save-every",
        "1",
        "--keep",
        "5",
        "--out",
        out,
        "--name",
        "r",
    )
    assert result.exit_code == 0, result.stderr
    return out / "r"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- checkpoints --------------------------------------------------------------------------------


def _rewrite_metadata(source: Path, target: Path, **changes: str) -> Path:
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    return target


def _bad_checkpoint(kind: str, good: Path, tmp: Path) -> Path:
    path = tmp / f"{kind}.safetensors"
    data = good.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_header":
        path.write_bytes(data[: header_len // 2])
    elif kind == "truncated_weights":
        path.write_bytes(data[: 8 + header_len + (len(data) - 8 - header_len) // 2])
    elif kind == "random_bytes":
        path.write_bytes(
            torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
            .numpy()
            .tobytes()
        )
    elif kind == "pickle":
        path = tmp / "weights.pkl"
        path.write_bytes(pickle.dumps({"generator": [1.0, 2.0]}))
    elif kind == "torch_save":
        path = tmp / "model.pt"
        torch.save({"generator": torch.zeros(3)}, path)
    elif kind == "foreign_safetensors":
        save_file({"weight": torch.zeros(2, 2)}, str(path), metadata={"format": "pt"})
    elif kind == "newer_format":
        _rewrite_metadata(good, path, format_version="2")
    return path


CHECKPOINT_CASES = {
    "missing": "checkpoint not found",
    "directory": "is a directory",
    "empty": "empty or truncated",
    "truncated_header": "truncated or not a safetensors file",
    "truncated_weights": "is damaged",
    "random_bytes": "not a safetensors file",
    "pickle": "pickle",
    "torch_save": "pickle",
    "foreign_safetensors": "not a sagan checkpoint",
    "newer_format": "newer sagan",
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_CASES))
def test_bad_checkpoints_are_refused_with_the_reason(kind: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = _bad_checkpoint(kind, tiny_checkpoint, tmp_path)
    output = tmp_path / "out" / "grid.png"
    assert_one_error(run_cli("sample", bad, "-n", "2", "-o", output), EXIT_USAGE, CHECKPOINT_CASES[kind], bad.name)
    assert not output.exists()


@pytest.mark.parametrize("output", ["grid.png", "folder/"])
def test_sample_count_beyond_memory_is_refused_before_any_work(
    output: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # Was: an out-of-memory crash (exit 1) after minutes, or a hang building a trillion file names.
    target = tmp_path / output
    assert_one_error(
        run_cli("sample", tiny_checkpoint, "-n", str(10**12), "-o", target), EXIT_USAGE, "-n 1000000000000", "GiB"
    )
    assert not target.exists()


def test_a_checkpoint_whose_header_length_starts_like_a_pickle_still_loads(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # Regression: the pickle sniffing looked at the first byte alone, which for a safetensors
    # file is the low byte of the header length, so ~1 in 256 real checkpoints were refused.
    for padding in range(256):
        path = _rewrite_metadata(tiny_checkpoint, tmp_path / "c.safetensors", note="x" * padding)
        if path.read_bytes()[:1] == b"\x80":
            break
    result = run_cli("sample", path, "-n", "1", "-o", tmp_path / "one.png")
    assert result.exit_code == 0, result.stderr


def test_resume_from_a_damaged_checkpoint_is_refused(resumable_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "run" / "checkpoints" / "step_000009.safetensors"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00" * 100)
    (tmp_path / "run" / "config.json").write_bytes((resumable_run / "config.json").read_bytes())
    assert_one_error(run_cli("train", "--resume", bad), EXIT_USAGE, "truncated or not a safetensors file")


# --- datasets -----------------------------------------------------------------------------------


def _write_digits(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("L", (28, 28), color=i * 20).save(folder / f"digit_{i}.png")


def test_missing_dataset_folder(tmp_path: Path) -> None:
    result = run_cli("train", *TINY, "--max-steps", "1", "--dataset", tmp_path / "nope", "--out", tmp_path / "runs")
    assert_one_error(result, EXIT_USAGE, "dataset folder not found", "nope")
    assert not (tmp_path / "runs").exists()


def test_empty_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("train", *TINY, "--max-steps", "1", "--dataset", tmp_path / "empty", "--out", tmp_path / "runs")
    assert_one_error(result, EXIT_USAGE, "no images in")
    assert not (tmp_path / "runs").exists()


def test_dataset_folder_with_no_readable_image(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c.webp"):
        (folder / name).write_bytes(b"this is not an image")
    result = run_cli("train", *TINY, "--max-steps", "1", "--dataset", folder, "--out", tmp_path / "runs")
    assert_one_error(result, EXIT_USAGE, "no readable image", "3 file(s)")
    assert not (tmp_path / "runs").exists()


def test_a_folder_too_big_for_memory_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole set is preloaded as uint8; on a machine without room for it, say so before decoding
    # for minutes and running out of memory (CelebA at 128 px is ~9.9 GB).
    import sagan_cli.data

    folder = tmp_path / "many"
    _write_digits(folder, 5)
    monkeypatch.setattr(sagan_cli.data, "available_memory_bytes", lambda: 1000)  # a machine with 1000 bytes free
    result = run_cli(
        "train",
        *TINY,
        "--max-steps",
        "1",
        "--dataset",
        folder,
        "--image-size",
        "28",
        "--channels",
        "1",
        "--out",
        tmp_path / "runs",
    )
    assert_one_error(result, EXIT_USAGE, "5 images at 1x28x28", "GiB available", "--image-size")
    assert not (tmp_path / "runs").exists()


def test_a_registered_dataset_too_big_for_memory_at_the_asked_size_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was: MNIST at 256 px was resized in one piece, float intermediates and all, until memory ran out.
    import sagan_cli.data

    monkeypatch.setattr(sagan_cli.data, "available_memory_bytes", lambda: 2**29)  # 0.5 GiB free
    result = run_cli("train", *TINY, "--max-steps", "1", "--image-size", "256", "--out", tmp_path / "runs")
    assert_one_error(result, EXIT_USAGE, "mnist: 10,000 images at 1x256x256 need 0.6 GiB", "0.5 GiB available")


def test_corrupt_images_are_skipped_with_a_count(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    _write_digits(folder, 9)
    (folder / "broken.png").write_bytes(Image.new("L", (28, 28)).tobytes()[:50])
    (folder / "half.png").write_bytes((folder / "digit_0.png").read_bytes()[:40])
    result = run_cli(
        "train",
        *TINY,
        "--max-steps",
        "1",
        "--dataset",
        folder,
        "--image-size",
        "28",
        "--channels",
        "1",
        "--out",
        tmp_path / "runs",
        "--name",
        "mixed",
    )
    assert result.exit_code == 0, result.stderr
    assert "warning: skipped 2 unreadable image(s)" in result.stderr
    assert "9 images" in result.stderr
    assert (tmp_path / "runs" / "mixed" / "checkpoints" / "final.safetensors").is_file()


def test_unknown_dataset_name_lists_the_known_ones(tmp_path: Path) -> None:
    result = run_cli("train", *TINY, "--dataset", "imagenet", "--out", tmp_path / "runs")
    assert_one_error(result, EXIT_USAGE, "unknown dataset 'imagenet'", "mnist, fashion-mnist, cifar10, celeba")


# --- nonsensical numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--max-steps", "-5"], "--max-steps must be at least 1, got -5"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--image-size", "48"], "--image-size 48 is not supported; use one of 28, 32, 64, 128, 256"),
        (["--keep", "0"], "--keep must be at least 1"),
        (["--lr-g", "0"], "--lr-g must be a positive finite number, got 0.0"),
        (["--beta2", "1"], "--beta2 must be in [0, 1)"),
        (["--seed", "-1"], "--seed must be in"),
        (["--seed", str(2**40)], "--seed must be in"),
        (["--channels", "2"], "--channels must be 1 or 3"),
        (["--attn-res", "5"], "--attn-res 5: at 28 px neither G nor D has a 5x5 feature map"),
        # Was: accepted, and D (whose maps are 14 and 7) silently got no attention at all.
        (["--attn-res", "28"], "--attn-res 28: at 28 px only G has a 28x28 feature map"),
        (["--lr-d", "inf"], "--lr-d must be a positive finite number, got inf"),
        (["--lr-g", "nan"], "--lr-g must be a positive finite number, got nan"),
        # Was: accepted, and the run's checkpoints then failed to load ("wrong type").
        (["--save-every", str(10**13)], "--save-every must be at most 1099511627776"),
        (["--max-steps", "abc"], "Invalid value for '--max-steps'"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_train_refuses_nonsense_numbers_before_creating_anything(
    flags: list[str], fragment: str, tmp_path: Path
) -> None:
    result = run_cli("train", *TINY, "--max-steps", "1", *flags, "--out", tmp_path / "runs")
    assert_one_error(result, EXIT_USAGE, fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["-n", "0"], "-n must be at least 1, got 0"),
        (["-n", "-3"], "-n must be at least 1, got -3"),
        (["--truncation", "0"], "--truncation 0.0 is outside (0, 1]"),
        (["--truncation", "1.5"], "is outside (0, 1]"),
        (["--truncation", "-0.5"], "is outside (0, 1]"),
        (["--truncation", "nan"], "is outside (0, 1]"),
        (["--class", "3"], "the checkpoint is unconditional; drop --class"),
        (["--nrow", "0"], "--nrow must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
        (["--seed", str(2**64)], "--seed must be in 0..4294967295"),
    ],
)
def test_sample_refuses_nonsense_numbers(
    flags: list[str], fragment: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    result = run_cli("sample", tiny_checkpoint, *flags, "-o", tmp_path / "grid.png")
    assert_one_error(result, EXIT_USAGE, fragment)
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize(
    ("command", "flags", "fragment"),
    [
        # Was: evaluate ran into torch-fidelity after loading everything (exit 1); interpolate accepted -1
        # and died on a huge seed with "unexpected ValueError".
        ("evaluate", ["--seed=-1"], "--seed must be in 0..4294967295, got -1"),
        ("evaluate", ["--seed", str(2**32)], "--seed must be in 0..4294967295, got 4294967296"),
        ("compare", ["--seed=-1"], "--seed must be in 0..4294967295, got -1"),
        ("interpolate", ["--seeds=-1,3"], "--seeds must be in 0..4294967295, got -1"),
        (
            "interpolate",
            ["--seeds=0,99999999999999999999999"],
            "--seeds must be in 0..4294967295, got 99999999999999999999999",
        ),
    ],
)
def test_eval_commands_check_seeds_like_sample(
    command: str, flags: list[str], fragment: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoints = [tiny_checkpoint]
    if command == "compare":
        checkpoints.append(tmp_path / "other.safetensors")
        checkpoints[-1].write_bytes(tiny_checkpoint.read_bytes())
    output = ["-o", tmp_path / "walk.png"] if command == "interpolate" else ["--no-cache"]
    assert_one_error(run_cli(command, *checkpoints, *flags, *output), EXIT_USAGE, fragment)
    assert not (tmp_path / "walk.png").exists()


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_eval_sample_count_beyond_memory_is_refused_before_any_work(
    command: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # Was: "unexpected RuntimeError ... tried to allocate 512000000000 bytes", exit 1.
    checkpoints = [tiny_checkpoint]
    if command == "compare":
        checkpoints.append(tmp_path / "other.safetensors")
        checkpoints[-1].write_bytes(tiny_checkpoint.read_bytes())
    result = run_cli(command, *checkpoints, "-n", str(10**12), "--fid", "--no-cache")
    assert_one_error(result, EXIT_USAGE, "-n 1000000000000", "GiB")


def test_flags_that_would_be_silently_ignored_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli("sample", tiny_checkpoint, "-n", "4", "--nrow", "2", "-o", f"{tmp_path / 'singles'}/")
    assert_one_error(result, EXIT_USAGE, "--nrow only applies to a grid", "drop --nrow")
    result = run_cli("interpolate", tiny_checkpoint, "--seeds", "1,2", "--frame-ms", "50", "-o", tmp_path / "walk.png")
    assert_one_error(result, EXIT_USAGE, "--frame-ms only applies to a GIF")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"x")
    result = run_cli("evaluate", tiny_checkpoint, "--extractor", "digits", "--inception-weights", weights, "-n", "10")
    assert_one_error(result, EXIT_USAGE, "--inception-weights is for the inception extractor")
    assert not any(tmp_path.glob("singles*")) and not (tmp_path / "walk.png").exists()


@pytest.mark.parametrize("class_index", ["10", "-1"])
def test_class_out_of_range_names_the_valid_classes(
    class_index: str, conditional_checkpoint: Path, tmp_path: Path
) -> None:
    result = run_cli("sample", conditional_checkpoint, "--class", class_index, "-o", tmp_path / "grid.png")
    assert_one_error(result, EXIT_USAGE, f"--class {class_index} is out of range", "classes 0..9")
    ok = run_cli("sample", conditional_checkpoint, "--class", "9", "-n", "2", "-o", tmp_path / "grid.png")
    assert ok.exit_code == 0, ok.stderr


# --- outputs ------------------------------------------------------------------------------------


def test_existing_output_is_kept_without_force(tiny_checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "grid.png"
    output.write_bytes(b"precious")
    assert_one_error(
        run_cli("sample", tiny_checkpoint, "-n", "2", "-o", output), EXIT_USAGE, "already exists", "--force"
    )
    assert output.read_bytes() == b"precious"
    result = run_cli("sample", tiny_checkpoint, "-n", "2", "-o", output, "--force")
    assert result.exit_code == 0, result.stderr
    assert Image.open(output).size[0] > 0


def test_existing_files_in_an_output_folder_are_kept_without_force(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "singles"
    folder.mkdir()
    (folder / "sample_00001.png").write_bytes(b"precious")
    assert_one_error(
        run_cli("sample", tiny_checkpoint, "-n", "3", "-o", f"{folder}/"), EXIT_USAGE, "sample_00001.png already exists"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["sample_00001.png"]


def test_output_under_a_file_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    result = run_cli("sample", tiny_checkpoint, "-n", "2", "-o", tmp_path / "notes.txt" / "grid.png")
    assert_one_error(result, EXIT_USAGE, "cannot create output folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_error(
            run_cli("sample", tiny_checkpoint, "-n", "2", "-o", locked / "grid.png"), EXIT_USAGE, "not writable"
        )
    finally:
        locked.chmod(0o700)


def test_unwritable_output_is_a_runtime_error_not_a_traceback(tiny_checkpoint: Path) -> None:
    # /proc refuses new files even for root: the failure comes from the write itself.
    result = run_cli("sample", tiny_checkpoint, "-n", "1", "-o", "/proc/sagan-grid.png")
    assert result.exit_code in (EXIT_USAGE, EXIT_FAILURE)
    assert_one_error(result, result.exit_code, "/proc")


@pytest.mark.parametrize("name", ["grid.xyz", "grid.gif", "grid.PNG.txt"])
def test_unknown_image_extension_lists_the_known_ones(name: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli("sample", tiny_checkpoint, "-n", "2", "-o", tmp_path / name)
    assert_one_error(result, EXIT_USAGE, "unknown image extension", ".png, .jpg")
    assert list(tmp_path.iterdir()) == []


# --- resume -------------------------------------------------------------------------------------


def test_resume_with_an_out_folder_elsewhere_is_refused(resumable_run: Path, tmp_path: Path) -> None:
    # Was: --out was silently ignored on --resume (the run trained where it is).
    result = run_cli("train", "--resume", resumable_run, "--max-steps", "4", "--out", tmp_path / "elsewhere")
    assert_one_error(result, EXIT_USAGE, "--out", "conflicts with --resume", "drop --out")


def test_resume_with_conflicting_flags_names_every_key_and_changes_nothing(resumable_run: Path) -> None:
    before = snapshot(resumable_run)
    result = run_cli("train", "--resume", resumable_run, "--lr-g", "0.1", "--g-width", "16", "--max-steps", "4")
    line = assert_one_error(result, EXIT_USAGE, "flags conflict with the run's config")
    assert f"lr_g: run has {LR_UNCONDITIONAL[0]}, flags say 0.1" in line  # the unconditional default it trained with
    assert "model.g_width: run has 8, flags say 16" in line
    assert "max_steps" not in line  # may change on resume
    assert snapshot(resumable_run) == before


def test_resume_of_an_unconditional_run_with_conditional(resumable_run: Path) -> None:
    result = run_cli("train", "--resume", resumable_run, "--conditional", "--max-steps", "4")
    assert_one_error(result, EXIT_USAGE, "model.num_classes")


def test_resume_below_the_checkpoint_step_is_refused(resumable_run: Path) -> None:
    before = snapshot(resumable_run)
    checkpoint = resumable_run / "checkpoints" / "step_000002.safetensors"
    assert_one_error(
        run_cli("train", "--resume", resumable_run, "--max-steps", "3"), EXIT_USAGE, "already finished at step 3"
    )
    assert_one_error(
        run_cli("train", "--resume", resumable_run, "--max-steps", "2"), EXIT_USAGE, "already finished at step 3"
    )
    result = run_cli("train", "--resume", checkpoint, "--max-steps", "1")
    assert_one_error(result, EXIT_USAGE, "--max-steps 1 is below the checkpoint's step 2")
    assert_one_error(
        run_cli("train", "--resume", checkpoint, "--max-steps", "0"), EXIT_USAGE, "--max-steps must be at least 1"
    )
    assert snapshot(resumable_run) == before


def test_resume_of_something_that_is_not_a_run(tmp_path: Path) -> None:
    assert_one_error(
        run_cli("train", "--resume", tmp_path / "nothing"), EXIT_USAGE, "no such run directory or checkpoint"
    )
    assert_one_error(run_cli("train", "--resume", tmp_path), EXIT_USAGE, "is not a sagan run directory")
    # Was: "unexpected NotADirectoryError", exit 1.
    (tmp_path / "step1.bak").write_bytes(b"x")
    assert_one_error(
        run_cli("train", "--resume", tmp_path / "step1.bak"), EXIT_USAGE, "pass a run directory or one of its"
    )
    (tmp_path / "listrun").mkdir()
    (tmp_path / "listrun" / "config.json").write_text("[]")
    assert_one_error(
        run_cli("train", "--resume", tmp_path / "listrun"), EXIT_USAGE, "config.json is damaged", "JSON object"
    )


def test_resume_from_a_checkpoint_that_fails_to_load_leaves_the_config_alone(
    resumable_run: Path, tmp_path: Path
) -> None:
    # Was: config.json got the new --max-steps before the checkpoint's tensors turned out unreadable.
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(resumable_run, run)
    checkpoint = run / "checkpoints" / "step_000002.safetensors"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) - 64])  # header intact, tensors cut short
    (run / "checkpoints" / "final.safetensors").unlink()
    before = (run / "config.json").read_bytes()
    assert_one_error(run_cli("train", "--resume", checkpoint, "--max-steps", "7"), EXIT_USAGE, "is damaged")
    assert (run / "config.json").read_bytes() == before


def test_a_refused_new_run_leaves_the_old_one_and_creates_nothing(resumable_run: Path, tmp_path: Path) -> None:
    # Was: --force deleted the old run first; the batch-size check after loading the data then refused.
    folder = tmp_path / "three"
    _write_digits(folder, 3)
    before = snapshot(resumable_run)
    result = run_cli(
        "train",
        *TINY,
        "--dataset",
        folder,
        "--image-size",
        "28",
        "--channels",
        "1",
        "--max-steps",
        "1",
        "--out",
        resumable_run.parent,
        "--name",
        resumable_run.name,
        "--force",
    )
    assert_one_error(result, EXIT_USAGE, "--batch-size 8 is larger than the dataset (3 images)")
    assert snapshot(resumable_run) == before
    # ... and a new name that is refused leaves no directory behind to block the next try.
    result = run_cli(
        "train",
        *TINY,
        "--dataset",
        folder,
        "--image-size",
        "28",
        "--channels",
        "1",
        "--out",
        tmp_path / "runs",
        "--name",
        "new",
    )
    assert_one_error(result, EXIT_USAGE, "larger than the dataset")
    assert not (tmp_path / "runs").exists()


def test_a_run_path_through_a_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = run_cli("train", *TINY, "--max-steps", "1", "--out", tmp_path, "--name", "afile")
    assert_one_error(result, EXIT_USAGE, "afile is a file", "another --name or --out")
    result = run_cli("train", *TINY, "--max-steps", "1", "--out", tmp_path / "afile")
    assert_one_error(result, EXIT_USAGE, "afile is a file")


def test_resume_on_other_data_is_refused(tmp_path: Path) -> None:
    # Was: a folder run resumed with 5 more images in the folder trained on, silently, on other data.
    folder = tmp_path / "imgs"
    _write_digits(folder, 8)
    flags = [
        *TINY,
        "--dataset",
        folder,
        "--image-size",
        "28",
        "--channels",
        "1",
        "--out",
        tmp_path / "runs",
        "--name",
        "f",
    ]
    assert run_cli("train", *flags, "--max-steps", "1").exit_code == 0
    for i in range(8, 12):
        Image.new("L", (28, 28), color=i * 20).save(folder / f"digit_{i}.png")
    result = run_cli("train", "--resume", tmp_path / "runs" / "f", "--max-steps", "2")
    assert_one_error(
        result, EXIT_USAGE, "the run trained on", "8x1x28x28", "12x1x28x28", "make the same data available"
    )


def test_a_folder_run_resumes_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: the folder was stored as typed ("imgs"), so a resume from elsewhere said "unknown dataset 'imgs'".
    _write_digits(tmp_path / "imgs", 8)
    monkeypatch.chdir(tmp_path)
    flags = [*TINY, "--dataset", "./imgs", "--image-size", "28", "--channels", "1", "--name", "rel"]
    assert run_cli("train", *flags, "--max-steps", "1").exit_code == 0
    assert json.loads((tmp_path / "runs" / "rel" / "config.json").read_text())["dataset"] == str(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path.parent)
    result = run_cli("train", "--resume", tmp_path / "runs" / "rel", "--max-steps", "2")
    assert result.exit_code == 0, result.stderr


def test_new_run_over_an_existing_one_needs_force(resumable_run: Path) -> None:
    before = snapshot(resumable_run)
    result = run_cli("train", *TINY, "--max-steps", "1", "--out", resumable_run.parent, "--name", resumable_run.name)
    assert_one_error(result, EXIT_USAGE, "already exists", "--resume", "--force")
    assert snapshot(resumable_run) == before


def test_force_never_replaces_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.png").write_bytes(b"not ours")
    result = run_cli("train", *TINY, "--max-steps", "1", "--out", tmp_path, "--name", "photos", "--force")
    assert_one_error(result, EXIT_USAGE, str(folder), "is not a sagan run", "even with --force")
    assert (folder / "holiday.png").read_bytes() == b"not ours"


def test_force_replaces_a_run_killed_before_its_config_was_written(tmp_path: Path) -> None:
    # What an older sagan left when killed inside its first second: empty run folders, no config.
    for name in ("checkpoints", "samples"):
        (tmp_path / "r" / name).mkdir(parents=True)
    (tmp_path / "r" / ".lock").touch()
    flags = [*TINY, "--max-steps", "1", "--out", tmp_path, "--name", "r"]
    assert_one_error(run_cli("train", *flags), EXIT_USAGE, "already exists", "--force")
    result = run_cli("train", *flags, "--force")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "r" / "checkpoints" / "final.safetensors").exists()


# --- devices ------------------------------------------------------------------------------------


def test_a_malformed_rank_variable_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "abc")
    result = run_cli("train", *TINY, "--max-steps", "1", "--out", tmp_path / "runs")
    assert_one_error(result, EXIT_USAGE, "RANK='abc'")
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli("train", *TINY, "--max-steps", "1", "--device", "cuda", "--out", tmp_path / "runs")
    assert_one_error(result, EXIT_USAGE, "CUDA is not available", "--device cpu")
    assert not (tmp_path / "runs").exists()
    result = run_cli("sample", tiny_checkpoint, "-n", "1", "--device", "cuda", "-o", tmp_path / "g.png")
    assert_one_error(result, EXIT_USAGE, "CUDA is not available")
    assert_one_error(
        run_cli("sample", tiny_checkpoint, "--device", "tpu", "-o", tmp_path / "g.png"),
        EXIT_USAGE,
        "unknown device 'tpu'",
    )


# --- unexpected errors and --debug --------------------------------------------------------------


@pytest.fixture
def failing_command(monkeypatch: pytest.MonkeyPatch):
    """A hidden `sagan boom` command that fails with an unexpected error (or KeyboardInterrupt)."""
    monkeypatch.setenv("SAGAN_DEBUG", "0")  # restored after the test, even though --debug sets it

    def boom(kind: str = "runtime") -> None:
        if kind == "interrupt":
            raise KeyboardInterrupt
        raise RuntimeError("kaboom")

    app.command("boom", hidden=True)(boom)
    yield
    app.registered_commands.pop()


def test_unexpected_errors_are_one_line_without_debug(failing_command: None) -> None:
    assert_one_error(run_cli("boom"), EXIT_FAILURE, "unexpected RuntimeError: kaboom", "--debug")


def test_debug_flag_lets_the_traceback_through(failing_command: None) -> None:
    result = run_cli("--debug", "boom")
    assert result.exit_code == EXIT_FAILURE
    assert isinstance(result.exception, RuntimeError)  # re-raised, so Python prints the traceback


def test_ctrl_c_outside_training_exits_130(failing_command: None) -> None:
    assert_one_error(run_cli("boom", "--kind", "interrupt"), EXIT_SIGINT, "interrupted")


def test_sagan_debug_env_shows_the_traceback_in_a_real_process() -> None:
    script = (
        "import sys\nfrom sagan_cli.cli import app, main\n"
        "@app.command('boom')\ndef boom() -> None:\n    raise RuntimeError('kaboom')\n"
        "sys.argv = ['sagan', *sys.argv[1:]]\nmain()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    loud = subprocess.run(
        [sys.executable, "-c", script, "boom"],
        capture_output=True,
        text=True,
        env={**env, "SAGAN_DEBUG": "1"},
        timeout=120,
    )
    assert loud.returncode == EXIT_FAILURE
    assert "Traceback (most recent call last)" in loud.stderr and "RuntimeError: kaboom" in loud.stderr


def test_a_run_that_another_process_trains_is_left_alone(resumable_run: Path, tmp_path: Path) -> None:
    # Two processes on one run overwrote each other's checkpoints and metrics; the second is now refused.
    import shutil

    from sagan_cli.rundir import RunDir

    run = tmp_path / "r"
    shutil.copytree(resumable_run, run)
    with RunDir(run).locked():  # what a running `sagan train` holds
        before = snapshot(run)
        resumed = run_cli("train", "--resume", run, "--max-steps", "5")
        assert_one_error(resumed, EXIT_USAGE, str(run), "being trained by another process")
        assert f"run {run}:" not in resumed.stderr  # no "training this run" line before the refusal
        replaced = run_cli("train", *TINY, "--max-steps", "1", "--out", tmp_path, "--name", "r", "--force")
        assert_one_error(replaced, EXIT_USAGE, "being trained by another process")
        assert snapshot(run) == before
    result = run_cli("train", "--resume", run, "--max-steps", "4")  # free again once the lock is gone
    assert result.exit_code == 0, result.stderr
