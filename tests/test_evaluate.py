"""`sagan evaluate` and the metrics library: sanity of the numbers, gates, JSON, offline Inception, cache keys."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from eval_support import isolate_caches, untrained_checkpoint

from sagan_cli.data import load_dataset
from sagan_cli.errors import UsageError
from sagan_cli.extractors import INCEPTION_WEIGHTS_FILE, resolve_extractor
from sagan_cli.metrics import (
    KEY_FID,
    KEY_ISC_MEAN,
    KEY_KID_MEAN,
    ImageTensorDataset,
    compute_metrics,
    reference_cache_name,
    reference_subset,
)

N = 100  # samples per evaluation in these tests: enough for the assertions, fast on 2 busy cores


@pytest.fixture(autouse=True)
def _caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_caches(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def digits_reference() -> torch.Tensor:
    return reference_subset(load_dataset("mnist", download=False).images, N)  # bundled digits, uint8 (N, 1, 28, 28)


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state_dict of a randomly initialised torch-fidelity Inception (built without any download)."""
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE
    original_load = inception.FeatureExtractorInceptionV3.load_state_dict
    original_url = inception.load_state_dict_from_url
    inception.FeatureExtractorInceptionV3.load_state_dict = lambda self, state, *a, **k: None  # keep random init
    inception.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        model = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        inception.FeatureExtractorInceptionV3.load_state_dict = original_load
        inception.load_state_dict_from_url = original_url
    torch.save(model.state_dict(), path)
    return path


