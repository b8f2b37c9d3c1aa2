"""MCU backend: weight formats, kernels in the emulator against numpy/PyTorch, exact and
repeatable instruction counts, flash bytes, failures as records.

Emulator tests skip with the install command when arm-none-eabi-gcc or qemu-system-arm is missing.
"""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from targets import mcu
from targets.mcu import _toolchain as tc
from targets.mcu import format_bytes, pack, prune_to_format, unpack

NO_TOOLS = mcu.available()
needs_emulator = pytest.mark.skipif(NO_TOOLS is not None, reason=NO_TOOLS or "")


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- formats (host only) ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["dense", "csr", "bitmask", "nm", "block"])
@pytest.mark.parametrize("shape", [(8, 32), (12, 40), (4, 300)])
def test_pack_roundtrip_and_hand_count(fmt: str, shape: tuple[int, int]) -> None:
    w = prune_to_format("linear", _rand(shape), fmt, 0.3)
    wq = np.clip(np.rint(w * 40), -127, 127).astype(np.int8)
    wq[w == 0] = 0
    p = pack(wq, fmt)
    assert np.array_equal(unpack(p), wq)
    rows, cols = shape
    nnz = int(np.count_nonzero(wq))
    kb = p.stats.get("kept_blocks")
    assert p.nbytes == format_bytes(fmt, rows, cols, nnz=nnz, kept_blocks=kb)


def test_hand_counts_by_hand() -> None:
    # 8 x 32 int8, 64 nonzeros, 5 of 16 4x4 blocks kept
    assert format_bytes("dense", 8, 32) == 256
    assert format_bytes("csr", 8, 32, nnz=64) == 64 + 64 * 1 + 9 * 2          # values, u8 cols, u16 ptrs
    assert format_bytes("bitmask", 8, 32, nnz=64) == 64 + 8 * 4               # 256 bits = 8 words
    assert format_bytes("nm", 8, 32) == 128 + 128 * 2 // 8                     # 2:4: half stored, 2 bits each
    assert format_bytes("block", 8, 32, kept_blocks=5) == 5 * 16 + 5 + 3 * 2   # values, u8 col, 3 ptrs
    assert format_bytes("csr", 8, 32, nnz=64, dtype_bytes=4) == 256 + 64 + 18
    assert format_bytes("csr", 2, 300, nnz=10) == 10 + 20 + 6                  # cols > 256: u16 indices


def test_nm_rejects_non_nm_weights() -> None:
    w = np.ones((4, 8), np.int8)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        pack(w, "nm")


def test_prune_to_format_conv_nm_runs_along_input_channels() -> None:
    w = prune_to_format("conv2d", _rand((8, 8, 3, 3)), "nm", 0.5)
    groups = np.moveaxis(w, 1, -1).reshape(8, 3, 3, 2, 4)  # 4 consecutive input channels per tap
    assert ((groups != 0).sum(axis=-1) <= 2).all()


# ---- emulator --------------------------------------------------------------------------------------

CASES = [
    ("linear", (24, 40), (3, 40), {}),
    ("conv2d", (16, 8, 3, 3), (8, 9, 9), {"padding": 1, "stride": 2}),
    ("conv2d", (16, 8, 1, 1), (8, 6, 6), {}),
    ("conv2d", (8, 4, 3, 3), (8, 6, 6), {"padding": 1, "groups": 2}),
    ("conv1d", (16, 8, 5), (8, 20), {"padding": 2}),
    ("dwconv2d", (16, 1, 3, 3), (16, 7, 7), {"padding": 1}),
]


def _fmts(op: str) -> list[str]:
    return ["dense", "csr", "bitmask"] if op == "dwconv2d" else ["dense", "csr", "bitmask", "nm", "block"]


