"""Process-level runtime settings: the CPU allocator tuning every `sagan` command applies."""

from __future__ import annotations

import platform
import sys

import pytest

from sagan_cli.runtime import tune_cpu_allocator


def test_cpu_allocator_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert tune_cpu_allocator() is True
    monkeypatch.setenv("SAGAN_MALLOC_TUNING", "0")
    assert tune_cpu_allocator() is False


def test_sample_does_not_import_torchvision_or_matplotlib(tiny_checkpoint, tmp_path) -> None:
    # torchvision's import pulls in torch._dynamo: ~1.5 s of every `sagan sample` for nothing.
    # Only dataset loading and torch-fidelity (evaluate, compare) need it; matplotlib only figures.
    import os
    import subprocess

    script = (
        "import sys\nfrom sagan_cli.cli import main\n"
        f"sys.argv = ['sagan', 'sample', {str(tiny_checkpoint)!r}, '-n', '4', '-o', {str(tmp_path / 'g.png')!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "print('torchvision' in sys.modules or 'matplotlib' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g.png").is_file()
    assert result.stderr.strip().splitlines()[-1] == "False", result.stderr
