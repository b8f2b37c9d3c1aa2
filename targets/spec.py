"""Devices as data: versioned, validated target spec files.

A spec is a TOML file under ``targets/specs/`` (or any path a user gives). Every numeric
figure is a table ``{ value = ..., source = "..." }`` naming where it came from — a datasheet,
a paper, or a measurement file in this repository; a figure without a source is refused.

Schema (``schema_version = 1``)::

    schema_version = 1
    name = "host-x86"            # registry key
    version = "1"
    kind = "cpu"                 # cpu | mcu | gpu
    description = "..."
    dtypes = ["fp32"]
    [compute]   clock_hz, cores, macs_per_cycle_fp32, ... (figures)
    [memory]    flash_bytes, sram_bytes, dram_bandwidth_Bps, ... (figures)
    [patterns.<name>]  kernel = bool, speedup = bool, ... per sparsity pattern
    [measure]   backend = "tvm-local" | "tvm-rpc" | "mcu-qemu" | "cuda-2of4" | "none", plus its settings
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hwsearch.core import patterns as pattern_registry
from hwsearch.core.errors import SpecError

__all__ = ["Figure", "TargetSpec", "load_spec", "list_targets", "get_target", "SPEC_DIR", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
SPEC_DIR = Path(__file__).parent / "specs"
KINDS = ("cpu", "mcu", "gpu")
BACKENDS = ("tvm-local", "tvm-rpc", "mcu-qemu", "cuda-2of4", "none")
#: Runtimes a CPU target can run a model in; ``tvm`` is measured by the spec's TVM backend,
#: the others by :mod:`targets.runtimes` (interleaved sittings).
RUNTIMES = ("onnxruntime", "tvm", "torch")


@dataclass(frozen=True)
class Figure:
    """A number with the source it came from."""

    value: float
    source: str


_LIKE_CHANNEL = ("head", "qhead")  # attention heads: removed physically, run as smaller dense kernels


@dataclass(frozen=True)
class TargetSpec:
    """A validated target. ``compute``/``memory`` hold :class:`Figure` values by key;
    ``patterns`` maps pattern name → its settings; ``measure`` the backend settings."""

    name: str
    version: str
    kind: str
    description: str
    dtypes: tuple[str, ...]
    compute: dict[str, Figure]
    memory: dict[str, Figure]
    patterns: dict[str, dict[str, Any]]
    measure: dict[str, Any]
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    runtime: str | None = None   # the runtime that runs the model (None: the backend's only one)

    def figure(self, section: str, key: str) -> float:
        """``spec.figure("compute", "clock_hz")``; :class:`SpecError` names the file when missing."""
        table = getattr(self, section)
        if key not in table:
            raise SpecError(f"target {self.name!r} ({self.path}) has no [{section}] {key}; add it with a source")
        return float(table[key].value)

    def has(self, section: str, key: str) -> bool:
        return key in getattr(self, section)

    def _pattern_entry(self, pattern: str) -> dict:
        """The spec's ``[patterns.<pattern>]``; head patterns, which remove weights physically as
        channel pruning does (smaller dense kernels), take ``[patterns.channel]``'s unless named."""
        if pattern not in self.patterns and pattern in _LIKE_CHANNEL:
            return self.patterns.get("channel", {})
        return self.patterns.get(pattern, {})

    def accelerates(self, pattern: str) -> bool:
        """True when the target has a kernel for ``pattern`` that runs faster than dense."""
        p = self._pattern_entry(pattern)
        return bool(p.get("kernel", False) and p.get("speedup", False))

    def allows(self, pattern: str) -> bool:
        """True when the target can run ``pattern`` at all (dense always)."""
        return pattern == "dense" or bool(self._pattern_entry(pattern).get("kernel", False))

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes this device can run a model in (``[measure] runtimes``); empty when the
        backend has only one (an MCU, a GPU)."""
        return tuple(self.measure.get("runtimes", ()))

    @property
    def backend(self) -> str:
        """What measures this target in its runtime: ``onnxruntime``/``torch`` (sittings in
        :mod:`targets.runtimes`), else the spec's ``[measure] backend``."""
        if self.runtime in ("onnxruntime", "torch"):
            return self.runtime
        return str(self.measure.get("backend", "none"))

    def with_runtime(self, runtime: str) -> TargetSpec:
        """This device running models in ``runtime``; :class:`SpecError` lists the valid ones."""
        if runtime not in self.runtimes:
            valid = ", ".join(self.runtimes) or "none: its backend is its only runtime"
            raise SpecError(f"target {self.name!r} has no runtime {runtime!r}; valid: {valid}")
        return replace(self, runtime=runtime)

    @property
    def identity(self) -> str:
        """``name@version``, plus ``+runtime`` for a device with several runtimes: measurements
        and cost models of one runtime never stand for another."""
        base = f"{self.name}@{self.version}"
        return f"{base}+{self.runtime}" if self.runtime else base


