"""The kernel sweep: measure layer kernels on this device in a runtime and fit its kernel-level
latency predictor (:class:`costmodels.kernel_predictor.KernelPredictor`), as nn-Meter does.

**What is measured.** Each kernel — conv1d, conv2d, depthwise 1-D/2-D, linear on one row or over
tokens, each with a fused epilogue (bias/BatchNorm folded, ReLU / ReLU6 / GELU / SiLU, a residual
add) — is built directly as a small ONNX graph (``onnx.helper``: the nodes ``torch.onnx.export``
writes for that layer, so ONNX Runtime's graph optimiser fuses them the same way, e.g.
Conv+Relu → FusedConv, MatMul+Add → Gemm), in milliseconds instead of the seconds an export
takes. To amortise the runtime's per-call overhead, one graph holds ``copies`` of the kernel side
by side on the same input (enough copies that they take about :data:`TARGET_CALL_S`, at most
16); a *null* graph (one ReLU on a scalar-sized input) is timed in every sitting, and a kernel's
time is ``(t_graph − t_null) / copies``. ``t_null`` is the runtime's per-call overhead. A 2-D conv
is timed as a chain of ``copies`` and of ``2 · copies`` (see :func:`build_onnx`) and costs
``(t_2c − t_c) / copies``: what one more conv adds inside a chain, without the reorders into and
out of ONNX Runtime's blocked layout that every graph pays once and a layer inside a model does not.

**How it is timed.** Like :mod:`targets.runtimes` sittings: every batch of graphs is timed
interleaved in a fresh worker process (ONNX Runtime CPU execution provider, one global intra-op
pool of ``threads`` threads, sequential execution, all graph optimisations): each graph runs
once untimed, then ``rounds`` rounds time every graph once (one untimed run, then ``n`` timed
runs whose mean is one sample, ``n`` set so a sample lasts ``min_sample_ms``) in an order
rotated each round; ``passes`` passes in fresh processes; a graph's time is the low decile of all
its samples (``SweepConfig.quantile``: the machine is shared, and interference only adds time;
the IQR is its spread).

**Ops.** Attention, batched matmul, embedding, LayerNorm and softmax are timed the same way at
``ops_per_kind`` random shapes each and fitted per kind (:mod:`hwsearch.kernel_sweep_ops`).

**Adaptive sampling.** An initial Latin-hypercube sample of the kernel space (:data:`FAMILIES`),
then rounds that each measure the candidates (of a fresh random pool) on which trees fitted on
bootstrap resamples of what is measured so far disagree most (std of their log-predictions),
until ``rounds`` rounds are done or the ``budget_minutes`` would be passed. The default sweep
(1,200 + 3 × 300 kernels, 50 ops) took 3.9 minutes on 2 cores; ``tiny=True`` (CI) measures a dozen
kernels in seconds.

The predictor is saved in the cache (``$HWSEARCH_CACHE``) under this device's fingerprint, where
every search on this device finds it (:func:`costmodels.kernel_predictor.find_for_device`)::

    hwsearch sweep --runtime onnxruntime [--budget-minutes 25] [--tiny] [--out FILE]
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from costmodels.errors import CostModelError
from costmodels.kernel_features import epilogue_codes, feature_matrix
from costmodels.kernel_predictor import KernelPredictor, device_fingerprint
from hwsearch.kernel_sweep_ops import fit_op_coefficients, measure_op_specs, sample_op_specs

__all__ = ["KernelSpec", "SweepConfig", "SweepResult", "FAMILIES", "sweep", "measure_specs", "build_onnx",
           "sample_specs", "time_graphs", "run_worker", "TARGET_CALL_S"]

log = logging.getLogger(__name__)

#: Each timed graph holds enough kernel copies to take about this long (seconds), at most 16.
TARGET_CALL_S = 60e-6
MAX_COPIES = 16
OPSET = 20
#: Kernel families and their epilogues (as :func:`hwsearch.graph.analyze` names them).
FAMILIES: dict[str, tuple[str, ...]] = {
    "conv1d": ("batch_norm+relu", "batch_norm+add+relu", ""),
    "conv2d": ("batch_norm+relu", "batch_norm+add+relu", "", "batch_norm+hardtanh"),
    "dw1d": ("batch_norm+relu", ""),
    "dw2d": ("batch_norm+relu", "batch_norm+hardtanh", ""),
    "linear": ("", "gelu", "relu", "silu", "add"),
}
_WORKER = Path(__file__).with_name("kernel_sweep_worker.py")
_MAX_MACS = 4e7  # the zoo's largest layer is 2.4 M MACs; beyond this a kernel only costs sweep time


@dataclass(frozen=True)
class KernelSpec:
    """One kernel to measure. ``family`` (:data:`FAMILIES`), channels ``cin``/``cout`` (depthwise:
    ``cin == cout``), kernel size ``k`` and ``stride`` (convs; square for 2-D), ``size``: input
    length (1-D), height = width (2-D) or tokens (linear; 0: one row, a 2-D input),
    ``epilogue`` as the layer table writes it."""

    family: str
    cin: int
    cout: int
    k: int
    stride: int
    size: int
    epilogue: str

    @property
    def ndim(self) -> int:
        return {"conv1d": 1, "dw1d": 1, "conv2d": 2, "dw2d": 2}.get(self.family, 0)

    @property
    def out_size(self) -> int:
        return (self.size + 2 * (self.k // 2) - self.k) // self.stride + 1 if self.ndim else max(1, self.size)

    @property
    def depthwise(self) -> bool:
        return self.family.startswith("dw")

    def in_shape(self) -> tuple[int, ...]:
        if self.ndim:
            return (1, self.cin) + (self.size,) * self.ndim
        return (1, self.size, self.cin) if self.size else (1, self.cin)

    def out_shape(self) -> tuple[int, ...]:
        if self.ndim:
            return (1, self.cout) + (self.out_size,) * self.ndim
        return (1, self.size, self.cout) if self.size else (1, self.cout)

    def macs(self) -> int:
        cin_g = 1 if self.depthwise else self.cin
        return int(self.cout * cin_g * self.k ** self.ndim * self.out_size ** self.ndim) if self.ndim else \
            int(max(1, self.size) * self.cin * self.cout)

    def features(self) -> np.ndarray:
        """The kernel's row of :data:`costmodels.kernel_features.FEATURES`, as a layer of the
        same shape gets it from :func:`costmodels.kernel_features.resolved_features`."""
        kind = 1 if self.depthwise else (3 if self.family == "linear" else 0)
        ke = self.k ** self.ndim if self.ndim else 1
        act, add, mul = epilogue_codes(self.epilogue)
        static = [(kind, self.ndim, ke, self.stride ** self.ndim if self.ndim else 1, act, add, mul)]
        cols = ke * (1 if self.depthwise else self.cin)
        acts = float(np.prod(self.in_shape()) + np.prod(self.out_shape()))
        return feature_matrix(static, np.array([self.cin]), np.array([self.cout]), np.array([self.macs()]),
                              np.array([cols]), np.array([acts]))[0]


@dataclass(frozen=True)
class SweepConfig:
    """How a sweep samples and times (see the module docstring). ``budget_minutes`` bounds the
    whole sweep: a round that would pass it is not started. ``quantile``: which quantile of a
    graph's samples is its time (0.1: on a shared machine interference only ever adds time, and
    the low decile is what the kernel costs when nothing interferes; 0.5: the median). ``tiny``: a dozen kernels, one pass,
    few rounds (CI)."""

    runtime: str = "onnxruntime"
    budget_minutes: float = 25.0
    initial: int = 1200
    per_round: int = 300
    rounds: int = 3
    pool: int = 3000
    passes: int = 2
    timing_rounds: int = 11
    min_sample_ms: float = 2.0
    batch: int = 40
    ops_per_kind: int = 10
    quantile: float = 0.1
    threads: int = 0
    seed: int = 0
    tiny: bool = False

    def __post_init__(self) -> None:
        if self.runtime != "onnxruntime":
            raise CostModelError(f"the kernel sweep measures runtime 'onnxruntime' only, not {self.runtime!r}")
        if not 0.0 < self.quantile <= 1.0:
            raise CostModelError(f"sweep quantile {self.quantile} must be in (0, 1]: 0.1 the low decile, 0.5 the median")
        if self.budget_minutes <= 0 or self.initial < 8 or self.per_round < 1 or self.rounds < 0 or self.passes < 1:
            raise CostModelError(f"sweep settings out of range (budget_minutes {self.budget_minutes} > 0, initial "
                                 f"{self.initial} >= 8, per_round {self.per_round} >= 1, rounds {self.rounds} >= 0, "
                                 f"passes {self.passes} >= 1)")

    @classmethod
    def tiny_grid(cls, **kw: Any) -> SweepConfig:
        return cls(**({"initial": 12, "per_round": 4, "rounds": 1, "pool": 200, "passes": 1, "timing_rounds": 3,
                       "min_sample_ms": 0.5, "batch": 16, "ops_per_kind": 3, "tiny": True} | kw))

    @property
    def n_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


@dataclass
class SweepResult:
    """What :func:`sweep` made: the ``predictor``, where it was saved (``path``), the measured
    kernels (``table``: spec, features, seconds, IQR, copies, round), the measured ops (``ops``:
    :mod:`hwsearch.kernel_sweep_ops`), ``wall_s`` (the sweep's seconds) and ``cv`` (5-fold cross-validated shares within ±10 % / ±5 %, on the sweep's own
    kernels)."""

    predictor: KernelPredictor
    path: Path | None
    table: pd.DataFrame
    wall_s: float
    cv: dict[str, float]
    ops: pd.DataFrame | None = None


# ---- sampling ---------------------------------------------------------------------------------

def _log_int(u: float, lo: int, hi: int) -> int:
    return int(round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))))


def _spec_from_unit(family: str, u: np.ndarray, rng: np.random.Generator) -> KernelSpec | None:
    """A kernel of ``family`` from 6 numbers in [0, 1) (a Latin-hypercube row); None when it is
    too large to be worth timing. Channel counts are multiples of 8 two times in three (what
    ``--channel-multiple 8`` gives), else any count."""
    def ch(v: float, lo: int, hi: int) -> int:
        c = _log_int(v, lo, hi)
        return max(8, 8 * round(c / 8)) if c >= 8 and rng.random() < 0.67 else c

    epis = FAMILIES[family]
    epi = epis[min(len(epis) - 1, int(u[5] * len(epis)))]
    if family == "linear":
        tokens = 0 if u[2] < 0.25 else _log_int((u[2] - 0.25) / 0.75, 1, 256)
        spec = KernelSpec(family, ch(u[0], 4, 1024), ch(u[1], 2, 1024), 1, 1, tokens, epi)
    else:
        two_d = family.endswith("2d")
        size = _log_int(u[2], 2, 48) if two_d else _log_int(u[2], 4, 320)
        k = (1, 3, 5, 7)[min(3, int(u[3] * 4))] if not family.startswith("dw") else (3, 5)[int(u[3] * 2)]
        stride = 2 if u[4] < 0.3 and size >= 4 else 1
        if family.startswith("dw"):
            c = ch(u[0], 4, 512)
            spec = KernelSpec(family, c, c, k, stride, size, epi)
        else:
            spec = KernelSpec(family, ch(u[0], 1, 256), ch(u[1], 4, 256), k, stride, size, epi)
    return spec if spec.macs() <= _MAX_MACS and spec.out_size >= 1 else None


def sample_specs(n: int, *, seed: int, latin: bool = True) -> list[KernelSpec]:
    """``n`` kernels spread over :data:`FAMILIES` (equal shares), each family's from a Latin
    hypercube (``latin``) or plain uniform draws over its six dimensions; too-large draws are
    replaced by further ones."""
    from scipy.stats import qmc

    rng = np.random.default_rng(seed)
    fams = list(FAMILIES)
    out: list[KernelSpec] = []
    for i, fam in enumerate(fams):
        want = n // len(fams) + (1 if i < n % len(fams) else 0)
        got: list[KernelSpec] = []
        tries = 0
        while len(got) < want and tries < 20:
            m = want - len(got)
            u = qmc.LatinHypercube(d=6, seed=rng).random(m) if latin else rng.random((m, 6))
            got += [s for s in (_spec_from_unit(fam, row, rng) for row in u) if s is not None]
            tries += 1
        out += got[:want]
    return out


# ---- ONNX graphs ------------------------------------------------------------------------------

def _epilogue_nodes(helper: Any, ops: list[str], src: str, tag: str, residual: str | None) -> tuple[list, str]:
    """The nodes of epilogue ops ``ops`` after a kernel's output ``src`` (``add``: of ``residual``)."""
    nodes, cur = [], src
    for o in ops:
        nxt = f"{tag}_{o}"
        if o == "add":
            nodes.append(helper.make_node("Add", [cur, residual], [nxt]))
        elif o == "relu":
            nodes.append(helper.make_node("Relu", [cur], [nxt]))
        elif o == "hardtanh":
            nodes.append(helper.make_node("Clip", [cur, "c_lo", "c_hi"], [nxt]))
        elif o == "gelu":
            nodes.append(helper.make_node("Gelu", [cur], [nxt]))
        elif o == "silu":
            nodes += [helper.make_node("Sigmoid", [cur], [f"{tag}_sig"]), helper.make_node("Mul", [cur, f"{tag}_sig"], [nxt])]
        else:
            raise CostModelError(f"no ONNX nodes for epilogue op {o!r}")
        cur = nxt
    return nodes, cur


