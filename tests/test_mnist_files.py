"""MNIST-style IDX files in --data-dir: found in either layout, read by sagan, validated, resumable from any copy."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, run_cli

from sagan_cli.idx import encode_idx

N = 40  # images in the written training split: enough for a few batches of 8


def _split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (N, 28, 28), dtype=torch.uint8, generator=rng)  # (N, 28, 28)
    labels = torch.randint(0, 10, (N,), dtype=torch.uint8, generator=rng)
    return images, labels


def write_idx_files(folder: Path, images: torch.Tensor, labels: torch.Tensor, gzipped: bool = True) -> Path:
    """The four standard files, gzip level 1 (the originals and torchvision's checksums are of other bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", len(images)), ("t10k", 10)):
        for kind, tensor in (("images-idx3", images[:count]), ("labels-idx1", labels[:count])):
            data = encode_idx(tensor)
            name = f"{split}-{kind}-ubyte"
            if gzipped:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1, mtime=12345))
            else:
                (folder / name).write_bytes(data)
    return folder


def _train(*args: object):
    return run_cli("train", *TINY_TRAIN_FLAGS, "--dataset", "fashion-mnist", *args)


def test_trains_from_flat_gzipped_files_and_resumes_from_a_torchvision_layout_copy(tmp_path: Path) -> None:
    images, labels = _split()
    flat = write_idx_files(tmp_path / "flat", images, labels)
    first = _train("--data-dir", flat, "--out", tmp_path / "runs", "--name", "fm", "--max-steps", 2)
    assert first.exit_code == 0, first.stderr
    assert f"{N} images" in first.stderr and str(flat) in first.stderr  # says what it read, and from where
    assert not (flat / "FashionMNIST").exists()  # nothing downloaded or created next to the user's files
    # The same content, uncompressed, under a torchvision root (<root>/FashionMNIST/raw): the run continues.
    root = tmp_path / "tvroot"
    write_idx_files(root / "FashionMNIST" / "raw", images, labels, gzipped=False)
    resumed = run_cli("train", "--resume", tmp_path / "runs" / "fm", "--max-steps", 4, "--data-dir", root)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "step 4/4" in resumed.stderr


def test_other_content_does_not_resume(tmp_path: Path) -> None:
    images, labels = _split()
    first = _train(
        "--data-dir", write_idx_files(tmp_path / "a", images, labels), "--out", tmp_path / "runs", "--name", "fm"
    )
    assert first.exit_code == 0, first.stderr
    other_images, _ = _split(seed=1)  # same shape and count, other pixels
    other = write_idx_files(tmp_path / "b", other_images, labels)
    resumed = run_cli("train", "--resume", tmp_path / "runs" / "fm", "--max-steps", 6, "--data-dir", other)
    assert resumed.exit_code == 2
    assert (
        resumed.stderr.strip().splitlines()[-1].startswith("error: --resume")
        and "make the same data available" in resumed.stderr
    )


def test_the_named_folder_of_a_torchvision_root_is_found(tmp_path: Path) -> None:
    # ~/data/FashionMNIST (the folder above raw/) works as well as the root and raw/ itself.
    images, labels = _split()
    write_idx_files(tmp_path / "FashionMNIST" / "raw", images, labels)
    result = _train("--data-dir", tmp_path / "FashionMNIST", "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr


def _bad(tmp_path: Path, damage: str) -> tuple[Path, str]:
    """A flat folder with one damaged file; returns it and the name the error must give."""
    images, labels = _split()
    folder = write_idx_files(tmp_path / damage, images, labels, gzipped=False)
    image_file, label_file = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    if damage == "magic":  # the labels file under the images file's name
        image_file.write_bytes(label_file.read_bytes())
        return folder, image_file.name
    if damage == "truncated":
        image_file.write_bytes(image_file.read_bytes()[:-100])
        return folder, image_file.name
    if damage == "shape":
        image_file.write_bytes(encode_idx(torch.zeros(N, 32, 32, dtype=torch.uint8)))
        return folder, image_file.name
    if damage == "label-range":
        label_file.write_bytes(encode_idx(torch.full((N,), 10, dtype=torch.uint8)))
        return folder, label_file.name
    if damage == "count":
        label_file.write_bytes(encode_idx(labels[: N - 1]))
        return folder, label_file.name
    if damage == "gzip":
        label_file.unlink()
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode_idx(labels))[:-20])
        return folder, "train-labels-idx1-ubyte.gz"
    if damage == "missing-labels":
        label_file.unlink()
        return folder, "train-labels-idx1-ubyte"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["magic", "truncated", "shape", "label-range", "count", "gzip", "missing-labels"])
def test_a_bad_file_is_one_line_naming_it_and_exit_2(tmp_path: Path, damage: str) -> None:
    folder, bad_name = _bad(tmp_path, damage)
    result = _train("--data-dir", folder, "--out", tmp_path / "runs")
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: fashion-mnist: ") and bad_name in lines[-1], lines
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_mnist_refuses_a_folder_named_for_fashion_mnist(tmp_path: Path) -> None:
    # Both sets use the same file names; training "mnist" on clothes would go unnoticed.
    images, labels = _split()
    write_idx_files(tmp_path / "FashionMNIST" / "raw", images, labels)
    raw = tmp_path / "FashionMNIST" / "raw"
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--dataset", "mnist", "--data-dir", raw, "--out", tmp_path / "runs")
    assert result.exit_code == 2 and "looks like FashionMNIST" in result.stderr, result.stderr


def test_a_failed_download_leaves_nothing_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: an empty FashionMNIST/raw tree inside the folder the user gave. The mirror is made
    # unreachable (port 9, discard), so the download fails the same with or without a network.
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    given = tmp_path / "data"
    given.mkdir()
    new = tmp_path / "new" / "sub"  # folders the attempt would create are removed again too
    for data_dir in (given, new):
        result = run_cli(
            "train", "--dataset", "fashion-mnist", "--data-dir", data_dir, "--max-steps", 1, "--out", tmp_path / "runs"
        )
        assert result.exit_code == 2, result.stderr
        assert "could not download fashion-mnist" in result.stderr and "train-images-idx3-ubyte.gz" in result.stderr
    assert list(given.iterdir()) == [] and not (tmp_path / "new").exists()


def test_runs_recorded_as_torchvisions_set_by_earlier_versions_still_match(tmp_path: Path) -> None:
    # Earlier versions recorded 'fashion-mnist|torchvision FashionMNIST train|SHAPE'; such runs must still resume.
    from sagan_cli.data import load_dataset

    images, labels = _split()
    data = load_dataset("fashion-mnist", data_dir=write_idx_files(tmp_path, images, labels), download=False)
    assert data.matches(data.data_id) and data.matches(f"fashion-mnist|torchvision FashionMNIST train|{N}x1x28x28")
    assert not data.matches(f"fashion-mnist|torchvision FashionMNIST train|{N + 1}x1x28x28")
    assert not data.matches(f"mnist|torchvision MNIST train|{N}x1x28x28")
