"""Target specs: every shipped spec loads and cites every figure; bad files fail with one line."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from costmodels import registry
from costmodels.analytical import RooflineModel
from hwsearch.core.errors import SpecError
from targets.spec import SCHEMA_VERSION, SPEC_DIR, get_target, list_targets, load_spec

SHIPPED = sorted(SPEC_DIR.glob("*.toml"))
GPUS = ("nvidia-a100", "nvidia-h100", "nvidia-h200")

GOOD = """
schema_version = 1
name = "tmp-target"
version = "1"
kind = "cpu"
[compute]
clock_hz = { value = 1.0e9, source = "a datasheet" }
[memory]
dram_bandwidth_Bps = { value = 1.0e10, source = "a datasheet" }
[measure]
backend = "none"
"""


def _numeric_leaves(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every number in a TOML tree with its dotted path, except inside {value, source} figures."""
    if isinstance(node, dict):
        if "value" in node:
            return []
        return [leaf for k, v in node.items() for leaf in _numeric_leaves(v, f"{path}.{k}" if path else k)]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _numeric_leaves(v, f"{path}[{i}]")]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return [(path, node)]
    return []


def _figures(node: Any, path: str = "") -> list[tuple[str, dict]]:
    if isinstance(node, dict):
        if "value" in node:
            return [(path, node)]
        return [f for k, v in node.items() for f in _figures(v, f"{path}.{k}" if path else k)]
    return []


def test_some_specs_are_shipped() -> None:
    names = {load_spec(p).name for p in SHIPPED}
    assert {"cortex-a76", *GPUS} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_spec_loads_and_cites_every_figure(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name and spec.kind in ("cpu", "mcu", "gpu")
    for section in ("compute", "memory"):
        for key, fig in getattr(spec, section).items():
            assert fig.source.strip(), f"{path.name}: [{section}] {key} has no source"
    raw = tomllib.loads(path.read_text())
    for where, fig in _figures(raw):
        assert isinstance(fig.get("source"), str) and fig["source"].strip(), f"{path.name}: {where} has no source"
        assert isinstance(fig["value"], (int, float)), f"{path.name}: {where} value is not a number"
    # plain numbers are allowed only as schema version, N:M sizes and measuring settings
    allowed = ("schema_version", "patterns.", "measure.")
    stray = [(p, v) for p, v in _numeric_leaves(raw) if not p.startswith(allowed)]
    assert not stray, f"{path.name}: numbers without a source: {stray}"


def test_names_are_unique() -> None:
    names = [load_spec(p).name for p in sorted(SPEC_DIR.glob("*.toml"))]
    assert len(names) == len(set(names))
    assert set(list_targets()) == set(names)


@pytest.mark.parametrize("name", ["cortex-a76", *GPUS])
def test_roofline_works_on_my_specs(name: str) -> None:
    spec = get_target(name)
    for dtype in spec.dtypes:
        model = RooflineModel(spec, dtype=dtype)
        assert model.peak_macs_s > 0 and model.dram_bw > 0


@pytest.mark.parametrize("name", GPUS)
def test_gpu_peaks_are_consistent(name: str) -> None:
    spec = get_target(name)
    for dtype in ("fp16", "bf16", "int8"):
        dense = spec.figure("compute", f"peak_{dtype}_dense_ops_per_s")
        sparse = spec.figure("compute", f"peak_{dtype}_sparse24_ops_per_s")
        assert sparse == pytest.approx(2 * dense, rel=1e-3)  # NVIDIA's "with sparsity" = 2x dense
        roof = 2 * RooflineModel(spec, dtype=dtype).peak_macs_s
        assert roof == pytest.approx(dense, rel=0.01), f"clock x SMs x MACs/cycle disagrees with the datasheet"
    nm = spec.patterns["nm"]
    assert nm["kernel"] and nm["speedup"] and (nm["n"], nm["m"]) == (2, 4) and nm["shape_rules"]
    assert spec.measure["backend"] == "cuda-2of4" and spec.measure["costmodel"] == "gpu24"
    assert registry.default_for(spec).kind == "gpu24"


def test_cortex_a76_spec() -> None:
    spec = get_target("cortex-a76")
    assert spec.kind == "cpu"
    assert spec.figure("compute", "clock_hz") == 2.84e9
    assert [spec.figure("compute", f"macs_per_cycle_{d}") for d in ("fp32", "fp16", "int8")] == [8, 16, 32]
    assert spec.measure["backend"] == "tvm-rpc" and spec.measure["rpc_key"] == "a76"
    assert spec.measure["tvm_target"] == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}
    assert spec.measure["cross_compiler"] == "aarch64-linux-gnu-gcc"
    assert spec.accelerates("channel") and not spec.accelerates("unstructured") and not spec.accelerates("nm")
    assert not spec.accelerates("block") and "not measured" in spec.patterns["block"]["note"]
    assert registry.default_for(spec).kind == "roofline"


# ---- malformed specs --------------------------------------------------------------------------
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_good_minimal_spec_loads(tmp_path: Path) -> None:
    assert load_spec(_write(tmp_path, GOOD)).figure("compute", "clock_hz") == 1.0e9


@pytest.mark.parametrize("text, match", [
    (GOOD.replace('clock_hz = { value = 1.0e9, source = "a datasheet" }', "clock_hz = 1.0e9"), "has no source"),
    (GOOD.replace('clock_hz = { value = 1.0e9, source = "a datasheet" }', "clock_hz = { value = 1.0e9 }"),
     "has no source"),
    (GOOD.replace('source = "a datasheet" }\n[memory]', 'source = "  " }\n[memory]'), "has no source"),
    (GOOD.replace("schema_version = 1", "schema_version = 2"), "schema_version 2 is not supported"),
    (GOOD.replace("schema_version = 1\n", ""), "schema_version None is not supported"),
    (GOOD.replace('kind = "cpu"', 'kind = "cpu'), "malformed TOML"),
    (GOOD + "\n[compute\n", "malformed TOML"),
    (GOOD.replace('kind = "cpu"', 'kind = "tpu"'), "kind 'tpu' unknown"),
    (GOOD.replace('backend = "none"', 'backend = "magic"'), "backend 'magic' unknown"),
])
def test_bad_spec_raises_one_line_spec_error(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as info:
        load_spec(_write(tmp_path, text))
    msg = str(info.value)
    assert "\n" not in msg and "spec.toml" in msg


def test_wrong_schema_version_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=f"set schema_version = {SCHEMA_VERSION}"):
        load_spec(_write(tmp_path, GOOD.replace("schema_version = 1", "schema_version = 0")))


def test_missing_file_and_unknown_target() -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec("/nonexistent/spec.toml")
    with pytest.raises(SpecError, match="valid: .*cortex-a76"):
        get_target("no-such-target")
