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