@needs_emulator
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["int8", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_layers_match_reference(case, dtype: str) -> None:
    op, ws, xs, kw = case
    groups = kw.get("groups", 1)
    for fmt in _fmts(op):
        w = prune_to_format(op, _rand(ws, 1), fmt, 0.4, groups=groups)
        m = mcu.measure_layer(op, w, _rand(xs, 2), fmt=fmt, dtype=dtype, bias=_rand(ws[0], 3), **kw)
        assert m.error is None, (fmt, m.error)
        assert m.instructions and m.instructions > 0
        if dtype == "int8":
            assert m.max_abs_err == 0.0, fmt
        else:
            assert m.max_abs_err is not None and m.max_abs_err <= 1e-4, fmt
        assert m.board == ("mps2-an386") and m.cpu == "cortex-m4"
        assert m.versions["gcc"] and m.versions["qemu"] and m.versions["python"]


@needs_emulator
@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m7"])
def test_counts_identical_across_runs(cpu: str) -> None:
    w = prune_to_format("conv2d", _rand((16, 8, 3, 3)), "csr", 0.3)
    a = mcu.measure_layer("conv2d", w, _rand((8, 8, 8)), fmt="csr", cpu=cpu, padding=1)
    b = mcu.measure_layer("conv2d", w, _rand((8, 8, 8)), fmt="csr", cpu=cpu, padding=1)
    assert a.error is None and b.error is None
    assert a.instructions == b.instructions
    assert a.board == tc.CPUS[cpu].board


@needs_emulator
def test_instruction_count_is_exact() -> None:
    """Two CSR rows differ by one kept weight: the count grows by exactly the inner-loop length,
    the same for every extra weight (the harness removes its own overhead exactly)."""
    x = np.arange(1, 33, dtype=np.int8)
    counts = []
    for k in (4, 5, 6, 30):
        w = np.zeros((2, 32), np.int8)
        w[0, :k] = 1
        m = mcu.measure_layer("linear", w, x, fmt="csr")
        assert m.error is None
        counts.append(m.instructions)
    step = counts[1] - counts[0]
    assert counts[2] - counts[1] == step
    assert counts[3] - counts[0] == 26 * step
    assert 4 <= step <= 8  # ldrb/ldrh idx, 2 x ldrsb, mla, loop


@needs_emulator
def test_flash_bytes_equal_hand_counts() -> None:
    rng = np.random.default_rng(0)
    w = (rng.integers(1, 50, (8, 32)) * rng.choice([-1, 1], (8, 32))).astype(np.int8)
    w[:, ::2] = 0                     # 128 nonzeros, every 2:4 group has 2
    blk = w.copy()
    blk.reshape(2, 4, 8, 4)[:, :, 1::2, :] = 0  # 8 of 16 4x4 blocks kept (64 nonzeros)
    x = rng.integers(-20, 20, 32).astype(np.int8)
    expect = {"dense": 256, "csr": 128 + 128 + 9 * 2, "bitmask": 128 + 8 * 4, "nm": 128 + 32,
              "block": 8 * 16 + 8 + 3 * 2}
    for fmt, nbytes in expect.items():
        m = mcu.measure_layer("linear", blk if fmt == "block" else w, x, fmt=fmt)
        assert m.error is None, m.error
        assert m.flash_bytes == nbytes, fmt
        assert m.stats["weight_bytes"] == nbytes


@needs_emulator
def test_measurement_is_fast() -> None:
    w = prune_to_format("linear", _rand((32, 64)), "csr", 0.5)
    mcu.measure_layer("linear", w, _rand(64), fmt="csr")  # kernel objects cached
    m = mcu.measure_layer("linear", w, _rand(64), fmt="csr")
    assert m.error is None
    # ~0.1-0.3 s on 2 idle cores; generous for a loaded CI machine
    assert m.compile_s + m.run_s < 3.0


@needs_emulator
def test_tvm_c_codegen_runs_bare_metal() -> None:
    pytest.importorskip("tvm")
    for op, ws, xs, kw in (CASES[0], CASES[1]):
        m = mcu.measure_layer(op, _rand(ws), _rand(xs), impl="tvm", bias=_rand(ws[0]), **kw)
        assert m.error is None, m.error
        assert m.max_abs_err == 0.0 and m.impl == "tvm"
        own = mcu.measure_layer(op, _rand(ws), _rand(xs), bias=_rand(ws[0]), **kw)
        assert own.instructions < m.instructions  # untuned TVM C is the slower of the two


# ---- failures are records -------------------------------------------------------------------------

@needs_emulator
def test_broken_kernel_is_an_error_record(tmp_path, monkeypatch) -> None:
    kdir = tmp_path / "kernels"
    shutil.copytree(tc.KERNEL_DIR, kdir)
    with open(kdir / "hw_kernels_s8.c", "a") as f:
        f.write("\nthis is not C;\n")
    monkeypatch.setattr(tc, "KERNEL_DIR", kdir)
    monkeypatch.setenv("HWSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    m = mcu.measure_layer("linear", _rand((8, 16)), _rand(16))
    assert m.instructions is None
    assert m.error and "hw_kernels_s8.c" in m.error


@needs_emulator
def test_emulator_timeout_is_an_error_record() -> None:
    m = mcu.measure_layer("linear", _rand((8, 16)), _rand(16), timeout_s=1e-3)
    assert m.instructions is None and "timed out" in (m.error or "")


@needs_emulator
def test_weights_not_fitting_the_format_are_an_error_record() -> None:
    m = mcu.measure_layer("linear", _rand((8, 16)), _rand(16), fmt="nm")
    assert m.error and "not 2:4" in m.error and m.instructions is None
    m = mcu.measure_layer("dwconv2d", _rand((8, 1, 3, 3)), _rand((8, 5, 5)), fmt="block")
    assert m.error and "dwconv2d" in m.error


def test_unknown_names_raise_with_valid_list() -> None:
    with pytest.raises(ValueError, match="valid: dense, csr"):
        mcu.measure_layer("linear", _rand((4, 4)), _rand(4), fmt="coo")
    with pytest.raises(ValueError, match="valid: linear"):
        mcu.measure_layer("conv3d", _rand((4, 4)), _rand(4))
    with pytest.raises(ValueError, match="cortex-m4"):
        mcu.measure_layer("linear", _rand((4, 4)), _rand(4), cpu="cortex-m0")


def test_missing_tools_are_an_error_record(monkeypatch) -> None:
    monkeypatch.setattr(tc, "missing_tools", lambda: ["qemu-system-arm"])
    m = mcu.measure_layer("linear", _rand((4, 4)), _rand(4))
    assert m.error and "apt-get install" in m.error and not math.isnan(m.density)
