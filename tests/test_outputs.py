"""Image files the CLI writes: metadata in every format, atomic replacement, clean folders, no stray folders."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import ExifTags, Image
from test_cli_errors import assert_one_error

from sagan_cli.errors import EXIT_FAILURE, EXIT_USAGE
from sagan_cli.outputs import sample_file_names


def exif_metadata(path: Path) -> dict[str, str]:
    """The metadata a JPEG or WebP carries, read back the way a user would."""
    with Image.open(path) as image:
        return json.loads(image.getexif()[ExifTags.Base.ImageDescription])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- metadata -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_jpeg_and_webp_grids_record_the_seed(suffix: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / f"s7{suffix}"
    result = run_cli("sample", tiny_checkpoint, "-n", "4", "--seed", "7", "--truncation", "0.5", "-o", output)
    assert result.exit_code == 0, result.stderr
    metadata = exif_metadata(output)
    assert metadata["seed"] == "7" and metadata["truncation"] == "0.5" and metadata["weights"] == "ema"
    assert metadata["checkpoint"] == str(tiny_checkpoint) and metadata["step"] == "4"


def test_interpolate_jpeg_records_the_seeds(tiny_checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "walk.jpg"
    result = run_cli("interpolate", tiny_checkpoint, "--seeds", "3,7", "--steps", "3", "-o", output)
    assert result.exit_code == 0, result.stderr
    assert exif_metadata(output)["seeds"] == "3,7"


def test_bmp_is_refused_because_it_cannot_record_the_seed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    sampled = run_cli("sample", tiny_checkpoint, "-n", "2", "-o", tmp_path / "grid.bmp")
    assert_one_error(sampled, EXIT_USAGE, "unknown image extension '.bmp'", "cannot record the seed", ".png")
    walked = run_cli("interpolate", tiny_checkpoint, "--seeds", "3,7", "-o", tmp_path / "walk.bmp")
    assert_one_error(walked, EXIT_USAGE, "'.bmp'", ".png")
    assert list(tmp_path.iterdir()) == []


# --- atomic writes ------------------------------------------------------------------------------


def run_with_file_size_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    """`sagan ARGS` in a process that cannot grow any file past `limit` bytes: a real failing write (EFBIG)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sagan_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )


@pytest.mark.parametrize(
    ("command", "change", "target", "written"),
    [
        (["sample", "-n", "16"], ["--seed", "1"], "grid.png", "grid.png"),
        (["sample", "-n", "16"], ["--seed", "1"], "grid.jpg", "grid.jpg"),
        (["sample", "-n", "2"], ["--seed", "1"], "digits/", "digits/sample_00000.png"),
        (["interpolate", "--seeds", "3,7", "--steps", "6"], ["--seeds", "1,2"], "walk.gif", "walk.gif"),
    ],
)
def test_a_failed_write_with_force_keeps_the_previous_file(
    command: list[str], change: list[str], target: str, written: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    output = tmp_path / written
    first = run_cli(command[0], tiny_checkpoint, *command[1:], "-o", tmp_path / target)
    assert first.exit_code == 0, first.stderr
    before = output.read_bytes()
    assert len(before) > 400  # so the limit below stops the new file part-way
    failed = run_with_file_size_limit(
        400, command[0], tiny_checkpoint, *command[1:], *change, "-o", f"{tmp_path}/{target}", "--force"
    )
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert failed.returncode == EXIT_FAILURE, failed.stderr
    assert lines == [f"error: cannot write {output}: File too large"], failed.stderr
    assert output.read_bytes() == before
    assert leftovers(output.parent) == []


def test_interpolate_write_errors_are_one_line_not_unexpected(tiny_checkpoint: Path) -> None:
    # /proc refuses new files even for root; interpolate used to report "unexpected OSError".
    result = run_cli("interpolate", tiny_checkpoint, "--seeds", "3,7", "--steps", "2", "-o", "/proc/sagan-walk.gif")
    line = assert_one_error(result, result.exit_code, "/proc/sagan-walk.gif")
    assert result.exit_code in (EXIT_USAGE, EXIT_FAILURE) and "unexpected" not in line


def test_gif_walks_record_the_seeds(tiny_checkpoint: Path, tmp_path: Path) -> None:
    gif = tmp_path / "walk.gif"
    result = run_cli("interpolate", tiny_checkpoint, "--seeds", "3,7,1,2", "--steps", "3", "-o", gif)
    assert result.exit_code == 0, result.stderr
    with Image.open(gif) as image:
        comment = json.loads(image.info["comment"])
    assert comment["seeds"] == "3,7;1,2" and comment["checkpoint"] == str(tiny_checkpoint)


# --- sample folders -----------------------------------------------------------------------------


def test_sample_file_names_sort_in_order_beyond_99999() -> None:
    assert sample_file_names(3) == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    assert sample_file_names(100_000)[-1] == "sample_99999.png"
    names = sample_file_names(100_001)
    assert names[0] == "sample_000000.png" and names[-1] == "sample_100000.png"
    assert sorted(names) == names


def test_force_into_a_sample_folder_leaves_only_the_new_run(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    assert run_cli("sample", tiny_checkpoint, "-n", "10", "-o", f"{folder}/").exit_code == 0
    (folder / "notes.txt").write_text("the user's own file")
    (folder / "sample_7.png").write_bytes(b"not one of our names")
    result = run_cli("sample", tiny_checkpoint, "-n", "5", "--seed", "9", "-o", f"{folder}/", "--force")
    assert result.exit_code == 0, result.stderr
    assert "removed 5" in result.stderr and str(folder) in result.stderr
    ours = sample_file_names(5)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*ours, "notes.txt", "sample_7.png"])
    for name in ours:
        with Image.open(folder / name) as image:
            assert image.text["seed"] == "9"