def test_fid_of_reference_against_itself_is_zero_and_noise_is_far(
    digits_reference: torch.Tensor, tmp_path: Path
) -> None:
    extractor = resolve_extractor("auto", 1, 28)
    assert extractor.name == "digits"
    reference = ImageTensorDataset(digits_reference)
    cached = {"reference_cache": reference_cache_name("test|digits", N, extractor), "cache_folder": tmp_path}
    same = compute_metrics(reference, N, reference, {"fid", "kid", "isc"}, extractor, seed=0, batch_size=100, **cached)
    assert 0 <= same[KEY_FID] < 1e-3
    noise = torch.randint(0, 256, digits_reference.shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    far = compute_metrics(
        ImageTensorDataset(noise), N, reference, {"fid", "isc", "kid"}, extractor, seed=0, batch_size=100, **cached
    )
    assert far[KEY_FID] > 100
    # Unbiased KID of a set against itself is slightly negative (the cross term keeps k(x, x)): near 0 at this scale.
    assert abs(same[KEY_KID_MEAN]) < 0.01 * far[KEY_KID_MEAN]
    assert same[KEY_ISC_MEAN] > 5 > far[KEY_ISC_MEAN]  # real digits are confidently and evenly classified


def test_metrics_leave_the_global_rng_alone(digits_reference: torch.Tensor) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    few = ImageTensorDataset(digits_reference[:20])
    compute_metrics(few, 20, few, {"kid", "isc"}, resolve_extractor("digits", 1, 28), seed=5, batch_size=20)
    assert torch.equal(before, torch.random.get_rng_state())


def test_evaluate_json_schema_and_stdout_is_pure_json(tiny_checkpoint: Path, _caches: Path) -> None:
    result = run_cli("evaluate", tiny_checkpoint, "-n", N, "--seed", 3, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)  # nothing but the JSON object on stdout
    assert payload["schema"] == "sagan.evaluate/1"
    assert set(payload["metrics"]) == {
        "frechet_inception_distance",
        "inception_score_mean",
        "inception_score_std",
        "kernel_inception_distance_mean",
        "kernel_inception_distance_std",
    }
    assert payload["extractor"]["name"] == "digits" and payload["extractor"]["fidelity_name"] == "sagan-digits"
    assert len(payload["extractor"]["weights_sha256"]) == 64
    assert payload["num_samples"] == N and payload["seed"] == 3
    assert payload["reference"] == {"id": "mnist|bundled MNIST test digits|10000x1x28x28", "num_images": N}
    assert payload["checkpoint"]["path"] == str(tiny_checkpoint) and len(payload["checkpoint"]["sha256"]) == 64
    assert {"sagan", "torch", "torch_fidelity"} <= set(payload["versions"])
    assert payload["gates"] == {"checked": [], "failed": []}
    assert "digits" in result.stderr and "FID" in result.stderr  # the human table names the extractor
    assert any(_caches.iterdir()), "reference features were not cached"


def test_the_table_shows_no_spread_where_there_is_none(tiny_checkpoint: Path, _caches: Path) -> None:
    # With n <= 1,000 every KID subset is the whole set, so its std is 0: "± 0.00000" read as precision.
    result = run_cli("evaluate", tiny_checkpoint, "-n", N, "--kid", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["metrics"]["kernel_inception_distance_std"] < 5e-6  # no spread to show
    kid = next(line for line in result.stderr.splitlines() if " KID " in line)
    assert "±" not in kid, kid


def test_gates_exit_3_and_name_the_failed_gate(tiny_checkpoint: Path, _caches: Path) -> None:
    passing = run_cli("evaluate", tiny_checkpoint, "-n", N, "--fid", "--max-fid", "1e9", "--no-cache")
    assert passing.exit_code == 0, passing.stderr
    assert not _caches.exists() or not any(_caches.iterdir()), "--no-cache wrote to the cache"
    failing = run_cli(
        "evaluate", tiny_checkpoint, "-n", N, "--max-fid", "0.001", "--min-isc", "1", "--no-cache", "--json"
    )
    assert failing.exit_code == 3, failing.stderr
    assert "--max-fid" in failing.stderr and "--min-isc" not in failing.stderr.splitlines()[-1]
    payload = json.loads(failing.stdout)
    assert payload["gates"]["checked"] == ["--max-fid", "--min-isc"] and len(payload["gates"]["failed"]) == 1
    assert set(payload["metrics"]) == {"frechet_inception_distance", "inception_score_mean", "inception_score_std"}
    assert "Traceback" not in failing.stderr


def test_no_checkpoint_anywhere_is_one_line(tmp_path: Path) -> None:
    result = run_cli("evaluate", "--fid", "--runs", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "no checkpoint" in result.stderr


def test_without_ckpt_uses_the_latest_run(tiny_checkpoint: Path) -> None:
    result = run_cli(
        "evaluate", "--fid", "-n", N, "--runs", tiny_checkpoint.parent.parent.parent, "--json", "--no-cache"
    )
    assert result.exit_code == 0, result.stderr
    assert Path(json.loads(result.stdout)["checkpoint"]["path"]).parent == tiny_checkpoint.parent


def test_offline_inception_without_weights_fails_fast_in_one_line(tiny_checkpoint: Path) -> None:
    began = time.perf_counter()
    result = run_cli("evaluate", tiny_checkpoint, "--extractor", "inception", "-n", N)
    assert time.perf_counter() - began < 30
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert INCEPTION_WEIGHTS_FILE in message and "--inception-weights" in message and "--extractor digits" in message


def test_auto_extractor_choice(tmp_path: Path, random_inception_weights: Path) -> None:
    assert resolve_extractor("auto", 1, 28).name == "digits"  # no Inception weights in the isolated TORCH_HOME
    with pytest.raises(UsageError, match="Inception weights not found"):
        resolve_extractor("auto", 3, 32)
    with pytest.raises(UsageError, match="only scores 1-channel"):
        resolve_extractor("digits", 3, 32)
    assert resolve_extractor("auto", 1, 64).name == "digits"  # grey models of any size: resized to 28x28
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    (hub / INCEPTION_WEIGHTS_FILE).symlink_to(random_inception_weights)
    assert resolve_extractor("auto", 1, 28).name == "inception"


def test_grey_model_at_32px_is_scored_with_digits_offline(tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = untrained_checkpoint(tmp_path_factory, "mnist32", image_size=32)
    result = run_cli("evaluate", checkpoint, "--fid", "-n", N, "--no-cache", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["extractor"]["name"] == "digits"
    assert payload["reference"]["id"].endswith("x1x32x32")  # the reference is resized like the samples
    assert payload["metrics"][KEY_FID] > 50  # untrained: far from digits


def test_random_inception_state_dict_loads_via_flag(tiny_checkpoint: Path, random_inception_weights: Path) -> None:
    result = run_cli(
        "evaluate",
        tiny_checkpoint,
        "--isc",
        "-n",
        2,
        "--batch-size",
        2,
        "--no-cache",
        "--json",
        "--extractor",
        "inception",
        "--inception-weights",
        random_inception_weights,
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (
        payload["extractor"]["name"] == "inception" and payload["extractor"]["fidelity_name"] == "inception-v3-compat"
    )
    assert payload["metrics"]["inception_score_mean"] == pytest.approx(
        1.0, abs=0.5
    )  # random weights: meaningless but finite


def test_non_state_dict_inception_file_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pth"
    torch.save({"not": torch.zeros(1)}, bogus)
    result = run_cli("evaluate", tiny_checkpoint, "--extractor", "inception", "--inception-weights", bogus)
    assert result.exit_code == 2 and "not an inception-v3-compat state_dict" in result.stderr


def test_cache_name_holds_data_count_and_weights() -> None:
    digits = resolve_extractor("digits", 1, 28)
    base = reference_cache_name("mnist|bundled|10000x1x28x28", 1000, digits)
    assert base != reference_cache_name("mnist|bundled|10000x1x28x28", 2000, digits)
    assert base != reference_cache_name("mnist|torchvision|60000x1x28x28", 1000, digits)
    other_weights = type(digits)(digits.name, digits.fidelity_name, digits.weights_path, "0" * 64)
    assert base != reference_cache_name("mnist|bundled|10000x1x28x28", 1000, other_weights)
    assert "/" not in reference_cache_name("./my/images|image folder (5 images)|5x1x28x28", 5, digits)


def test_cache_files_follow_sample_count(tiny_checkpoint: Path, _caches: Path) -> None:
    for n in (60, 70):
        assert run_cli("evaluate", tiny_checkpoint, "--fid", "-n", n).exit_code == 0
    names = {p.name for p in _caches.iterdir()}
    assert any("-n60-" in name for name in names) and any("-n70-" in name for name in names)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-n", "1"], "--num-samples"),
        (["--extractor", "clip"], "unknown extractor"),
        (["--truncation", "0"], "--truncation"),
        (["--ref", "no/such/folder"], "not found"),
    ],
)
def test_bad_input_is_a_usage_error(tiny_checkpoint: Path, args: list[str], fragment: str) -> None:
    result = run_cli("evaluate", tiny_checkpoint, "--fid", "--no-cache", *args)
    assert result.exit_code == 2 and fragment in result.stderr and "Traceback" not in result.stderr


def test_explicit_inception_weights_that_do_not_exist_are_an_error_not_digits(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # Was: with --extractor auto the missing file was ignored and the digits extractor scored (exit 0).
    missing = tmp_path / "no-such-weights.pth"
    with pytest.raises(UsageError, match="Inception weights not found"):
        resolve_extractor("auto", 1, 28, missing)
    result = run_cli("evaluate", tiny_checkpoint, "--fid", "-n", N, "--no-cache", "--inception-weights", missing)
    assert result.exit_code == 2, result.stderr
    assert (
        "Inception weights not found" in result.stderr
        and str(missing) in result.stderr
        and "Traceback" not in result.stderr
    )


def _checkpoint_trained_on(tmp_path: Path, dataset: str) -> Path:
    """A tiny untrained checkpoint whose metadata says it was trained on `dataset`."""
    from sagan_cli.checkpoint import save_checkpoint
    from sagan_cli.config import TrainConfig
    from sagan_cli.model import Generator, ModelConfig

    config = TrainConfig(dataset=dataset, download=False, model=ModelConfig(g_width=8, d_width=8, z_dim=16))
    torch.manual_seed(0)
    generator = Generator(config.model).eval()
    path = tmp_path / f"{Path(dataset).name}.safetensors"
    save_checkpoint(
        path,
        train_config=config,
        step=1,
        train_seconds=1.0,
        generator=generator,
        generator_ema=copy.deepcopy(generator),
    )
    return path


def test_inception_score_alone_needs_no_reference_data(tmp_path: Path) -> None:
    # Was: --isc still loaded the training data, so a checkpoint trained elsewhere could not get an IS.
    checkpoint = _checkpoint_trained_on(tmp_path, str(tmp_path / "gone" / "my-digits"))
    result = run_cli("evaluate", checkpoint, "--isc", "-n", 60, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["reference"] is None
    assert set(payload["metrics"]) == {"inception_score_mean", "inception_score_std"}
    assert "IS needs no reference" in result.stderr
    fid = run_cli("evaluate", checkpoint, "--fid", "-n", 60)
    assert fid.exit_code == 2 and "dataset folder not found" in fid.stderr  # FID still needs it, and says so
    with_ref = run_cli("evaluate", checkpoint, "--isc", "-n", 60, "--ref", "mnist")
    assert with_ref.exit_code == 2 and "drop --ref" in with_ref.stderr  # --ref would be silently unused


def test_digits_scores_of_a_model_that_is_not_of_digits_come_with_a_warning(tmp_path: Path) -> None:
    # `auto` picks the digit classifier for every grey model offline; on fashion-mnist its IS counts
    # digit classes. The scores are still given (they rank models), with a warning saying what they are.
    checkpoint = _checkpoint_trained_on(tmp_path, "fashion-mnist")
    result = run_cli("evaluate", checkpoint, "--isc", "-n", 60, "--json")
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "fashion-mnist is not MNIST" in warning[0] and "--inception-weights" in warning[0]
    mnist = run_cli("evaluate", _checkpoint_trained_on(tmp_path, "mnist"), "--isc", "-n", 60, "--json")
    assert mnist.exit_code == 0 and "warning:" not in mnist.stderr


def test_reference_of_one_image_is_refused_before_scoring(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # Was: numpy warnings, then "torch-fidelity refused the inputs ... infs or NaNs", exit 1.
    from PIL import Image

    folder = tmp_path / "one"
    folder.mkdir()
    Image.new("L", (28, 28), color=128).save(folder / "only.png")
    for metric in ("--fid", "--kid"):
        result = run_cli("evaluate", tiny_checkpoint, metric, "-n", N, "--no-cache", "--ref", folder)
        assert result.exit_code == 2, result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("error: ") and "has 1 image" in message and "at least 2" in message
        assert "Traceback" not in result.stderr and "NaN" not in result.stderr


def test_nan_fid_is_not_clamped_into_a_perfect_score() -> None:
    # Was: max(0.0, nan) == 0.0, a perfect FID that passed --max-fid.
    from sagan_cli.metrics import clamp_round_off, failed_gates, make_gates

    assert clamp_round_off(-1e-9) == 0.0 and clamp_round_off(3.5) == 3.5  # round-off below zero is still clamped
    assert math.isnan(clamp_round_off(float("nan"))) and clamp_round_off(float("inf")) == float("inf")
    assert failed_gates(make_gates({"fid": 40.0}), {KEY_FID: clamp_round_off(float("nan"))})
    # ... and infinities fail too: -inf passed --max-fid, +inf passed --min-isc.
    assert failed_gates(make_gates({"fid": 40.0}), {KEY_FID: float("-inf")})
    assert failed_gates(make_gates({"isc": 2.0}), {KEY_ISC_MEAN: float("inf")})


class _Poison:
    """Unpickling this creates `marker`: what a planted cache file could do to torch.load(weights_only=False)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_poisoned_or_truncated_cache_files_are_deleted_not_unpickled(
    tiny_checkpoint: Path, _caches: Path, tmp_path: Path
) -> None:
    import pickle

    args = (
        "evaluate",
        tiny_checkpoint,
        "-n",
        60,
        "--json",
    )  # all three metrics: features and FID statistics are cached
    first = run_cli(*args)
    assert first.exit_code == 0, first.stderr
    entries = sorted(_caches.iterdir())
    assert len(entries) == 3 and any("-stat-fid-" in p.name for p in entries), [p.name for p in entries]
    marker = tmp_path / "pwned"
    torch.save(_Poison(marker), entries[0])  # a zip like torch-fidelity's own, holding a code-running pickle
    entries[1].write_bytes(pickle.dumps(_Poison(marker)))  # a bare pickle (torch.load's legacy format)
    entries[2].write_bytes(entries[2].read_bytes()[:64])  # truncated
    second = run_cli(*args)
    assert second.exit_code == 0, second.stderr
    assert not marker.exists(), "a cache file was unpickled with code execution"
    notices = [line for line in second.stderr.splitlines() if "cache file" in line]
    for entry in entries:
        assert any(entry.name in line for line in notices), (entry.name, notices)
        assert entry.exists()  # recomputed and cached again
    assert json.loads(second.stdout)["metrics"] == json.loads(first.stdout)["metrics"]


def test_only_torch_fidelitys_own_errors_are_called_refused(
    digits_reference: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was: every ValueError, even one raised by our own extractor, read "torch-fidelity refused the inputs".
    # And telling them apart imported scipy, which is no dependency: a fresh venv got ModuleNotFoundError.
    import sys

    from torch.utils.data import Dataset

    monkeypatch.setitem(sys.modules, "scipy", None)  # `import scipy` fails here as on a machine without it

    from sagan_cli.errors import SaganError

    class ArrayImages(Dataset):  # torch-fidelity's own check (a vassert) refuses anything but tensors
        def __len__(self) -> int:
            return 20

        def __getitem__(self, index: int):
            return digits_reference[index].expand(3, -1, -1).numpy()

    class FloatImages(ArrayImages):  # passes torch-fidelity; our digits extractor raises on float pixels
        def __getitem__(self, index: int):
            return digits_reference[index].expand(3, -1, -1).float()

    digits = resolve_extractor("digits", 1, 28)
    with pytest.raises(SaganError, match="torch-fidelity refused the inputs: Input Dataset should return torch.Tensor"):
        compute_metrics(ArrayImages(), 20, None, {"isc"}, digits, seed=0, batch_size=20)
    with pytest.raises(ValueError, match="expected uint8 images"):
        compute_metrics(FloatImages(), 20, None, {"isc"}, digits, seed=0, batch_size=20)
