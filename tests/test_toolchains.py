"""The cross-toolchain check tells a missing compiler from a compiler without its C library
(Debian installs the AArch64 C library only as a *Recommends* of the compiler)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from targets.toolchains import cross_c_missing


def _fake_gcc(bin_dir: Path, name: str, crti: str) -> None:
    """A stand-in compiler (a shell script) whose ``-print-file-name=crti.o`` prints ``crti``."""
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\necho '{crti}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def only_fake_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    cross_c_missing.cache_clear()
    yield tmp_path
    cross_c_missing.cache_clear()


def test_missing_compiler_names_both_packages(only_fake_path):
    why = cross_c_missing("x-fake-linux-gnu-gcc")
    assert why is not None and "not found" in why and "apt-get install" in why


def test_compiler_without_c_library_is_told_apart(only_fake_path):
    # a mock compiler stands in for one whose crti.o is missing (gcc then echoes the bare name)
    _fake_gcc(only_fake_path, "aarch64-linux-gnu-gcc", "crti.o")
    why = cross_c_missing("aarch64-linux-gnu-gcc")
    assert why is not None and "C library" in why and "libc6-dev-arm64-cross" in why
    assert "gcc-aarch64-linux-gnu" not in why  # the compiler is there: only the library is named


def test_compiler_with_c_library_passes(only_fake_path):
    crti = only_fake_path / "crti.o"
    crti.write_bytes(b"")
    _fake_gcc(only_fake_path, "aarch64-linux-gnu-gcc", str(crti))
    assert cross_c_missing("aarch64-linux-gnu-gcc") is None


def test_real_cross_compiler_finds_its_c_library():
    """The real toolchain (installed by .ci/run; under CI=true this never skips)."""
    cross_c_missing.cache_clear()
    why = cross_c_missing("aarch64-linux-gnu-gcc")
    if why:
        pytest.skip(why)
    assert why is None