def test_samples_of_an_earlier_run_are_not_mixed_in_without_force(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    assert run_cli("sample", tiny_checkpoint, "-n", "7", "-o", f"{folder}/").exit_code == 0
    for name in sample_file_names(5):
        (folder / name).unlink()  # what is left, sample_00005..06, clashes with nothing a -n 5 writes
    before = sorted(p.name for p in folder.iterdir())
    result = run_cli("sample", tiny_checkpoint, "-n", "5", "--seed", "9", "-o", f"{folder}/")
    assert_one_error(result, EXIT_USAGE, "2 sample file(s) of an earlier run", "sample_00005.png", "--force")
    assert sorted(p.name for p in folder.iterdir()) == before


# --- folders are created by writes, never by checks ---------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "--class", "3", "-o", "{new}/"],
        ["sample", "--class", "3", "-o", "{new}/sub/grid.png"],
        ["interpolate", "--class", "1", "-o", "{new}/walk.png"],
        ["interpolate", "--classes", "1,7", "-o", "{new}/walk.gif"],
        ["compare", "-n", "1", "-o", "{new}/compare.png"],
    ],
)
def test_a_refused_command_creates_no_folder(args: list[str], tiny_checkpoint: Path, tmp_path: Path) -> None:
    new = tmp_path / "new"
    result = run_cli(args[0], tiny_checkpoint, *[a.format(new=new) for a in args[1:]])
    assert_one_error(result, EXIT_USAGE)
    assert not new.exists()


@pytest.mark.parametrize(
    ("args", "written"),
    [
        (["sample", "-n", "2", "-o", "{new}/a/"], "a/sample_00001.png"),
        (["sample", "-n", "2", "-o", "{new}/b/c/grid.webp"], "b/c/grid.webp"),
        (["interpolate", "--steps", "2", "-o", "{new}/d/walk.gif"], "d/walk.gif"),
    ],
)
def test_output_folders_are_created_when_writing(
    args: list[str], written: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    new = tmp_path / "new"
    result = run_cli(args[0], tiny_checkpoint, *[a.format(new=new) for a in args[1:]])
    assert result.exit_code == 0, result.stderr
    assert (new / written).is_file() and leftovers((new / written).parent) == []


def test_an_output_path_through_a_file_is_refused_before_any_work(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    result = run_cli("interpolate", tiny_checkpoint, "-o", tmp_path / "notes.txt" / "deeper" / "walk.png")
    assert_one_error(result, EXIT_USAGE, "cannot create output folder", "notes.txt is not a folder")
