"""Sparsity patterns: a mask builder, validity checks and the exact storage each implies.

Every pattern works on a layer's 2-D weight view ``rows × cols`` with rows = output
channels and cols = input channels per group × kernel elements (the reduction dimension of the
layer's GEMM), after channel pruning has removed whole rows/columns. For convolutions the
columns are ordered as the implicit GEMM of channels-last kernels reads them — kernel position
outer, input channel inner (:func:`gemm_view`) — so N:M groups and blocks run along input
channels, the layout of NVIDIA's sparse tensor cores (ASP) and of CMSIS-NN-style MCU kernels.

Storage is counted in bytes, exactly, for the format a kernel would read:

========== ======================================================================================
dense      ``rows·cols`` values
channel    dense storage of the smaller tensor (channel removal happens before this view)
unstructured  ``nnz`` values + the smaller index of CSR (``nnz`` column indices of
           1/2/4 bytes for cols ≤ 2⁸/2¹⁶/more, and ``rows+1`` row pointers of 2 bytes when
           nnz < 2¹⁶ else 4) or a bitmask (``ceil(rows·cols/8)`` bytes)
nm         ``rows·cols·N/M`` values + ``ceil(log2 M)`` bits of index metadata per kept value,
           packed (the layout of NVIDIA's sparse tensor cores for 2:4: 2 bits per value)
block      kept blocks × ``bh·bw`` values + BSR index: one column index per kept block
           (1/2/4 bytes as above) and ``rows/bh + 1`` block-row pointers (2 or 4 bytes)
head,      dense storage of the smaller projections (heads are removed before this view)
qhead
========== ======================================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from hwsearch.core.errors import PlanError

if TYPE_CHECKING:  # a plan's choices are validated against this registry: plan imports patterns
    from hwsearch.core.plan import LayerChoice

__all__ = ["Pattern", "StorageBytes", "STRUCTURAL", "HEAD_PATTERNS", "NMCompressed", "nm_compress", "nm_decompress", "get", "names",
           "register", "idx_bytes_array", "ptr_bytes_array"]


@dataclass(frozen=True)
class StorageBytes:
    """Bytes of one layer's weight storage: ``values_bytes`` + ``index_bytes``; ``fmt`` names
    the format chosen (``dense``, ``csr``, ``bitmask``, ``nm``, ``bsr``)."""

    values_bytes: int
    index_bytes: int
    fmt: str

    @property
    def total_bytes(self) -> int:
        return self.values_bytes + self.index_bytes


# One threshold set for the scalar and the array forms of the index widths below.
_IDX_1B_MAX = 256      # column indices up to this count fit 1 byte
_IDX_2B_MAX = 65536    # ... up to this one 2 bytes, else 4
_PTR_2B_BELOW = 65536  # row pointers below this value fit 2 bytes, else 4


def _idx_bytes(max_value: int) -> int:
    return 1 if max_value <= _IDX_1B_MAX else 2 if max_value <= _IDX_2B_MAX else 4


def _ptr_bytes(max_value: int) -> int:
    return 2 if max_value < _PTR_2B_BELOW else 4


def idx_bytes_array(max_value: np.ndarray) -> np.ndarray:
    """Bytes of one column index for ``max_value`` columns, element-wise (int64; the array
    form of the CSR / BSR index width the scalar :meth:`Pattern.storage` uses)."""
    v = np.asarray(max_value)
    return np.where(v <= _IDX_1B_MAX, 1, np.where(v <= _IDX_2B_MAX, 2, 4)).astype(np.int64)


def ptr_bytes_array(max_value: np.ndarray) -> np.ndarray:
    """Bytes of one row pointer whose largest value is ``max_value``, element-wise (int64)."""
    return np.where(np.asarray(max_value) < _PTR_2B_BELOW, 2, 4).astype(np.int64)


def gemm_view(w: torch.Tensor) -> torch.Tensor:
    """``rows × cols`` view of a weight with input channels fastest: a conv weight
    ``(out, in, *k)`` becomes ``(out, *k, in)`` flattened; a linear weight is unchanged."""
    if w.dim() <= 2:
        return w.reshape(w.shape[0], -1)
    return w.movedim(1, -1).reshape(w.shape[0], -1)


def from_gemm_view(v: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`gemm_view` for a tensor of the weight's ``shape``."""
    if len(shape) <= 2:
        return v.reshape(shape)
    return v.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