def build_onnx(spec: KernelSpec, copies: int, seed: int = 0) -> bytes:
    """An ONNX model (bytes) holding ``copies`` copies of ``spec`` on one input ``x`` (and, with
    a residual add, a second input ``r`` of the output's shape). 1-D convs and linears: side by
    side, one output per copy. 2-D convs: chained through their residual input — copy ``c`` adds
    copy ``c − 1``'s output before its activation — with one output, because ONNX Runtime runs
    2-D convs in a blocked layout (NCHWc) and reorders at every graph output: side by side, each
    copy would pay a reorder that a conv inside a model does not (the add is fused into the conv
    as its sum input, as a residual add is in a model)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, outputs = [], [], []
    own = [o for o in spec.epilogue.split("+") if o and o != "batch_norm"]
    need_res = "add" in own
    chain = spec.ndim == 2
    out = ""
    for c in range(copies):
        tag = f"k{c}"
        if spec.family == "linear":
            w = rng.standard_normal((spec.cin, spec.cout)).astype(np.float32) * 0.05
            b = rng.standard_normal(spec.cout).astype(np.float32) * 0.05
            inits += [numpy_helper.from_array(w, f"{tag}.weight"), numpy_helper.from_array(b, f"{tag}.bias")]
            if spec.size:  # over tokens: torch exports MatMul + Add
                nodes += [helper.make_node("MatMul", ["x", f"{tag}.weight"], [f"{tag}_mm"]),
                          helper.make_node("Add", [f"{tag}_mm", f"{tag}.bias"], [f"{tag}_y"])]
            else:  # one row: Gemm
                nodes.append(helper.make_node("Gemm", ["x", f"{tag}.weight", f"{tag}.bias"], [f"{tag}_y"]))
        else:
            groups = spec.cin if spec.depthwise else 1
            wshape = (spec.cout, spec.cin // groups) + (spec.k,) * spec.ndim
            w = rng.standard_normal(wshape).astype(np.float32) * 0.05
            inits.append(numpy_helper.from_array(w, f"{tag}.weight"))
            # a bias always: torch.onnx.export folds BatchNorm into the conv as one
            inits.append(numpy_helper.from_array(rng.standard_normal(spec.cout).astype(np.float32) * 0.05,
                                                 f"{tag}.bias"))
            ins = ["x", f"{tag}.weight", f"{tag}.bias"]
            p = spec.k // 2
            nodes.append(helper.make_node("Conv", ins, [f"{tag}_y"], kernel_shape=[spec.k] * spec.ndim,
                                          strides=[spec.stride] * spec.ndim, pads=[p] * (2 * spec.ndim),
                                          group=groups))
        if chain and c > 0:
            ops, res = ["add"] + [o for o in own if o != "add"], out
        else:
            ops, res = own, "r" if need_res else None
        epi, out = _epilogue_nodes(helper, ops, f"{tag}_y", tag, res)
        nodes += epi
        if not chain or c == copies - 1:
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, list(spec.out_shape())))
    if "hardtanh" in spec.epilogue:
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "c_lo"),
                  numpy_helper.from_array(np.array(6.0, np.float32), "c_hi")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(spec.in_shape()))]
    if need_res:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, list(spec.out_shape())))
    graph = helper.make_graph(nodes, "kernel", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return model.SerializeToString()


def _null_onnx() -> bytes:
    """The null graph: one ReLU on a 1×8 input (the runtime's per-call overhead)."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "null",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 9
    return m.SerializeToString()


# ---- the sweep ----------------------------------------------------------------------------------

def _fit(table: pd.DataFrame, overhead: dict[str, float], meta: dict[str, Any]) -> KernelPredictor:
    ok = table[table["error"] == ""]
    rows = np.stack([KernelSpec(**{k: r[k] for k in KernelSpec.__dataclass_fields__}).features()
                     for _, r in ok.iterrows()])
    return KernelPredictor(rows, ok["latency_s"].to_numpy(dtype=float), overhead_s=overhead["overhead_s"],
                           fingerprint=device_fingerprint(meta["runtime"], meta["threads"]), meta=meta)


def _cross_validate(pred: KernelPredictor, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Shares of the sweep's kernels predicted within ±10 % / ±5 % by trees fitted on the other
    folds (a check of the trees on unseen *shapes*; unseen *models* are ``studies/zeroshot``)."""
    n = len(pred.latency_s)
    if n < 2 * folds:
        return {"within10": math.nan, "within5": math.nan, "median_abs_err": math.nan}
    idx = np.random.default_rng(seed).permutation(n)
    rel = np.empty(n)
    for f in range(folds):
        test = idx[f::folds]
        train = np.setdiff1d(idx, test)
        model = KernelPredictor._fit(pred.rows[train], np.log(pred.latency_s[train]), 0)
        rel[test] = np.abs(np.exp(KernelPredictor._predict_log(model, pred.rows[test])) / pred.latency_s[test] - 1.0)
    return {"within10": float((rel <= 0.10).mean()), "within5": float((rel <= 0.05).mean()),
            "median_abs_err": float(np.median(rel))}


def _most_uncertain(pred: KernelPredictor, cfg: SweepConfig, rnd: int) -> list[KernelSpec]:
    """The ``cfg.per_round`` candidates of a fresh random pool on which bootstrap trees disagree
    most (std of log-predictions), at most half of them from one family."""
    pool = sample_specs(cfg.pool, seed=cfg.seed + 1000 * (rnd + 1), latin=False)
    spread = pred.ensemble_spread(np.stack([s.features() for s in pool]), seed=cfg.seed + rnd)
    out, per_fam = [], {}
    for i in np.argsort(-spread):
        fam = pool[i].family
        if per_fam.get(fam, 0) >= max(1, cfg.per_round // 2):
            continue
        out.append(pool[i])
        per_fam[fam] = per_fam.get(fam, 0) + 1
        if len(out) == cfg.per_round:
            break
    return out


def sweep(cfg: SweepConfig | None = None, *, out: Path | None = None, work_dir: Path | None = None,
          progress: Callable[[str], None] | None = None, save: bool = True) -> SweepResult:
    """Measure kernels on this device and fit its predictor (see the module docstring); saved
    to ``out`` (default: the cache path of this device's fingerprint) unless ``save`` is False.
    Raises :class:`CostModelError` when the runtime cannot run the null graph."""
    cfg = cfg or SweepConfig()
    say = progress or log.info
    t0 = time.perf_counter()
    deadline = t0 + cfg.budget_minutes * 60.0
    tmp = tempfile.TemporaryDirectory(prefix="hwsearch-sweep-") if work_dir is None else None
    wdir = Path(work_dir or tmp.name)
    meta: dict[str, Any] = {"runtime": cfg.runtime, "threads": cfg.n_threads, "config": asdict(cfg),
                            "protocol": "each kernel as copies in one ONNX graph, minus a null graph "
                                        "(2-D convs: a chain of 2c minus one of c copies); "
                                        f"{cfg.passes} fresh processes x {cfg.timing_rounds} interleaved rounds, "
                                        f"quantile {cfg.quantile} of the samples"}
    try:
        specs = sample_specs(cfg.initial, seed=cfg.seed)
        table, overhead = measure_specs(specs, cfg, wdir / "r0")
        table["round"] = 0
        pred = _fit(table, overhead, meta)
        say(f"sweep round 0: {len(table)} kernels (Latin hypercube) in {time.perf_counter() - t0:.0f} s")
        for rnd in range(1, cfg.rounds + 1):
            spent = time.perf_counter() - t0
            per_kernel = spent / max(1, len(table))
            if time.perf_counter() + per_kernel * cfg.per_round * 1.3 > deadline:
                say(f"sweep: budget of {cfg.budget_minutes:g} min reached before round {rnd}")
                break
            picks = _most_uncertain(pred, cfg, rnd)
            new, ov = measure_specs(picks, cfg, wdir / f"r{rnd}",
                                    guess=lambda s: float(pred.predict(s.features()[None])[0]))
            new["round"] = rnd
            table = pd.concat([table, new], ignore_index=True)
            overhead = {k: float(np.median([overhead[k], ov[k]])) for k in overhead}
            pred = _fit(table, overhead, meta)
            say(f"sweep round {rnd}: +{len(new)} kernels where the trees disagreed most "
                f"({time.perf_counter() - t0:.0f} s so far)")
        ops = measure_op_specs(sample_op_specs(cfg.ops_per_kind, seed=cfg.seed), cfg, wdir / "ops", time_graphs)
        op_coef = fit_op_coefficients(ops)
        say(f"sweep: {int((ops['error'] == '').sum())} attention / matmul / embedding / norm / softmax ops timed "
            f"({time.perf_counter() - t0:.0f} s so far)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    wall = time.perf_counter() - t0
    cv = _cross_validate(pred)
    meta.update(wall_s=wall, kernels=int((table["error"] == "").sum()), failed=int((table["error"] != "").sum()),
                overhead_iqr_s=overhead["overhead_iqr_s"], cv=cv,
                median_rel_iqr=float(np.nanmedian(table["graph_iqr_s"] / table["graph_s"])),
                date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta["ops_timed"] = int((ops["error"] == "").sum())
    pred = KernelPredictor(pred.rows, pred.latency_s, overhead_s=pred.overhead_s, fingerprint=pred.fingerprint,
                           meta=meta, op_coef=op_coef)
    path = pred.save(out) if save else None
    return SweepResult(pred, path, table, wall, cv, ops)

# ---- timing -------------------------------------------------------------------------------------

def _copies(spec: KernelSpec, guess: Callable[[KernelSpec], float] | None) -> int:
    """Copies of ``spec`` in its graph: enough for about :data:`TARGET_CALL_S` by ``guess``
    (seconds per copy; default 1 µs + MACs at 2 GMAC/s), 1 to :data:`MAX_COPIES`."""
    est = guess(spec) if guess is not None else 1e-6 + spec.macs() / 2e9
    return int(min(MAX_COPIES, max(1, math.ceil(TARGET_CALL_S / max(est, 1e-8)))))


def measure_specs(specs: list[KernelSpec], cfg: SweepConfig, work_dir: Path, *,
                  guess: Callable[[KernelSpec], float] | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Time ``specs`` (see :func:`time_graphs`). Returns one row per spec (its fields,
    ``copies``, ``graph_s`` / ``graph_iqr_s`` of its graph, ``latency_s`` = (graph − null) /
    copies, ``error``) and the null graph's ``{"overhead_s", "overhead_iqr_s"}``."""
    copies = [_copies(s, guess) for s in specs]

    def inputs(s: KernelSpec) -> list[dict]:
        return [{"shape": list(s.in_shape())}] + ([{"shape": list(s.out_shape())}]
                                                  if "add" in s.epilogue.split("+") else [])

    # 2-D convs: also a chain twice as long, timed next to it (same batch, same rounds); the
    # difference is what one more conv costs inside a chain of convs, free of the per-graph
    # reorders to and from ONNX Runtime's blocked layout (NCHWc) that a conv in a model does not pay
    entries = [(i, m) for i, s in enumerate(specs) for m in ((1, 2) if s.ndim == 2 else (1,))]
    graphs = [(lambda s=specs[i], c=copies[i] * m, i=i: build_onnx(s, c, seed=i), inputs(specs[i])) for i, m in entries]
    timed_all, overhead = time_graphs(graphs, cfg, work_dir)
    timed = [t for (_, m), t in zip(entries, timed_all) if m == 1]
    rows = [asdict(s) | {"copies": c} | t | {"graph2_s": math.nan} for s, c, t in zip(specs, copies, timed)]
    for (i, m), t in zip(entries, timed_all):
        if m == 2:
            rows[i]["graph2_s"] = t["graph_s"]
            rows[i]["error"] = rows[i]["error"] or t["error"]
    for r in rows:
        r["latency_s"] = (r["graph_s"] - overhead["overhead_s"]) / r["copies"]
        if r["graph2_s"] == r["graph2_s"] and r["graph2_s"] > r["graph_s"]:
            r["latency_s"] = (r["graph2_s"] - r["graph_s"]) / r["copies"]
        if not r["error"] and not r["latency_s"] > 0:
            r["error"] = "no positive time above the null graph"
    return pd.DataFrame(rows), overhead


def time_graphs(graphs: list[tuple[Callable[[], bytes], list[dict]]], cfg: SweepConfig,
                work_dir: Path) -> tuple[list[dict], dict[str, float]]:
    """Time ONNX graphs — ``(build, inputs)``: a function giving the model's bytes and one
    ``{"shape": [...], "int_high": n}`` per input (``int_high``: int64 indices below ``n``) — in
    batches of ``cfg.batch``, each batch with the null graph, interleaved, ``cfg.passes`` fresh
    processes. Returns per graph ``{"graph_s", "graph_iqr_s", "error"}`` (the ``cfg.quantile``
    quantile and the IQR of its samples, seconds per call) and the null graph's ``{"overhead_s", "overhead_iqr_s"}``
    (medians over batches). Raises :class:`CostModelError` when the null graph does not run."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "null.onnx").write_bytes(_null_onnx())
    out: list[dict] = []
    nulls, null_iqr = [], []
    for b0 in range(0, len(graphs), cfg.batch):
        entries = [{"key": "null", "path": str(work_dir / "null.onnx"), "inputs": [{"shape": [1, 8]}]}]
        for i, (build, inputs) in enumerate(graphs[b0:b0 + cfg.batch]):
            path = work_dir / f"g{b0 + i}.onnx"
            path.write_bytes(build())
            entries.append({"key": f"g{b0 + i}", "path": str(path), "inputs": inputs})
        samples: dict[str, list[float]] = {}
        errors: dict[str, str] = {}
        for p in range(cfg.passes):
            for key, r in run_worker(work_dir, entries, cfg, p).items():
                if r.get("error"):
                    errors.setdefault(key, r["error"])
                else:
                    samples.setdefault(key, []).extend(r["samples"])
        if not samples.get("null"):
            raise CostModelError(f"the sweep's null graph did not run in {cfg.runtime}: {errors.get('null')}")
        nulls.append(float(np.quantile(samples["null"], cfg.quantile)))
        null_iqr.append(float(np.subtract(*np.percentile(samples["null"], [75, 25]))))
        for e in entries[1:]:
            s = samples.get(e["key"])
            out.append({"graph_s": float(np.quantile(s, cfg.quantile)) if s else math.nan,
                        "graph_iqr_s": float(np.subtract(*np.percentile(s, [75, 25]))) if s else math.nan,
                        "error": "" if s else errors.get(e["key"], "not timed")})
            Path(e["path"]).unlink(missing_ok=True)
    return out, {"overhead_s": float(np.median(nulls)), "overhead_iqr_s": float(np.median(null_iqr))}


def run_worker(work_dir: Path, entries: list[dict], cfg: SweepConfig, pass_idx: int) -> dict[str, dict]:
    """One fresh worker process (:mod:`hwsearch.kernel_sweep_worker`) timing ``entries`` —
    ``{"key", "path" (an .onnx file), "inputs": [{"shape", "int_high"?}]}`` — interleaved for
    ``cfg.timing_rounds`` rounds; ``{key: {"samples": [seconds per run, one per round]}}`` or
    ``{key: {"error": ...}}``."""
    job = work_dir / f"job-{pass_idx}.json"
    result = work_dir / f"result-{pass_idx}.json"
    result.unlink(missing_ok=True)
    job.write_text(json.dumps({"entries": entries, "pass": pass_idx, "rounds": cfg.timing_rounds,
                               "min_sample_ms": cfg.min_sample_ms, "threads": cfg.n_threads, "result": str(result)}))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(cfg.n_threads))
    # the worker is run by path in isolated mode: it imports numpy and onnxruntime only (importing
    # hwsearch would cost seconds per process)
    proc = subprocess.run([sys.executable, "-I", str(_WORKER), str(job)], capture_output=True, text=True,
                          timeout=600, env=env)
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        why = tail[-1][:300] if tail else f"exit status {proc.returncode}"
        return {e["key"]: {"error": f"sweep worker failed: {why}"} for e in entries}
    return json.loads(result.read_text())
