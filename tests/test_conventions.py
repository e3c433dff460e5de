"""The conventions ML users expect: --config files, --print-config, shell completion, --tensorboard."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, run_cli
from eval_support import isolate_caches
from safetensors.torch import load_file
from typer.testing import CliRunner

from sagan_cli.cli import app
from sagan_cli.config import TrainConfig
from sagan_cli.errors import EXIT_USAGE

REPO = Path(__file__).resolve().parent.parent
TINY_TOML = """\
max_steps = 4
batch_size = 8
download = false
log_every = 2
sample_every = 2
save_every = 2
lr_d = 3e-4

[model]
g_width = 8
d_width = 8
z_dim = 16
"""


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = load_file(str(first)), load_file(str(second))
    assert sorted(a) == sorted(b)
    assert [name for name in a if not torch.equal(a[name], b[name])] == []


# --- --config and --print-config -------------------------------------------------------------


def test_a_saved_config_json_fed_back_reproduces_the_run(tiny_run: Path, tmp_path: Path) -> None:
    result = run_cli("train", "--config", tiny_run / "config.json", "--out", tmp_path, "--name", "again")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "again" / "config.json").read_text() == (tiny_run / "config.json").read_text()
    final = Path("checkpoints") / "final.safetensors"
    assert_same_weights(tiny_run / final, tmp_path / "again" / final)


def test_print_config_resolves_a_toml_file_under_the_flags_and_creates_nothing(tmp_path: Path) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text(TINY_TOML)
    result = run_cli("train", "--config", config_file, "--max-steps", "7", "--print-config", "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    config = TrainConfig.from_dict(printed)  # the format of config.json: it reads back
    assert config.max_steps == 7  # the flag wins over the file
    assert (config.lr_d, config.batch_size, config.model.g_width, config.model.z_dim) == (
        3e-4,
        8,
        8,
        16,
    )  # from the file
    assert config.lr_g == TrainConfig().lr_g  # neither: the default
    assert not (tmp_path / "runs").exists()


def test_the_shipped_example_config_is_valid() -> None:
    result = run_cli("train", "--config", REPO / "examples" / "run.toml", "--print-config")
    assert result.exit_code == 0, result.stderr
    config = TrainConfig.from_dict(json.loads(result.stdout))
    assert config.eval_every > 0


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("lr = 0.1\n", ".toml", "unknown key 'lr'"),
        ("[model]\nwidth = 8\n", ".toml", "unknown key 'model.width'"),
        ('{"max_steps": "many"}', ".json", "config key 'max_steps' has the wrong type: 'many'"),
        ("model = 3\n", ".toml", "key 'model' must be a table"),
        ("max_steps = \n", ".toml", "is not valid TOML"),
        ("max_steps: 3\n", ".yaml", "use a .toml or .json file"),
        ("max_steps = 0\n", ".toml", "--max-steps must be at least 1, got 0"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_problem(text: str, suffix: str, message: str, tmp_path: Path) -> None:
    config_file = tmp_path / f"run{suffix}"
    config_file.write_text(text)
    result = run_cli("train", "--config", config_file, "--out", tmp_path / "runs")
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli("train", "--config", tmp_path / "nope.toml")
    assert result.exit_code == EXIT_USAGE and "--config" in result.stderr and "no such file" in result.stderr


def test_config_with_resume_counts_as_flags(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    # The run's own config.json with a larger max_steps: every other key agrees with the run.
    config = json.loads((run / "config.json").read_text())
    config["max_steps"] = 6
    (tmp_path / "more.json").write_text(json.dumps(config))
    printed = run_cli("train", "--resume", run, "--config", tmp_path / "more.json", "--print-config")
    assert printed.exit_code == 0, printed.stderr
    assert json.loads(printed.stdout)["max_steps"] == 6
    # A key that would change what is trained is refused, as the same flag would be.
    config["lr_g"] = 0.5
    (tmp_path / "other.json").write_text(json.dumps(config))
    refused = run_cli("train", "--resume", run, "--config", tmp_path / "other.json")
    assert refused.exit_code == EXIT_USAGE and "lr_g: run has" in refused.stderr


# --- shell completion ------------------------------------------------------------------------


def test_show_completion_prints_a_script_for_the_sagan_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # Typer finds the user's shell by walking the process tree (shellingham); under a CI runner or a
    # detached process there may be no shell above pytest, so the test names the one it asks for.
    import shellingham

    monkeypatch.setattr(shellingham, "detect_shell", lambda *args, **kwargs: ("bash", "/bin/bash"))
    result = run_cli("--show-completion")
    assert result.exit_code == 0
    assert "_SAGAN_COMPLETE=complete_bash" in result.stdout and "complete " in result.stdout


def test_completion_completes_commands_and_train_flags() -> None:
    # What the installed script does: the shell sets these variables and runs `sagan`.
    def complete(words: str) -> list[str]:
        env = {"_SAGAN_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        result = CliRunner().invoke(app, [], env=env)
        assert result.exit_code == 0, result.stderr
        return result.stdout.split()

    assert complete("sagan tr") == ["train"]
    assert complete("sagan train --eval") == ["--eval-every", "--eval-samples"]


# --- --tensorboard ---------------------------------------------------------------------------


def test_tensorboard_writes_the_scalars_and_preview_grids(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    isolate_caches(monkeypatch, tmp_path)
    flags = [
        *TINY_TRAIN_FLAGS,
        "--tensorboard",
        "--eval-every",
        "2",
        "--eval-samples",
        "40",
        "--out",
        tmp_path,
        "--name",
        "tb",
    ]
    result = run_cli("train", *flags)
    assert result.exit_code == 0, result.stderr
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    expected = {
        "loss/d",
        "loss/g",
        "d_score/real",
        "d_score/fake",
        "gamma/g14",
        "gamma/d14",
        "speed/images_per_second",
        "eval/fid",
        "eval/isc",
        "eval/seconds",
    }
    assert expected <= set(tags["scalars"])
    assert [event.step for event in events.Scalars("loss/d")] == [2, 4]
    fids = [
        json.loads(line)["fid"]
        for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()
        if "fid" in line
    ]
    assert [round(event.value, 3) for event in events.Scalars("eval/fid")] == [round(f, 3) for f in fids]
    assert tags["images"] == ["samples"]
    assert [event.step for event in events.Images("samples")] == [2, 4]


def test_tensorboard_missing_is_one_line_with_the_install_command_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What an environment without the package looks like to `import`: None in sys.modules raises ImportError.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    result = run_cli("train", *TINY_TRAIN_FLAGS, "--tensorboard", "--out", tmp_path, "--name", "x")
    assert result.exit_code == EXIT_USAGE
    assert result.stderr.count("\n") == 1
    assert 'pip install "sagan-cli[tensorboard]"' in result.stderr
    assert not (tmp_path / "x").exists()


def test_train_help_names_the_tensorboard_extra() -> None:
    # Rich markup would eat an unescaped "[tensorboard]" and leave `pip install "sagan-cli"`.
    result = run_cli("train", "--help")
    assert result.exit_code == 0 and "sagan-cli[tensorboard]" in result.stdout.replace("│", "").replace(" ", "")
