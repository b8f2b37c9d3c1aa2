"""Vectorised pricing of many plans at once.

:class:`BatchPricer` prices ``P`` plans in one call from two ``P × L`` arrays — pattern codes
(``PATTERN_CODES``: index into :func:`hwsearch.core.patterns.names`) and ratios — with numpy,
and gives the same numbers as ``cost_model.predict(graph, plan)`` for each plan (latency to
floating-point rounding, flash and peak SRAM bytes exactly; ``tests/test_batch_pricing.py``
checks it on random plans). It runs, array-wise, the three stages ``predict`` runs per plan:

1. :func:`hwsearch.core.resolve.resolve` — kept channels per channel group (rounded to
   ``channel_multiple``, the ``min_density`` floor, balanced over the conv groups of grouped
   convolutions), kept input columns of every consumer (coupled depthwise convs, flatten →
   linear expansion, ``torch.cat`` slices), the projections' widths under pruned attention heads
   (:func:`hwsearch.core.resolve.head_shapes`), weight density, MACs, nonzeros, activation bytes —
   re-implemented here for the built-in patterns, and handed on as :class:`PlanArrays`;
2. latency: the cost model's own vectorised path, :meth:`CostModel.price_batch` (read at every
   call, so a refit is seen), given the kept fraction of every op of ``ModelGraph.ops`` (that of
   its input's channel group) so it prices the ops too; an op of a kind the model does not price
   (``priced_op_kinds``) is a coverage gap, as in ``predict``;
3. :mod:`costmodels.memory` — exact weight storage per format, from each pattern's
   :meth:`hwsearch.core.patterns.Pattern.storage_bytes_array`, and the peak of live activations.

Plans that ``resolve`` would refuse (a channel ratio on a coupled or output layer, an N:M or
block shape that does not tile, a grouped conv left unbalanced, a ratio outside [0, 1)) are
not errors here: their ``valid`` entry is False and their prices are NaN / -1.

A cost model without a vectorised path (``price_batch`` returns ``None``), or a pattern registry
other than the built-in one, is priced by a loop over ``predict`` with a logged warning: same
results, no speed-up.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from costmodels.base import BatchLatency, CostModel, CostModelError, CoverageError, PlanArrays
from costmodels.kernels import static_signature
from costmodels.memory import DTYPE_BYTES, QPARAM_BYTES_PER_CHANNEL, bias_bytes_per_channel, check_dtype
from costmodels.ops import op_gaps, op_table
from hwsearch.core import patterns as _patterns
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import channel_segments, input_slices, resolve

__all__ = ["BatchPricer", "PATTERN_CODES", "plans_to_arrays", "arrays_to_plans"]

log = logging.getLogger(__name__)

#: Integer code of each pattern name in the ``patterns`` arrays.
PATTERN_NAMES = tuple(_patterns.names())
PATTERN_CODES: dict[str, int] = {name: i for i, name in enumerate(PATTERN_NAMES)}
_DENSE, _UNSTR, _CHAN, _NM, _BLOCK, _HEAD, _QHEAD = (
    PATTERN_CODES[n] for n in ("dense", "unstructured", "channel", "nm", "block", "head", "qhead"))
# What the array-wise resolve below re-implements: these patterns, and no other registered.
_BUILTIN_PATTERNS = {"dense": _patterns.Dense, "unstructured": _patterns.Unstructured, "channel": _patterns.Channel,
                     "nm": _patterns.NM, "block": _patterns.Block, "head": _patterns.Head, "qhead": _patterns.QHead}


def plans_to_arrays(plans: Iterable[Plan], layers: Sequence[str], *, nm: tuple[int, int] = (2, 4),
                    block: tuple[int, int] = (1, 4)) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, ratios)``: ``P × L`` int64 pattern codes and float64 ratios of ``plans`` over
    ``layers`` (a layer a plan omits is dense). Raises :class:`PlanError` for a layer not in
    ``layers`` or an N:M / block choice whose ``n:m`` / block size differs from ``nm`` / ``block``
    (the arrays carry one of each)."""
    plans = list(plans)
    col = {name: j for j, name in enumerate(layers)}
    codes = np.zeros((len(plans), len(col)), dtype=np.int64)
    ratios = np.zeros((len(plans), len(col)), dtype=np.float64)
    for i, plan in enumerate(plans):
        for layer, ch in plan.items():
            j = col.get(layer)
            if j is None:
                raise PlanError(f"plan names layer {layer!r}, not one of the priced layers: {', '.join(layers)}")
            if ch.pattern == "nm" and (ch.n, ch.m) != tuple(nm):
                raise PlanError(f"layer {layer!r} uses {ch.n}:{ch.m}; this pricer prices {nm[0]}:{nm[1]} — "
                                "build a BatchPricer with nm=(n, m)")
            if ch.pattern == "block" and tuple(ch.block) != tuple(block):
                raise PlanError(f"layer {layer!r} uses block {ch.block}; this pricer prices {tuple(block)} — "
                                "build a BatchPricer with block=(rows, cols)")
            codes[i, j] = PATTERN_CODES[ch.pattern]
            ratios[i, j] = ch.ratio
    return codes, ratios