def _figures(path: Path, section: str, raw: Any) -> dict[str, Figure]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: [{section}] must be a table of figures")
    out = {}
    for key, val in raw.items():
        if isinstance(val, dict) and "value" in val:
            src = val.get("source")
            if not isinstance(src, str) or not src.strip():
                raise SpecError(f"{path}: [{section}] {key} has no source; every figure cites a datasheet, "
                                "paper or measurement file: {{ value = ..., source = \"...\" }}")
            try:
                out[key] = Figure(float(val["value"]), src)
            except (TypeError, ValueError):
                raise SpecError(f"{path}: [{section}] {key} value {val['value']!r} is not a number") from None
        elif isinstance(val, (int, float)) and not isinstance(val, bool):
            raise SpecError(f"{path}: [{section}] {key} = {val} has no source; write "
                            f"{key} = {{ value = {val}, source = \"...\" }}")
        # non-numeric entries (strings, lists) are settings, kept out of figures
    return out


def load_spec(path: str | Path) -> TargetSpec:
    """Read and validate a spec file. Raises :class:`SpecError` (one line, with the fix)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"target spec {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: malformed TOML ({exc}); fix the file or restore it from git") from None
    ver = data.get("schema_version")
    if ver != SCHEMA_VERSION:
        raise SpecError(f"{path}: schema_version {ver!r} is not supported (this hwsearch reads "
                        f"{SCHEMA_VERSION}); set schema_version = {SCHEMA_VERSION} and check the fields")
    for key in ("name", "version", "kind"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise SpecError(f"{path}: missing string field {key!r}")
    if data["kind"] not in KINDS:
        raise SpecError(f"{path}: kind {data['kind']!r} unknown; use one of {', '.join(KINDS)}")
    measure = dict(data.get("measure", {}))
    backend = measure.get("backend", "none")
    if backend not in BACKENDS:
        raise SpecError(f"{path}: [measure] backend {backend!r} unknown; use one of {', '.join(BACKENDS)}")
    patterns = data.get("patterns", {})
    if not isinstance(patterns, dict) or not all(isinstance(v, dict) for v in patterns.values()):
        raise SpecError(f"{path}: [patterns.<name>] entries must be tables")
    bad = set(patterns) - set(pattern_registry.names())
    if bad:
        raise SpecError(f"{path}: unknown patterns {sorted(bad)}; valid: {', '.join(pattern_registry.names())}")
    runtimes = measure.get("runtimes", [])
    if not isinstance(runtimes, list) or any(r not in RUNTIMES for r in runtimes):
        raise SpecError(f"{path}: [measure] runtimes {runtimes!r} must be a list of {', '.join(RUNTIMES)}")
    if runtimes and "tvm" in runtimes and backend not in ("tvm-local", "tvm-rpc"):
        raise SpecError(f"{path}: runtime 'tvm' needs a TVM backend (tvm-local or tvm-rpc), not {backend!r}")
    default_rt = measure.get("default_runtime", runtimes[0] if runtimes else None)
    if default_rt is not None and default_rt not in runtimes:
        raise SpecError(f"{path}: [measure] default_runtime {default_rt!r} is not in runtimes {runtimes}")
    known = {"schema_version", "name", "version", "kind", "description", "dtypes", "compute", "memory",
             "patterns", "measure"}
    return TargetSpec(
        name=data["name"], version=data["version"], kind=data["kind"],
        description=str(data.get("description", "")), dtypes=tuple(data.get("dtypes", ["fp32"])),
        compute=_figures(path, "compute", data.get("compute")),
        memory=_figures(path, "memory", data.get("memory")),
        patterns={k: dict(v) for k, v in patterns.items()}, measure=measure, path=path,
        extra={k: v for k, v in data.items() if k not in known}, runtime=default_rt,
    )


def list_targets() -> dict[str, TargetSpec]:
    """Every spec shipped in ``targets/specs``, by name."""
    specs = {}
    for p in sorted(SPEC_DIR.glob("*.toml")):
        s = load_spec(p)
        specs[s.name] = s
    return specs


def get_target(name_or_path: str | Path) -> TargetSpec:
    """A shipped target by name, or a spec file by path; :class:`SpecError` lists the names.
    ``name+runtime`` (an :attr:`TargetSpec.identity` without the version) picks the runtime."""
    text = str(name_or_path)
    if "+" in text and not text.endswith(".toml"):
        base, runtime = text.rsplit("+", 1)
        return get_target(base.split("@", 1)[0]).with_runtime(runtime)
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return load_spec(p)
    specs = list_targets()
    if str(name_or_path) not in specs:
        raise SpecError(f"unknown target {str(name_or_path)!r}; valid: {', '.join(sorted(specs))} "
                        "(or give a path to a spec .toml)")
    return specs[str(name_or_path)]