class Pattern:
    """Contract for a sparsity pattern. Subclasses are stateless and registered by ``name``.

    * :meth:`check` raises :class:`PlanError` (with the fix) when a shape cannot take the choice;
    * :meth:`weight_density` is the fraction of the 2-D view's weights kept (1.0 for structural
      patterns: channel removal is accounted for in the view itself);
    * :meth:`mask` returns a boolean keep-mask of ``scores``' shape (higher score = keep);
    * :meth:`storage` returns exact bytes for ``nnz`` kept weights.
    """

    name = "dense"
    weight_level = False  # True: zeros inside the weight tensor; False: none or whole channels

    def check(self, layer: str, rows: int, cols: int, choice: LayerChoice, *, channels: int | None = None) -> None:
        """``channels``: input channels per group (the fastest-varying part of ``cols``)."""
        return None

    def weight_density(self, rows: int, cols: int, choice: LayerChoice, min_density: float = 0.0) -> float:
        return 1.0

    def mask(self, scores: torch.Tensor, choice: LayerChoice, min_density: float = 0.0) -> torch.Tensor:
        return torch.ones_like(scores, dtype=torch.bool)

    def storage(self, rows: int, cols: int, nnz: int, choice: LayerChoice, dtype_bytes: int) -> StorageBytes:
        return StorageBytes(rows * cols * dtype_bytes, 0, "dense")

    def storage_bytes_array(self, rows: np.ndarray, cols: np.ndarray, nnz: np.ndarray, choice: LayerChoice,
                            dtype_bytes: int) -> np.ndarray:
        """:meth:`storage`'s ``total_bytes`` element-wise over equal-shaped int arrays (int64).
        This default calls :meth:`storage` per element, so it is right for any subclass; the
        built-in patterns override it with numpy arithmetic that gives the same integers."""
        r, c, z = (np.asarray(a, dtype=np.int64) for a in (rows, cols, nnz))
        out = [self.storage(int(a), int(b), int(n), choice, dtype_bytes).total_bytes
               for a, b, n in zip(r.ravel(), c.ravel(), z.ravel())]
        return np.asarray(out, dtype=np.int64).reshape(r.shape)


def _dense_bytes_array(rows: np.ndarray, cols: np.ndarray, dtype_bytes: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64) * np.asarray(cols, dtype=np.int64) * dtype_bytes


class Dense(Pattern):
    name = "dense"

    def storage_bytes_array(self, rows: np.ndarray, cols: np.ndarray, nnz: np.ndarray, choice: LayerChoice,
                            dtype_bytes: int) -> np.ndarray:
        return _dense_bytes_array(rows, cols, dtype_bytes)


class Channel(Pattern):
    """Whole output channels removed through the dependency group (see :mod:`hwsearch.prune`)."""

    name = "channel"

    def storage_bytes_array(self, rows: np.ndarray, cols: np.ndarray, nnz: np.ndarray, choice: LayerChoice,
                            dtype_bytes: int) -> np.ndarray:
        return _dense_bytes_array(rows, cols, dtype_bytes)