def arrays_to_plans(codes: np.ndarray, ratios: np.ndarray, layers: Sequence[str], *,
                    nm: tuple[int, int] = (2, 4), block: tuple[int, int] = (1, 4)) -> list[Plan]:
    """Inverse of :func:`plans_to_arrays`. Raises :class:`PlanError` for an unknown code or a
    ratio :class:`LayerChoice` refuses."""
    codes = np.asarray(codes)
    ratios = np.asarray(ratios, dtype=float)
    out = []
    for i in range(codes.shape[0]):
        choices = {}
        for j, layer in enumerate(layers):
            c = int(codes[i, j])
            if not 0 <= c < len(PATTERN_NAMES):
                raise PlanError(f"pattern code {c} unknown; valid: {PATTERN_CODES}")
            if c != _DENSE:
                choices[layer] = LayerChoice(PATTERN_NAMES[c], float(ratios[i, j]), n=nm[0], m=nm[1], block=block)
        out.append(Plan(choices))
    return out


class BatchPricer:
    """Prices ``P`` plans at once on one model, target and cost model (see the module docstring).

    ``channel_multiple``, ``min_density`` and ``dtype`` (storage and activation dtype) mean
    what they mean in :meth:`CostModel.predict`; ``nm`` and ``block`` fix the N:M and block
    shapes of the ``nm`` / ``block`` codes. ``allow_gaps`` as in ``predict``: without it a layer
    kind the cost model has no figure for raises :class:`CoverageError` at :meth:`price`.

    Static per-layer figures are taken from ``graph`` at construction; the cost model's
    parameters at every :meth:`price` call (through :meth:`CostModel.price_batch`), so a pricer
    stays right after ``cost_model.refit``. Not thread-safe to construct; :meth:`price` only
    reads the pricer and may run in several threads. ``chunk``: plans priced per vectorised
    block (larger inputs are split; it only affects speed).

    Raises :class:`CostModelError` when ``target`` is not the cost model's target or ``dtype``
    is unknown, :class:`PlanError` for an invalid ``nm`` or ``block``.
    """

    chunk = 256

    def __init__(self, graph: Any, target: Any, cost_model: CostModel, *, channel_multiple: int = 8,
                 min_density: float = 0.0, dtype: str = "fp32", nm: tuple[int, int] = (2, 4),
                 block: tuple[int, int] = (1, 4), allow_gaps: bool = False) -> None:
        tid = getattr(target, "identity", str(target))
        cid = getattr(cost_model.target, "identity", str(cost_model.target))
        if tid != cid:
            raise CostModelError(f"cost model was built for target {cid!r}, the pricer was given {tid!r}; "
                                 "pass the cost model's own target")
        check_dtype(dtype)
        # The choices whose storage the weight patterns price (storage does not depend on the ratio);
        # building them validates n:m and the block size (PlanError).
        self._storage_choice = {_UNSTR: LayerChoice("unstructured", 0.5), _NM: LayerChoice("nm", n=nm[0], m=nm[1]),
                                _BLOCK: LayerChoice("block", 0.5, block=block)}
        self.graph, self.target, self.cost_model = graph, target, cost_model
        self.channel_multiple, self.min_density, self.dtype = int(channel_multiple), float(min_density), dtype
        self.nm, self.block, self.allow_gaps = (int(nm[0]), int(nm[1])), (int(block[0]), int(block[1])), allow_gaps
        self._precompute()
        self.vectorised = self._can_vectorise(cost_model)
        if not self.vectorised:
            log.warning("BatchPricer: cost model %s (%s) has no vectorised path (price_batch gives None) or "
                        "patterns other than the built-in ones are registered; pricing plan by plan through "
                        "predict() — correct but not vectorised", cost_model.identity, type(cost_model).__name__)

    # ---- set-up ------------------------------------------------------------------------------
    def _can_vectorise(self, cm: CostModel) -> bool:
        builtin = (tuple(_patterns.names()) == PATTERN_NAMES and set(PATTERN_NAMES) == set(_BUILTIN_PATTERNS)
                   and all(type(_patterns.get(n)) is c for n, c in _BUILTIN_PATTERNS.items()))
        if not builtin:
            return False
        i, f = np.zeros((0, len(self._layers)), dtype=np.int64), np.zeros((0, len(self._layers)))
        probe = self._plan_arrays(i, i, i, i, i, i, i, i, f, i.astype(bool), f, f,
                                  np.zeros((0, len(self._ops))))  # an empty batch
        return cm.price_batch(probe) is not None

    @property
    def layers(self) -> list[str]:
        """Column order of the ``patterns`` / ``ratios`` arrays (the layer table's order)."""
        return list(self._layers)

    @property
    def channel_layers(self) -> list[str]:
        """Layers that may take ``channel``: prunable channel-group leaders whose group
        ``resolve`` can shrink (balanced over grouped convs)."""
        return [n for n, ok in zip(self._layers, self._chan_ok) if ok]

    def _precompute(self) -> None:
        self._precompute_layers()
        gidx = self._precompute_groups()
        self._precompute_inputs(gidx)
        self._precompute_activations(gidx)
        self._ops = op_table(self.graph, glue=bool(getattr(self.cost_model, "prices_glue", False)))
        # each op's input channel group as a column of the (P, G) kept matrix; -1: never shrinks
        self._op_gcol = np.array([gidx.get(int(g), -1) if int(g) >= 0 else -1 for g in self._ops["group"]],
                                 dtype=np.int64)
        self._precompute_heads()

    def _precompute_heads(self) -> None:
        """Attention blocks whose heads may go: the table columns of each (q, k, v, output
        projection), their head geometry, and the op columns of their attention ops."""
        t = self.graph.table
        col = {name: j for j, name in enumerate(self._layers)}
        L = len(self._layers)
        self._head_ok = np.zeros(L, dtype=bool)
        self._qhead_ok = np.zeros(L, dtype=bool)
        self._heads: list[tuple[int, dict[str, int], tuple[int, int, int, int], list[int]]] = []
        if "head_role" not in t.columns:
            return
        op_leaders = list(self._ops["head_leader"]) if "head_leader" in self._ops.columns else []
        for q in t.index[t["head_role"].astype(str) == "q"]:
            block = t[t["head_leader"] == q]
            members = {str(role): col[name] for name, role in zip(block.index, block["head_role"])}
            geo = tuple(int(t.at[q, c]) for c in ("heads", "kv_heads", "head_dim", "v_head_dim"))
            self._heads.append((col[q], members, geo, [i for i, lead in enumerate(op_leaders) if lead == q]))
            self._head_ok[col[q]] = True
            self._qhead_ok[col[q]] = geo[0] // geo[1] > 1

    def _precompute_layers(self) -> None:
        """Per-layer constants of the layer table."""
        t = self.graph.table
        self._layers = list(t.index)
        self._kind = t["kind"].astype(str).to_numpy()
        self._static_sig = [static_signature(t.loc[n]) for n in self._layers]
        self._in_c = t["in_channels"].to_numpy(dtype=np.int64)
        self._out_c = t["out_channels"].to_numpy(dtype=np.int64)
        self._ngroups = t["groups"].to_numpy(dtype=np.int64)
        self._ke = t["kernel_elems"].to_numpy(dtype=np.int64)
        macs = t["macs"].to_numpy(dtype=np.int64)
        self._spatial = macs // np.maximum(1, self._out_c * (self._in_c // self._ngroups) * self._ke)
        self._has_bias = t["has_bias"].to_numpy(dtype=bool)
        self._ex_bytes = t["dtype_bytes"].to_numpy(dtype=float)
        self._act_in = t["act_in_bytes"].to_numpy(dtype=np.int64)
        self._act_out = t["act_out_bytes"].to_numpy(dtype=np.int64)
        self._coupled_dw = np.array([k == "depthwise" and i == o for k, i, o in
                                     zip(self._kind, self._in_c, self._out_c)], dtype=bool)

    def _precompute_groups(self) -> dict[int, int]:
        """Channel groups: which leaders may take "channel", and how their kept count is rounded.
        Returns each group id's column in the ``(P, G)`` kept matrix."""
        g = self.graph
        t = g.table
        L = len(self._layers)
        col = {n: j for j, n in enumerate(self._layers)}
        self._gids = sorted(g.groups)
        gidx = {gid: k for k, gid in enumerate(self._gids)}
        G = len(self._gids)
        self._g_channels = np.array([int(g.groups[gid].channels) for gid in self._gids], dtype=np.int64)
        self._g_leader = np.array([col.get(g.groups[gid].leader, -1) for gid in self._gids], dtype=np.int64)
        self._g_nseg = np.ones(G, dtype=np.int64)
        self._chan_ok = np.zeros(L, dtype=bool)
        out_group = t["out_group"].to_numpy(dtype=np.int64)
        leader = t["group_leader"].to_numpy(dtype=bool)
        prunable = t["channel_prunable"].to_numpy(dtype=bool)
        for k, gid in enumerate(self._gids):
            lj = int(self._g_leader[k])
            if lj < 0 or not (leader[lj] and prunable[lj] and out_group[lj] == gid):
                continue
            try:
                seg = channel_segments(t, g.groups, gid)
            except PlanError:
                continue  # resolve refuses channel pruning of this group: choosing it is invalid
            nseg = len(set(seg)) if seg is not None else 1
            if nseg > 1 and nseg >= self._g_channels[k]:
                continue
            self._g_nseg[k] = nseg
            self._chan_ok[lj] = True
        # Output group of each layer as a column of the (P, G) kept matrix; -1: never pruned.
        self._out_gcol = np.array([gidx.get(int(og), -1) if og >= 0 else -1 for og in out_group], dtype=np.int64)
        return gidx

    def _precompute_inputs(self, gidx: dict[int, int]) -> None:
        """Input side: removed input columns = Σ over feeding slices of removed channels × expand;
        per grouped conv, how many channels of each feeding group land in each conv group."""
        t = self.graph.table
        G, L = len(self._gids), len(self._layers)
        self._in_expand = np.zeros((G, L), dtype=float)
        self._grouped: list[tuple[int, int, list[tuple[int, np.ndarray]]]] = []
        for j, layer in enumerate(self._layers):
            if self._coupled_dw[j]:
                continue
            row = t.loc[layer]
            slices = [(gidx[sg], off, e) for sg, off, e in input_slices(row) if sg in gidx]
            for k, _, e in slices:
                self._in_expand[k, j] += e
            ng = int(self._ngroups[j])
            if ng > 1 and slices:
                per = int(self._in_c[j]) // ng
                counts = []
                for k, off, e in slices:
                    ch = int(self._g_channels[k])
                    pos = off + np.arange(ch) * e
                    counts.append((k, np.array([int(((pos >= q * per) & (pos < (q + 1) * per)).sum())
                                                for q in range(ng)], dtype=float)))
                self._grouped.append((j, per, counts))

    def _precompute_activations(self, gidx: dict[int, int]) -> None:
        """Which tensors are live at each step; steps whose live set is contained in another
        step's (with positive extra bytes) cannot set the peak and are dropped."""
        acts = self.graph.activations
        self._act_bytes = acts["bytes"].to_numpy(dtype=float) if not acts.empty else np.zeros(0)
        self._act_gcol = np.array([gidx.get(int(a), -1) if int(a) >= 0 else -1 for a in acts.get("group", [])],
                                  dtype=np.int64)
        live_sets: list[np.ndarray] = []
        if not acts.empty:
            start = acts["produced"].to_numpy()
            end = acts["last_use"].to_numpy()
            M = np.stack([(start <= s) & (end >= s) for s in np.unique(start)]).astype(float)
            W = M * self._act_bytes[None, :]
            subset = (M @ (1.0 - M).T) == 0                      # subset[a, b]: set a within set b
            extra = W.sum(axis=1)[None, :] - M @ W.T              # bytes of b outside a (exact: integers)
            dominated = (subset & (extra > 0)).any(axis=1)
            live_sets = [np.nonzero(row)[0] for row in np.unique(M[~dominated].astype(bool), axis=0)]
        self._live_sets = live_sets

    # ---- helpers -----------------------------------------------------------------------------
    def plans_to_arrays(self, plans: Iterable[Plan]) -> tuple[np.ndarray, np.ndarray]:
        """:func:`plans_to_arrays` over this pricer's layers, N:M and block shapes."""
        return plans_to_arrays(plans, self._layers, nm=self.nm, block=self.block)

    def arrays_to_plans(self, codes: np.ndarray, ratios: np.ndarray) -> list[Plan]:
        """:func:`arrays_to_plans` over this pricer's layers, N:M and block shapes."""
        return arrays_to_plans(codes, ratios, self._layers, nm=self.nm, block=self.block)

    def price_plans(self, plans: Iterable[Plan], *, details: bool = False) -> dict[str, np.ndarray]:
        """:meth:`price` of a list of :class:`Plan` objects."""
        codes, ratios = self.plans_to_arrays(plans)
        return self.price(codes, ratios, details=details)

    def _kept_group(self, k: int, r: np.ndarray) -> np.ndarray:
        """Kept channels of group column ``k`` for ratios ``r`` (``plan._kept_in_group``)."""
        c = int(self._g_channels[k])
        nseg = int(self._g_nseg[k])
        mult = self.channel_multiple
        floor = math.ceil(self.min_density * c - 1e-9)
        if nseg <= 1:
            want = c * (1.0 - r)
            if c <= mult:
                kept = np.maximum(1.0, np.rint(want))
                kept = np.where(kept < floor, float(floor), kept)
            else:
                kept = np.maximum(float(mult), np.rint(want / mult) * mult)
                kept = np.where(kept < floor, float(min(c, math.ceil(floor / mult) * mult)), kept)
        else:
            step = math.lcm(mult, nseg)
            if c % step:
                step = nseg
            kept = np.maximum(float(step), np.rint(c * (1.0 - r) / step) * step)
            kept = np.where(kept < floor, float(math.ceil(floor / step) * step), kept)
        return np.minimum(float(c), kept).astype(np.int64)

    # ---- pricing -----------------------------------------------------------------------------
    def price(self, patterns: np.ndarray, ratios: np.ndarray, *, details: bool = False) -> dict[str, np.ndarray]:
        """Price ``P`` plans given as ``P × L`` pattern codes (:data:`PATTERN_CODES`, columns in
        :attr:`layers` order) and ratios (fraction removed; ignored for dense and N:M).

        Returns arrays of length ``P``: ``latency_s`` (seconds, float), ``flash_bytes`` and
        ``sram_bytes`` (int64 bytes), ``macs`` (MACs after channel removal, int64) and ``valid``
        (bool: False where ``resolve`` would raise :class:`PlanError`; then latency is NaN and
        the byte counts -1). With ``details``, also ``P × L`` arrays ``layer_latency_s``,
        ``kept_out``, ``kept_in``, ``dense_macs``, ``nnz``, ``layer_flash_bytes``.
        Raises :class:`CostModelError` for arrays of the wrong shape and :class:`CoverageError`
        for layer kinds the cost model cannot price (unless ``allow_gaps``).
        """
        codes = np.asarray(patterns)
        r_in = np.asarray(ratios, dtype=np.float64)
        L = len(self._layers)
        if codes.ndim != 2 or codes.shape[1] != L or r_in.shape != codes.shape:
            raise CostModelError(f"patterns and ratios must both be P x {L} arrays (columns: BatchPricer.layers), "
                                 f"got {codes.shape} and {r_in.shape}")
        if not self.vectorised:
            return self._price_loop(codes, r_in, details)
        codes = codes.astype(np.int64, copy=False)
        if codes.shape[0] > self.chunk:
            # Blocks of ``chunk`` plans keep the P × L temporaries in cache (faster per plan).
            parts = [self.price(codes[i:i + self.chunk], r_in[i:i + self.chunk], details=details)
                     for i in range(0, codes.shape[0], self.chunk)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        valid, r = self._valid_ratios(codes, r_in)
        kept_g, kept_in, kept_out, valid = self._resolve_channels(codes, r, valid)
        op_frac = self._resolve_heads(codes, r, kept_in, kept_out, self._op_frac(kept_g))
        arrays, valid = self._resolve_weights(codes, r, kept_in, kept_out, op_frac, valid)
        lat = self._latency(arrays)
        layer_flash = self._layer_flash(arrays)
        sram = self._peak_sram(kept_g, codes.shape[0])
        out = {"latency_s": np.where(valid, lat.latency_s, math.nan),
               "flash_bytes": np.where(valid, layer_flash.sum(axis=1), -1).astype(np.int64),
               "sram_bytes": np.where(valid, sram, -1).astype(np.int64),
               "macs": np.where(valid, arrays.dense_macs.sum(axis=1), -1).astype(np.int64),
               "valid": valid}
        if details:
            out.update(layer_latency_s=lat.layer_latency_s, kept_out=kept_out, kept_in=kept_in,
                       dense_macs=arrays.dense_macs, nnz=arrays.nnz, layer_flash_bytes=layer_flash)
        return out

    def _op_frac(self, kept_g: np.ndarray) -> np.ndarray:
        """``P × O`` kept fraction of every op (``out_frac`` of its input's channel group; 1 when
        the group is -1 or never pruned), as :func:`costmodels.ops.kept_fraction` per plan."""
        frac = np.ones((kept_g.shape[0], len(self._ops)))
        has_g = self._op_gcol >= 0
        if has_g.any():
            frac[:, has_g] = (kept_g / self._g_channels[None, :])[:, self._op_gcol[has_g]]
        return frac

    def _kept_units(self, units: int, r: np.ndarray) -> np.ndarray:
        """:func:`hwsearch.core.resolve.kept_units` for ratios ``r``."""
        floor = math.ceil(self.min_density * units - 1e-9)
        kept = np.maximum(np.maximum(1.0, np.rint(units * (1.0 - r))), float(floor))
        return np.where(r <= 0.0, units, np.minimum(float(units), kept)).astype(np.int64)

    def _resolve_heads(self, codes: np.ndarray, r: np.ndarray, kept_in: np.ndarray, kept_out: np.ndarray,
                       op_frac: np.ndarray) -> np.ndarray:
        """``resolve``'s head stage (:func:`hwsearch.core.resolve.head_shapes`), in place on
        ``kept_in`` / ``kept_out``; returns ``op_frac`` with each pruned block's attention ops at
        its kept fraction of query heads."""
        for qj, members, (h, hkv, d, dv), op_cols in self._heads:
            is_h, is_q = codes[:, qj] == _HEAD, codes[:, qj] == _QHEAD
            if not (is_h.any() or is_q.any()):
                continue
            g = h // hkv
            kh = self._kept_units(hkv, r[:, qj])
            kq = self._kept_units(g, r[:, qj]) if g > 1 else np.full(len(r), g)
            kept_h = np.where(is_h, kh * g, np.where(is_q, hkv * kq, h))
            kept_kv = np.where(is_h, kh, hkv)
            sel = is_h | is_q
            for role, width in (("q", kept_h * d), ("k", kept_kv * d), ("v", kept_kv * dv)):
                if role in members:
                    j = members[role]
                    kept_out[:, j] = np.where(sel, width, kept_out[:, j])
            if "o" in members:
                j = members["o"]
                kept_in[:, j] = np.where(sel, kept_h * dv, kept_in[:, j])
            for c in op_cols:
                op_frac[:, c] = np.where(sel, kept_h / h, op_frac[:, c])
        return op_frac

    def _valid_ratios(self, codes: np.ndarray, r_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Plans with known codes, ratios in [0, 1) where a pattern uses one, and channel choices
        only where allowed; the ratios used (0 where ignored or out of range)."""
        valid = ((codes >= 0) & (codes < len(PATTERN_NAMES))).all(axis=1)
        uses_ratio = (codes == _UNSTR) | (codes == _CHAN) | (codes == _BLOCK) | (codes == _HEAD) | (codes == _QHEAD)
        ok_ratio = (r_in >= 0.0) & (r_in < 1.0)  # NaN compares False: invalid
        valid &= ~(uses_ratio & ~ok_ratio).any(axis=1)
        r = np.where(uses_ratio & ok_ratio, r_in, 0.0)
        valid &= ~((codes == _CHAN) & ~self._chan_ok[None, :]).any(axis=1)
        valid &= ~((codes == _HEAD) & ~self._head_ok[None, :]).any(axis=1)
        valid &= ~((codes == _QHEAD) & ~self._qhead_ok[None, :]).any(axis=1)
        return valid, r

    def _resolve_channels(self, codes: np.ndarray, r: np.ndarray,
                          valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``resolve``'s channel stage: kept channels per group ``(P, G)``, kept input and output
        channels per layer ``(P, L)``, and validity (grouped convs left unbalanced are invalid)."""
        P, L, G = codes.shape[0], len(self._layers), len(self._gids)
        chan = codes == _CHAN
        kept_g = np.broadcast_to(self._g_channels, (P, G)).copy()
        chosen = np.zeros((P, G), dtype=bool)  # the plan gives the group a channel ratio
        for k in range(G):
            lj = int(self._g_leader[k])
            if lj < 0 or not self._chan_ok[lj]:
                continue
            sel = chan[:, lj]
            if sel.any():
                kept_g[:, k] = np.where(sel, self._kept_group(k, r[:, lj]), self._g_channels[k])
                chosen[:, k] = sel
        frac_removed = 1.0 - kept_g / self._g_channels[None, :]          # resolve's removed_frac
        rem_g = np.rint(self._g_channels[None, :] * frac_removed)        # removed channels per group
        kept_out = np.broadcast_to(self._out_c, (P, L)).copy()
        has_g = self._out_gcol >= 0
        # as resolve: a layer keeps its own width unless its group takes a channel ratio (a member
        # whose width is not the group's, as analysis can give, must not take the group's)
        gcol = self._out_gcol[has_g]
        kept_out[:, has_g] = np.where(chosen[:, gcol], kept_g[:, gcol], self._out_c[None, has_g])
        kept_in = self._in_c[None, :] - np.rint(rem_g @ self._in_expand).astype(np.int64)
        kept_in = np.where(self._coupled_dw[None, :], kept_out, kept_in)
        valid = valid.copy()
        for j, per, counts in self._grouped:
            per_group = np.full((P, counts[0][1].size), float(per))
            for k, n_in in counts:
                per_group -= np.rint(n_in[None, :] * frac_removed[:, k:k + 1])
            valid &= (per_group == per_group[:, :1]).all(axis=1)
        return kept_g, kept_in, kept_out, valid

    def _resolve_weights(self, codes: np.ndarray, r: np.ndarray, kept_in: np.ndarray, kept_out: np.ndarray,
                         op_frac: np.ndarray, valid: np.ndarray) -> tuple[PlanArrays, np.ndarray]:
        """``resolve``'s weight stage: dense weights and MACs of the kept shape, weight density and
        nonzeros of the weight patterns, kept activation bytes; validity of N:M and block shapes."""
        P, L = codes.shape
        per_group_in = np.where(self._coupled_dw[None, :], 1, kept_in // self._ngroups[None, :])
        rows = kept_out
        cols = per_group_in * self._ke[None, :]
        dense_weights = rows * cols
        dense_macs = self._spatial[None, :] * dense_weights
        n, m = self.nm
        bh, bw = self.block
        is_u, is_nm, is_b = codes == _UNSTR, codes == _NM, codes == _BLOCK
        valid = valid & ~(is_nm & (cols % m != 0)).any(axis=1)
        valid &= ~(is_b & ((rows % bh != 0) | (cols % bw != 0))).any(axis=1)
        valid &= ~((is_u | is_b) & (dense_weights == 0)).any(axis=1)
        # Each weight pattern is computed on its own entries only (most entries are dense/channel).
        density = np.ones((P, L))
        nnz = dense_weights.copy()
        iu, ib = np.nonzero(is_u), np.nonzero(is_b)
        if iu[0].size:
            tot = np.maximum(dense_weights[iu], 1)
            kf = np.maximum(1.0 - r[iu], self.min_density)
            density[iu] = np.minimum(tot, np.maximum(1.0, np.ceil(tot * kf - 1e-9))) / tot
        if ib[0].size:
            nb = np.maximum((rows[ib] // bh) * (cols[ib] // bw), 1)
            kf = np.maximum(1.0 - r[ib], self.min_density)
            density[ib] = np.minimum(nb, np.maximum(1.0, np.ceil(nb * kf - 1e-9))) / nb
        density[is_nm] = n / m
        weight_level = is_u | is_nm | is_b
        nnz[weight_level] = np.rint(dense_weights[weight_level] * density[weight_level]).astype(np.int64)
        act_out_kept = np.rint(self._act_out[None, :] * (kept_out / self._out_c[None, :]))
        act_in_kept = np.rint(self._act_in[None, :] * (kept_in / self._in_c[None, :]))
        arrays = self._plan_arrays(codes, kept_in, kept_out, rows, cols, dense_weights, dense_macs, nnz, density,
                                   weight_level, act_in_kept, act_out_kept, op_frac)
        return arrays, valid

    def _plan_arrays(self, codes: np.ndarray, kept_in: np.ndarray, kept_out: np.ndarray, rows2d: np.ndarray,
                     cols2d: np.ndarray, dense_weights: np.ndarray, dense_macs: np.ndarray, nnz: np.ndarray,
                     density: np.ndarray, weight_level: np.ndarray, act_in_kept: np.ndarray,
                     act_out_kept: np.ndarray, op_frac: np.ndarray) -> PlanArrays:
        return PlanArrays(layers=tuple(self._layers), kind=self._kind, static=tuple(self._static_sig),
                          example_bytes=self._ex_bytes, patterns=PATTERN_NAMES, codes=codes, kept_in=kept_in,
                          kept_out=kept_out, rows2d=rows2d, cols2d=cols2d, dense_weights=dense_weights,
                          dense_macs=dense_macs, nnz=nnz, density=density, weight_level=weight_level,
                          act_in_bytes_kept=act_in_kept, act_out_bytes_kept=act_out_kept, ops=self._ops,
                          op_frac=op_frac)

    def _latency(self, arrays: PlanArrays) -> BatchLatency:
        """The cost model's :meth:`CostModel.price_batch`; :class:`CoverageError` for layers it has
        no figure for, and ops of kinds it does not price, unless ``allow_gaps``."""
        lat = self.cost_model.price_batch(arrays)
        if lat is None:  # the contract: None depends on the model only, and the probe said it has a path
            raise CostModelError(f"cost model {self.cost_model.identity} stopped pricing batches after this "
                                 "pricer was built; build a new BatchPricer")
        gaps = list(lat.coverage_gaps)
        # checked here too: a model's price_batch that skipped the ops would price them as zero
        op_lat = lat.op_latency_s if lat.op_latency_s is not None else np.full(len(self._ops), math.nan)
        gaps += [g for g in op_gaps(self._ops, self.cost_model.priced_op_kinds, op_lat) if g not in gaps]
        if gaps and not self.allow_gaps:
            kinds = sorted({str(k) for layer, k in zip(self._layers, self._kind) if layer in set(gaps)})
            raise CoverageError(f"cost model {self.cost_model.kind} has no latency figure for layers {gaps} "
                                f"(kinds {kinds}; <ops> are compute ops without a layer row); refit it with "
                                "measurements of those layers, price them with a model that does, or use "
                                "allow_gaps=True to report them")
        return lat

    def _layer_flash(self, a: PlanArrays) -> np.ndarray:
        """``P × L`` weight storage (:func:`costmodels.memory.layer_storage`): each pattern's
        :meth:`~hwsearch.core.patterns.Pattern.storage_bytes_array`, biases, int8 parameters."""
        db = DTYPE_BYTES[self.dtype]
        weights_b = a.dense_weights * db                                 # dense, channel, unknown codes
        for code, choice in self._storage_choice.items():
            sel = np.nonzero(a.codes == code)
            if sel[0].size:
                weights_b[sel] = _patterns.get(PATTERN_NAMES[code]).storage_bytes_array(
                    a.rows2d[sel], a.cols2d[sel], a.nnz[sel], choice, db)
        bias_b = a.kept_out * (self._has_bias * bias_bytes_per_channel(self.dtype))[None, :]
        qp_b = a.kept_out * QPARAM_BYTES_PER_CHANNEL if self.dtype == "int8" else 0
        return weights_b + bias_b + qp_b

    def _peak_sram(self, kept_g: np.ndarray, P: int) -> np.ndarray:
        if not self._live_sets:
            return np.zeros(P, dtype=np.int64)
        ex_b = float(self._ex_bytes[0])
        dtype_scale = DTYPE_BYTES[self.dtype] / ex_b
        gfrac = kept_g / self._g_channels[None, :]                      # out_frac of each group
        frac = np.ones((P, len(self._act_bytes)))
        has_g = self._act_gcol >= 0
        frac[:, has_g] = gfrac[:, self._act_gcol[has_g]]
        size = self._act_bytes[None, :] * frac * dtype_scale
        peak = np.full(P, -np.inf)
        for idx in self._live_sets:
            # a contiguous copy summed along its rows: the summation order of the loop's 1-D sum
            np.maximum(peak, np.ascontiguousarray(size[:, idx]).sum(axis=1), out=peak)
        return np.ceil(peak).astype(np.int64)

    def _price_loop(self, codes: np.ndarray, ratios: np.ndarray, details: bool) -> dict[str, np.ndarray]:
        P, L = codes.shape
        out = {"latency_s": np.full(P, math.nan), "flash_bytes": np.full(P, -1, dtype=np.int64),
               "sram_bytes": np.full(P, -1, dtype=np.int64), "macs": np.full(P, -1, dtype=np.int64),
               "valid": np.zeros(P, dtype=bool)}
        if details:
            for key in ("kept_out", "kept_in", "dense_macs", "nnz", "layer_flash_bytes"):
                out[key] = np.full((P, L), -1, dtype=np.int64)
            out["layer_latency_s"] = np.full((P, L), math.nan)
        for i in range(P):
            try:
                plan = self.arrays_to_plans(codes[i:i + 1], ratios[i:i + 1])[0]
                res = resolve(self.graph.table, self.graph.groups, plan, channel_multiple=self.channel_multiple,
                              min_density=self.min_density)
            except PlanError:
                continue
            cost = self.cost_model.predict(self.graph, plan, dtype=self.dtype, resolved=res,
                                           allow_gaps=self.allow_gaps)
            out["latency_s"][i] = cost.latency_s
            out["flash_bytes"][i] = cost.flash_bytes
            out["sram_bytes"][i] = cost.sram_bytes
            out["macs"][i] = int(res["dense_macs"].sum())
            out["valid"][i] = True
            if details:
                for key in ("kept_out", "kept_in", "dense_macs", "nnz"):
                    out[key][i] = res[key].to_numpy()
                out["layer_flash_bytes"][i] = cost.layers["flash_bytes"].to_numpy()
                out["layer_latency_s"][i] = cost.layers["latency_s"].to_numpy()
        return out

    def throughput(self, n: int = 2000, *, seed: int = 0, repeats: int = 5) -> float:
        """Median plans per second of :meth:`price` on ``n`` random valid-looking plans (for
        benchmarks and logs; not a test criterion)."""
        codes, ratios = self.random_arrays(n, seed=seed)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.price(codes, ratios)
            times.append(time.perf_counter() - t0)
        return n / float(np.median(times))

    def random_arrays(self, n: int, *, seed: int = 0, max_ratio: float = 0.9,
                      codes_allowed: Sequence[str] = ("dense", "unstructured", "channel")) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random plans as arrays: per layer a pattern drawn from ``codes_allowed``
        (``channel``, ``head`` and ``qhead`` only where the layer may take them) and a ratio in
        [0, ``max_ratio``)."""
        rng = np.random.default_rng(seed)
        L = len(self._layers)
        allowed = [PATTERN_CODES[p] for p in codes_allowed]
        codes = rng.choice(np.array(allowed), size=(n, L))
        codes = np.where((codes == _CHAN) & ~self._chan_ok[None, :], _DENSE, codes)
        codes = np.where((codes == _HEAD) & ~self._head_ok[None, :], _DENSE, codes)
        codes = np.where((codes == _QHEAD) & ~self._qhead_ok[None, :], _DENSE, codes)
        ratios = rng.uniform(0.0, max_ratio, size=(n, L))
        return codes, ratios
