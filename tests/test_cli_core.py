"""Train -> checkpoint -> sample through the real CLI, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, run_cli
from PIL import Image
from safetensors import safe_open
from torchvision.transforms.v2.functional import pil_to_tensor

from sagan_cli.checkpoint import load_generator, read_checkpoint_info
from sagan_cli.data import find_images, load_folder


def test_train_writes_a_complete_run(tiny_run: Path, tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["dataset"] == "mnist" and config["model"]["attention"] is True
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert {"loss_d", "loss_g", "gamma_g14", "gamma_d14", "images_per_second"} <= set(records[0])
    assert sorted(p.name for p in (tiny_run / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
    assert Image.open(tiny_run / "samples" / "step_000004.png").text["seed"] == "0"
    names = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert names == ["final.safetensors", "step_000002.safetensors"]
    info = read_checkpoint_info(tiny_checkpoint)
    assert (info.step, info.seed, info.dataset, info.has_ema, info.has_training_state) == (4, 0, "mnist", True, True)
    assert info.metadata["data_source"] == "bundled MNIST test digits"
    assert json.loads(info.metadata["versions"])["torch"] == torch.__version__


def test_checkpoint_generator_loads_from_the_file_alone(tiny_checkpoint: Path) -> None:
    generator, info = load_generator(tiny_checkpoint)
    assert info.model.image_size == 28 and info.model.g_width == 8
    with safe_open(str(tiny_checkpoint), "pt") as handle:
        keys = list(handle.keys())
    assert any(k.startswith("generator_ema.") for k in keys) and any(k.startswith("optimizer_d.") for k in keys)
    with torch.no_grad():
        assert generator(torch.zeros(1, 16)).shape == (1, 1, 28, 28)


def test_sample_grid_stdout_is_the_path_and_same_seed_same_pixels(tiny_checkpoint: Path, tmp_path: Path) -> None:
    first, second, other = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    result = run_cli("sample", tiny_checkpoint, "-n", "10", "-o", first, "--nrow", "5", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(first)
    run_cli("sample", tiny_checkpoint, "-n", "10", "-o", second, "--nrow", "5", "--seed", "3")
    run_cli("sample", tiny_checkpoint, "-n", "10", "-o", other, "--nrow", "5", "--seed", "4")
    image = Image.open(first)
    assert image.size == (5 * 30 + 2, 2 * 30 + 2) and image.mode == "L"
    assert image.text["seed"] == "3" and image.text["weights"] == "ema"
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_sample_folder_writes_single_images_matching_the_grid(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    result = run_cli("sample", tiny_checkpoint, "-n", "3", "-o", f"{folder}/", "--seed", "5")
    assert result.exit_code == 0, result.stderr
    files = sorted(folder.iterdir())
    assert [p.name for p in files] == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    grid = tmp_path / "one.png"
    run_cli("sample", tiny_checkpoint, "-n", "1", "-o", grid, "--seed", "5")
    single = pil_to_tensor(Image.open(files[0]))
    from_grid = pil_to_tensor(Image.open(grid).crop((2, 2, 30, 30)))
    assert torch.equal(single, from_grid)  # image 0 of -n 3 equals the image of -n 1


def test_no_ema_and_truncation_change_the_images(tiny_checkpoint: Path, tmp_path: Path) -> None:
    outputs = {}
    for name, flags in {"ema": [], "raw": ["--no-ema"], "trunc": ["--truncation", "0.5"]}.items():
        path = tmp_path / f"{name}.png"
        assert run_cli("sample", tiny_checkpoint, "-n", "4", "-o", path, *flags).exit_code == 0
        outputs[name] = path.read_bytes()
    assert len(set(outputs.values())) == 3


def test_labelled_data_trains_class_conditional_by_default_and_samples_by_class(tmp_path: Path) -> None:
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--out", tmp_path, "--name", "cond")  # no --conditional needed
    assert result.exit_code == 0, result.stderr
    checkpoint = Path(result.stdout.strip())
    assert read_checkpoint_info(checkpoint).model.num_classes == 10
    assert "--no-conditional" in run_cli("train", "--help").stdout
    seven, three = tmp_path / "7.png", tmp_path / "3.png"
    assert run_cli("sample", checkpoint, "-n", "4", "--class", "7", "-o", seven).exit_code == 0
    assert run_cli("sample", checkpoint, "-n", "4", "--class", "3", "-o", three).exit_code == 0
    assert Image.open(seven).text["class"] == "7"
    assert seven.read_bytes() != three.read_bytes()
    # Without --class every image gets its own class, drawn uniformly from the seed's label stream.
    from sagan_cli.model import ModelConfig
    from sagan_cli.sampling import sample_labels

    labels = sample_labels(10000, ModelConfig(num_classes=10), seed=0)
    assert labels is not None and torch.bincount(labels, minlength=10).min() > 900


def test_no_conditional_trains_on_clusters_of_the_images_not_their_labels(tmp_path: Path) -> None:
    flags = [*TINY_TRAIN_FLAGS, "--max-steps", "1", "--no-conditional", "--out", tmp_path]
    result = run_cli("train", *flags, "--name", "u")
    assert result.exit_code == 0, result.stderr
    assert "clustered 10000 images into 30 clusters" in result.stderr
    model = read_checkpoint_info(Path(result.stdout.strip())).model
    assert model.num_classes == 30 and sum(model.class_weights) == 10000
    plain = run_cli("train", *flags, "--clusters", "0", "--name", "plain")
    assert plain.exit_code == 0, plain.stderr
    assert read_checkpoint_info(Path(plain.stdout.strip())).model.num_classes == 0


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    paths = []
    for name in ("one", "two"):
        result = run_cli("train", *TINY_TRAIN_FLAGS, "--no-attention", "--seed", "7", "--out", tmp_path, "--name", name)
        assert result.exit_code == 0, result.stderr
        paths.append(Path(result.stdout.strip()))
    with safe_open(str(paths[0]), "pt") as a, safe_open(str(paths[1]), "pt") as b:
        assert list(a.keys()) == list(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


def test_default_run_names_do_not_clobber(tmp_path: Path) -> None:
    for expected in ("mnist-noattn", "mnist-noattn-2"):
        result = run_cli("train", *TINY_TRAIN_FLAGS, "--max-steps", "1", "--no-attention", "--out", tmp_path)
        assert result.exit_code == 0, result.stderr
        assert Path(result.stdout.strip()).parts[-3] == expected


def _write_mixed_folder(folder: Path) -> None:
    (folder / "nested" / "deeper").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "red.jpg")
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(folder / "nested" / "half_blue.png")
    Image.new("L", (64, 64), 200).save(folder / "nested" / "gray.bmp")
    Image.new("P", (33, 17)).save(folder / "nested" / "deeper" / "palette.gif")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(folder / "nested" / "deeper" / "cmyk.jpg")
    Image.new("I;16", (28, 28), 30000).save(folder / "wide.png")
    Image.new("RGB", (50, 50), (0, 255, 0)).save(folder / "green.webp")
    (folder / "notes.txt").write_text("not an image")


def test_image_folder_with_mixed_modes_and_sizes(tmp_path: Path) -> None:
    _write_mixed_folder(tmp_path)
    messages: list[str] = []
    rgb = load_folder(tmp_path, channels=3, image_size=32, log=messages.append)
    assert rgb.images.shape == (7, 3, 32, 32) and rgb.images.dtype == torch.uint8
    assert not messages
    gray = load_folder(tmp_path, channels=1, image_size=28, log=messages.append)
    assert gray.images.shape == (7, 1, 28, 28)
    red = rgb.images[[p.name for p in find_images(tmp_path)].index("red.jpg")].float()
    assert red[0].mean() > 240 and red[1:].mean() < 15  # still red after resize and crop


def test_resizing_a_set_in_chunks_gives_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    import sagan_cli.data

    images = torch.randint(0, 256, (50, 3, 40, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = sagan_cli.data.resize_images(images, 1, 28)
    monkeypatch.setattr(sagan_cli.data, "RESIZE_CHUNK", 7)
    assert torch.equal(sagan_cli.data.resize_images(images, 1, 28), whole)
    assert whole.shape == (50, 1, 28, 28) and whole.dtype == torch.uint8


def test_16_bit_and_transparent_images_keep_their_tones(tmp_path: Path) -> None:
    # Was: a 16-bit grey ramp loaded almost all white (convert("L") clips at 255), and a transparent
    # image was black at 1 channel but white at 3.
    ramp = torch.linspace(0, 65535, 64 * 64).reshape(64, 64).to(torch.int32).numpy().astype("uint16")
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    Image.new("RGBA", (28, 28), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    names = [p.name for p in find_images(tmp_path)]
    for channels in (1, 3):
        images = load_folder(tmp_path, channels=channels, image_size=28, log=lambda m: None).images.float()
        ramp_loaded, clear = images[names.index("ramp16.png")], images[names.index("clear.png")]
        assert abs(ramp_loaded.mean().item() - 127.5) < 3 and ramp_loaded.min() < 10 and ramp_loaded.max() > 245
        assert clear.min().item() == 255  # transparent is white at either channel count


def test_train_on_an_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(10):
        Image.new("RGB", (48 + i, 40), (i * 20, 100, 255 - i * 20)).save(folder / f"img{i}.png")
    result = run_cli(
        "train",
        *TINY_TRAIN_FLAGS,
        "--dataset",
        folder,
        "--image-size",
        "32",
        "--out",
        tmp_path / "runs",
        "--name",
        "pics",
    )
    assert result.exit_code == 0, result.stderr
    info = read_checkpoint_info(Path(result.stdout.strip()))
    assert (info.model.image_size, info.model.channels, info.model.attn_resolutions) == (32, 3, (16,))
    assert info.model.num_classes == 0  # a folder has no labels: unconditional by default, without error
    # D sees translated images by default on a folder (a small set it would memorise), and not on MNIST.
    assert info.train is not None and info.train.augment == "translation"
    opted_out = run_cli("train", "--dataset", folder, "--image-size", "32", "--augment", "none", "--print-config")
    assert json.loads(opted_out.stdout)["augment"] == "none"
    assert json.loads(run_cli("train", "--dataset", "mnist", "--print-config").stdout)["augment"] == "none"


def test_help_version_and_module_entry_point() -> None:
    for command in ("train", "sample", "interpolate", "evaluate", "compare"):
        result = run_cli(command, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout, command
    assert run_cli("--version").stdout.strip().startswith("sagan ")
    no_args = run_cli()
    assert "train" in no_args.stdout and "sample" in no_args.stdout
    module = subprocess.run([sys.executable, "-m", "sagan_cli", "--version"], capture_output=True, text=True)
    assert module.returncode == 0 and module.stdout.startswith("sagan ")