class Unstructured(Pattern):
    name = "unstructured"
    weight_level = True

    def weight_density(self, rows: int, cols: int, choice: LayerChoice, min_density: float = 0.0) -> float:
        total = rows * cols
        kept = max(1, math.ceil(total * max(1.0 - choice.ratio, min_density) - 1e-9))
        return min(total, kept) / total

    def mask(self, scores: torch.Tensor, choice: LayerChoice, min_density: float = 0.0) -> torch.Tensor:
        total = scores.numel()
        kept = round(self.weight_density(1, total, choice, min_density) * total)
        keep = torch.zeros(total, dtype=torch.bool)
        keep[torch.topk(scores.flatten().float(), kept, sorted=False).indices] = True
        return keep.view_as(scores)

    def storage(self, rows: int, cols: int, nnz: int, choice: LayerChoice, dtype_bytes: int) -> StorageBytes:
        values = nnz * dtype_bytes
        csr = nnz * _idx_bytes(cols) + (rows + 1) * _ptr_bytes(nnz)
        bitmask = math.ceil(rows * cols / 8)
        return StorageBytes(values, csr, "csr") if csr < bitmask else StorageBytes(values, bitmask, "bitmask")

    def storage_bytes_array(self, rows: np.ndarray, cols: np.ndarray, nnz: np.ndarray, choice: LayerChoice,
                            dtype_bytes: int) -> np.ndarray:
        r, c, z = (np.asarray(a, dtype=np.int64) for a in (rows, cols, nnz))
        csr = z * idx_bytes_array(c) + (r + 1) * ptr_bytes_array(z)
        bitmask = (r * c + 7) // 8
        return z * dtype_bytes + np.minimum(csr, bitmask)  # csr if csr < bitmask, as storage()


class NM(Pattern):
    """Exactly N kept in every M consecutive weights along the reduction (input) dimension."""

    name = "nm"
    weight_level = True

    def check(self, layer: str, rows: int, cols: int, choice: LayerChoice, *, channels: int | None = None) -> None:
        n = cols if channels is None else channels
        if n % choice.m:
            raise PlanError(f"{choice.n}:{choice.m} sparsity on {layer!r} needs its input channels per group "
                            f"({n}) divisible by {choice.m} (groups run along input channels); use another "
                            "pattern for this layer")

    def weight_density(self, rows: int, cols: int, choice: LayerChoice, min_density: float = 0.0) -> float:
        return choice.n / choice.m

    def mask(self, scores: torch.Tensor, choice: LayerChoice, min_density: float = 0.0) -> torch.Tensor:
        return _nm_mask(scores, choice.n, choice.m)

    def storage(self, rows: int, cols: int, nnz: int, choice: LayerChoice, dtype_bytes: int) -> StorageBytes:
        kept = rows * cols * choice.n // choice.m
        bits = max(1, math.ceil(math.log2(choice.m)))
        return StorageBytes(kept * dtype_bytes, math.ceil(kept * bits / 8), "nm")

    def storage_bytes_array(self, rows: np.ndarray, cols: np.ndarray, nnz: np.ndarray, choice: LayerChoice,
                            dtype_bytes: int) -> np.ndarray:
        kept = np.asarray(rows, dtype=np.int64) * np.asarray(cols, dtype=np.int64) * choice.n // choice.m
        bits = max(1, math.ceil(math.log2(choice.m)))
        return kept * dtype_bytes + (kept * bits + 7) // 8


def _nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores of every ``m`` consecutive columns."""
    rows = scores.shape[0]
    s = scores.reshape(rows, -1, m).float()
    keep = torch.zeros_like(s, dtype=torch.bool)
    keep.scatter_(-1, torch.topk(s, n, dim=-1).indices, True)
    return keep.view_as(scores)


class Block(Pattern):
    """Whole ``bh × bw`` blocks of the 2-D view, ranked by their summed score."""

    name = "block"
    weight_level = True

    def check(self, layer: str, rows: int, cols: int, choice: LayerChoice, *, channels: int | None = None) -> None:
        bh, bw = choice.block
        if rows % bh or cols % bw:
            raise PlanError(f"block {bh}x{bw} does not tile {layer!r}'s weight view {rows}x{cols}; "
                            "choose a block size dividing both (e.g. 1x4, 4x1)")

    def weight_density(self, rows: int, cols: int, choice: LayerChoice, min_density: float = 0.0) -> float:
        bh, bw = choice.block
        nblocks = (rows // bh) * (cols // bw)
        kept = max(1, math.ceil(nblocks * max(1.0 - choice.ratio, min_density) - 1e-9))
        return min(nblocks, kept) / nblocks

    def mask(self, scores: torch.Tensor, choice: LayerChoice, min_density: float = 0.0) -> torch.Tensor:
        bh, bw = choice.block
        rows, cols = scores.shape
        self.check("weight", rows, cols, choice)
        blocks = scores.float().reshape(rows // bh, bh, cols // bw, bw).sum(dim=(1, 3))
        kept = round(self.weight_density(rows, cols, choice, min_density) * blocks.numel())
        keep_b = torch.zeros(blocks.numel(), dtype=torch.bool)
        keep_b[torch.topk(blocks.flatten(), kept, sorted=False).indices] = True
        keep_b = keep_b.view_as(blocks)
        return keep_b.repeat_interleave(bh, 0).repeat_interleave(bw, 1)

    def storage(self, rows: int, cols: int, nnz: int, choice: LayerChoice, dtype_bytes: int) -> StorageBytes:
        bh, bw = choice.block
        kept_blocks = nnz // (bh * bw)
        index = kept_blocks * _idx_bytes(cols // bw) + (rows // bh + 1) * _ptr_bytes(kept_blocks)
        return StorageBytes(nnz * dtype_bytes, index, "bsr")

    def storage_bytes_array(self, rows: np.ndarray, cols: np.ndarray, nnz: np.ndarray, choice: LayerChoice,
                            dtype_bytes: int) -> np.ndarray:
        bh, bw = choice.block
        r, c, z = (np.asarray(a, dtype=np.int64) for a in (rows, cols, nnz))
        kept_blocks = z // (bh * bw)
        return z * dtype_bytes + kept_blocks * idx_bytes_array(c // bw) + (r // bh + 1) * ptr_bytes_array(kept_blocks)


class Head(Pattern):
    """Whole attention heads removed from an attention block, given on its query projection: with
    grouped-query attention whole KV groups (a key/value head and the query heads reading it), with
    multi-head attention single heads. Physical removal, like ``channel``: the q/k/v projections
    lose the heads' output rows, the output projection their input columns (see
    :mod:`hwsearch.graph_heads`; :func:`hwsearch.core.resolve.resolve` computes the shapes)."""

    name = "head"

    def storage_bytes_array(self, rows: np.ndarray, cols: np.ndarray, nnz: np.ndarray, choice: LayerChoice,
                            dtype_bytes: int) -> np.ndarray:
        return _dense_bytes_array(rows, cols, dtype_bytes)


class QHead(Head):
    """Grouped-query attention only: the same number of query heads removed from every KV group,
    every key/value head kept (the KV cache keeps its size)."""

    name = "qhead"


#: Patterns that remove whole structures (smaller dense kernels), not zeros inside a weight.
STRUCTURAL = frozenset({"channel", "head", "qhead"})
#: Patterns given on an attention block's query projection.
HEAD_PATTERNS = frozenset({"head", "qhead"})


@dataclass(frozen=True)
class NMCompressed:
    """An N:M-sparse 2-D weight as a kernel reads it.

    ``values``: ``rows × cols·N/M`` tensor of the kept weights, row-major, the ``N`` kept of
    each group of ``M`` in ascending column order. ``indices``: ``uint8`` tensor of
    ``ceil(rows·cols·N/M · bits / 8)`` bytes holding, for every value in the same order, its
    position inside its group (``bits = ceil(log2 M)``: 2 for 2:4) packed least-significant
    bit first, without padding between rows. This is the logical content of NVIDIA's 2:4
    format (values + 2-bit metadata per kept value); cuSPARSELt additionally reorders the
    metadata bytes for its tensor-core tiles, which changes no byte count.
    ``shape`` is the dense ``(rows, cols)``.
    """

    values: torch.Tensor
    indices: torch.Tensor
    shape: tuple[int, int]
    n: int
    m: int

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(self.m)))

    def storage(self) -> StorageBytes:
        """Bytes of this layout; equal to ``get("nm").storage(...)`` for the same shape."""
        return StorageBytes(int(self.values.numel() * self.values.element_size()), int(self.indices.numel()), "nm")


def nm_compress(weight: torch.Tensor, n: int, m: int, mask: torch.Tensor | None = None) -> NMCompressed:
    """Compress a 2-D ``rows × cols`` weight to :class:`NMCompressed`.

    ``mask`` (boolean, same shape) says which weights are kept and must keep exactly ``n`` of
    every ``m`` consecutive columns; without it the ``n`` largest magnitudes of each group are
    kept. Raises :class:`PlanError` when ``weight`` is not 2-D, ``cols`` is not divisible by
    ``m``, ``0 < n < m`` does not hold, or ``mask`` breaks the N:M rule.
    """
    if weight.dim() != 2:
        raise PlanError(f"nm_compress needs a 2-D weight view (rows × cols), got shape {tuple(weight.shape)}; "
                        "reshape a conv weight with weight.reshape(weight.shape[0], -1)")
    if not 0 < n < m:
        raise PlanError(f"N:M needs 0 < N < M, got {n}:{m}")
    rows, cols = weight.shape
    if cols % m:
        raise PlanError(f"{n}:{m} compression needs the input dimension ({cols}) divisible by {m}")
    if mask is None:
        mask = _nm_mask(weight.detach().abs(), n, m)
    if tuple(mask.shape) != (rows, cols):
        raise PlanError(f"mask shape {tuple(mask.shape)} differs from weight shape {(rows, cols)}")
    groups = mask.reshape(rows, cols // m, m).bool()
    per_group = groups.sum(-1)
    if bool((per_group != n).any()):
        bad = int(per_group[per_group != n][0])
        raise PlanError(f"mask keeps {bad} weights in some group of {m}, not {n}; build it with the nm pattern")
    pos = torch.argsort((~groups).to(torch.int8), dim=-1, stable=True)[..., :n]  # kept positions, ascending
    values = weight.detach().reshape(rows, cols // m, m).gather(-1, pos).reshape(rows, cols // m * n).clone()
    bits = max(1, math.ceil(math.log2(m)))
    flat = pos.reshape(-1).numpy().astype(np.uint8)
    bitplanes = ((flat[:, None] >> np.arange(bits, dtype=np.uint8)[None, :]) & 1).reshape(-1)
    packed = np.packbits(bitplanes, bitorder="little")
    return NMCompressed(values=values, indices=torch.from_numpy(packed.copy()), shape=(rows, cols), n=n, m=m)


def nm_decompress(c: NMCompressed) -> torch.Tensor:
    """The dense ``rows × cols`` weight of a :class:`NMCompressed` (zeros where pruned)."""
    rows, cols = c.shape
    count = rows * cols // c.m * c.n
    bitplanes = np.unpackbits(c.indices.numpy(), bitorder="little")[: count * c.bits].reshape(count, c.bits)
    pos = torch.from_numpy((bitplanes.astype(np.int64) << np.arange(c.bits)[None, :]).sum(1))
    dense = torch.zeros(rows, cols // c.m, c.m, dtype=c.values.dtype)
    dense.scatter_(-1, pos.reshape(rows, cols // c.m, c.n), c.values.reshape(rows, cols // c.m, c.n))
    return dense.reshape(rows, cols)


_REGISTRY: dict[str, Pattern] = {}


def register(pattern: Pattern) -> Pattern:
    """Add a pattern instance to the registry under ``pattern.name``."""
    _REGISTRY[pattern.name] = pattern
    return pattern


def get(name: str) -> Pattern:
    """The registered pattern called ``name``; :class:`PlanError` lists valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PlanError(f"unknown pattern {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    """Registered pattern names in registration order (the built-ins first: dense,
    unstructured, channel, nm, block, head, qhead — the order of pattern codes in batch pricing)."""
    return list(_REGISTRY)


for _p in (Dense(), Unstructured(), Channel(), NM(), Block(), Head(), QHead()):
    register(_p)
