"""Weight storage formats of the MCU kernels: packing a 2-D weight matrix and counting its bytes.

The byte layout is the one the C kernels read (``kernels/hw_kernels.h`` is the reference):

=========  ==================================================================================
dense      ``rows·cols`` values
csr        ``nnz`` values, ``nnz`` column indices (u8 when cols ≤ 256, else u16),
           ``rows+1`` row pointers (u16 when nnz < 65536, else u32)
bitmask    ``nnz`` values and the flattened matrix as one bit stream in
           ``ceil(rows·cols/32)`` u32 words (MSB first); this is up to 3 bytes more than
           ``ceil(rows·cols/8)`` because the kernel reads whole words
nm         ``rows·cols·n/m`` values (exactly n per group of m columns; zeros fill a group
           with fewer nonzeros) + ``ceil(stored·b/8)`` bytes of index metadata with
           ``b = ceil(log2 m)`` bits per stored value (2 bits for 2:4)
block      ``kept_blocks·bh·bw`` values, one block-column index per kept block
           (u8 when cols/bw ≤ 256, else u16), ``rows/bh+1`` block-row pointers
           (u16 when kept_blocks < 65536, else u32)
=========  ==================================================================================

A block is kept when any of its weights is nonzero. All sizes are in bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FORMATS", "PackedMatrix", "pack", "format_bytes", "unpack"]

FORMATS = ("dense", "csr", "bitmask", "nm", "block")
_FMT_CODE = {"dense": 0, "csr": 1, "bitmask": 2, "nm": 3, "block": 4}


def _idx_dtype(max_index_exclusive: int) -> type:
    return np.uint8 if max_index_exclusive <= 256 else np.uint16


def _ptr_dtype(total: int) -> type:
    return np.uint16 if total < 65536 else np.uint32


@dataclass(frozen=True)
class PackedMatrix:
    """One weight matrix in a kernel format.

    ``arrays`` maps a role (``values``, ``idx``, ``ptr``, ``mask``, ``meta``) to the exact array
    the kernel reads; ``nbytes`` is their total size in bytes (the flash the weights take).
    """

    fmt: str
    rows: int
    cols: int
    arrays: dict[str, np.ndarray]
    n: int = 0
    m: int = 0
    bh: int = 0
    bw: int = 0
    meta_bits: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def code(self) -> int:
        return _FMT_CODE[self.fmt]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    def itemsize(self, role: str) -> int:
        a = self.arrays.get(role)
        return 0 if a is None else int(a.dtype.itemsize)


def pack(w: np.ndarray, fmt: str, *, n: int = 2, m: int = 4, block: tuple[int, int] = (4, 4)) -> PackedMatrix:
    """Pack a 2-D weight matrix ``w`` (rows × cols; int8 or float32) into ``fmt``.

    Raises ``ValueError`` when the matrix does not fit the format: more than ``n`` nonzeros in a
    group of ``m`` (nm), ``cols`` not divisible by ``m`` or ``rows``/``cols`` not divisible by
    the block size, or more than 65535 columns for the 16-bit indices.
    """
    if w.ndim != 2:
        raise ValueError(f"pack() wants a 2-D matrix, got shape {w.shape}")
    rows, cols = (int(s) for s in w.shape)
    nz = w != 0
    nnz = int(nz.sum())
    stats = {"nnz": nnz, "total": rows * cols}
    if fmt == "dense":
        return PackedMatrix("dense", rows, cols, {"values": np.ascontiguousarray(w)},
                            stats={**stats, "stored": rows * cols})
    if cols > 65535:
        raise ValueError(f"{fmt} indices are 16-bit: cols={cols} > 65535; use dense or split the layer")
    if fmt == "csr":
        ri, ci = np.nonzero(nz)
        ptr = np.zeros(rows + 1, dtype=np.int64)
        np.add.at(ptr, ri + 1, 1)
        ptr = np.cumsum(ptr)
        arrays = {"values": np.ascontiguousarray(w[ri, ci]),
                  "idx": ci.astype(_idx_dtype(cols)),
                  "ptr": ptr.astype(_ptr_dtype(nnz))}
        return PackedMatrix("csr", rows, cols, arrays, stats={**stats, "stored": nnz})
    if fmt == "bitmask":
        flat = nz.reshape(-1)
        nwords = math.ceil(flat.size / 32)
        bits = np.zeros(nwords * 32, dtype=bool)
        bits[: flat.size] = flat
        # element p -> bit (31 - p % 32) of word p // 32
        weights = (1 << np.arange(31, -1, -1, dtype=np.uint64)).astype(np.uint64)
        words = (bits.reshape(nwords, 32).astype(np.uint64) * weights).sum(axis=1).astype(np.uint32)
        arrays = {"values": np.ascontiguousarray(w.reshape(-1)[flat]), "mask": words}
        return PackedMatrix("bitmask", rows, cols, arrays, stats={**stats, "stored": nnz})
    if fmt == "nm":
        if not (0 < n < m <= 256):
            raise ValueError(f"N:M needs 0 < n < m <= 256, got {n}:{m}")
        if cols % m:
            raise ValueError(f"{n}:{m} needs the reduction dimension ({cols}) divisible by {m}")
        g = w.reshape(rows, cols // m, m)
        gnz = nz.reshape(rows, cols // m, m)
        per_group = gnz.sum(axis=2)
        if per_group.max(initial=0) > n:
            r, gi = np.argwhere(per_group > n)[0]
            raise ValueError(f"weight is not {n}:{m} sparse: row {r}, group {gi} (columns "
                             f"{gi * m}..{gi * m + m - 1}) has {per_group[r, gi]} nonzeros")
        # stable order: nonzeros first (in column order), then zero slots to fill n
        order = np.argsort(~gnz, axis=2, kind="stable")[:, :, :n]
        order = np.sort(order, axis=2)
        vals = np.take_along_axis(g, order, axis=2).reshape(-1)
        bits = max(1, math.ceil(math.log2(m)))
        idx = order.reshape(-1).astype(np.uint64)
        nbits = idx.size * bits
        stream = np.zeros(math.ceil(nbits / 8) * 8, dtype=np.uint8)
        shifts = np.arange(bits, dtype=np.uint64)
        stream[: nbits] = ((idx[:, None] >> shifts) & 1).reshape(-1).astype(np.uint8)
        meta = np.packbits(stream.reshape(-1, 8), axis=1, bitorder="little").reshape(-1)
        arrays = {"values": np.ascontiguousarray(vals), "meta": meta.astype(np.uint8)}
        return PackedMatrix("nm", rows, cols, arrays, n=n, m=m, meta_bits=bits,
                            stats={**stats, "stored": int(vals.size)})
    if fmt == "block":
        bh, bw = (int(b) for b in block)
        if not (1 <= bh <= 16 and bw >= 1):
            raise ValueError(f"block height must be 1..16 and width >= 1, got {bh}x{bw}")
        if rows % bh or cols % bw:
            raise ValueError(f"block {bh}x{bw} needs rows ({rows}) divisible by {bh} and cols "
                             f"({cols}) divisible by {bw}")
        blocks = w.reshape(rows // bh, bh, cols // bw, bw).transpose(0, 2, 1, 3)
        keep = (blocks != 0).any(axis=(2, 3))
        br, bc = np.nonzero(keep)
        kept = int(keep.sum())
        ptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
        arrays = {"values": np.ascontiguousarray(blocks[br, bc].reshape(-1)),
                  "idx": bc.astype(_idx_dtype(cols // bw)),
                  "ptr": ptr.astype(_ptr_dtype(kept))}
        return PackedMatrix("block", rows, cols, arrays, bh=bh, bw=bw,
                            stats={**stats, "stored": kept * bh * bw, "kept_blocks": kept})
    raise ValueError(f"unknown weight format {fmt!r}; valid: {', '.join(FORMATS)}")


def unpack(p: PackedMatrix) -> np.ndarray:
    """Decode a :class:`PackedMatrix` back to its dense rows × cols matrix (for checks)."""
    a = p.arrays
    dt = a["values"].dtype
    out = np.zeros((p.rows, p.cols), dtype=dt)
    if p.fmt == "dense":
        return a["values"].reshape(p.rows, p.cols).copy()
    if p.fmt == "csr":
        ptr = a["ptr"].astype(np.int64)
        for r in range(p.rows):
            out[r, a["idx"][ptr[r]:ptr[r + 1]].astype(np.int64)] = a["values"][ptr[r]:ptr[r + 1]]
        return out
    if p.fmt == "bitmask":
        bits = np.unpackbits(a["mask"].astype(">u4").view(np.uint8))[: p.rows * p.cols].astype(bool)
        out.reshape(-1)[bits] = a["values"]
        return out
    if p.fmt == "nm":
        stored = p.rows * p.cols // p.m * p.n
        bits = np.unpackbits(a["meta"], bitorder="little")[: stored * p.meta_bits]
        idx = (bits.reshape(stored, p.meta_bits).astype(np.int64) << np.arange(p.meta_bits)).sum(axis=1)
        grp = np.repeat(np.arange(p.rows * p.cols // p.m), p.n)
        out.reshape(-1)[grp * p.m + idx] = a["values"]  # zero fill slots may repeat a zero
        return out
    if p.fmt == "block":
        ptr = a["ptr"].astype(np.int64)
        vals = a["values"].reshape(-1, p.bh, p.bw)
        for br in range(p.rows // p.bh):
            for b in range(ptr[br], ptr[br + 1]):
                c = int(a["idx"][b])
                out[br * p.bh:(br + 1) * p.bh, c * p.bw:(c + 1) * p.bw] = vals[b]
        return out
    raise ValueError(f"unknown format {p.fmt!r}")


def format_bytes(fmt: str, rows: int, cols: int, *, nnz: int | None = None, dtype_bytes: int = 1,
                 n: int = 2, m: int = 4, block: tuple[int, int] = (4, 4),
                 kept_blocks: int | None = None) -> int:
    """Hand count of the bytes :func:`pack` produces for one ``rows × cols`` matrix.

    ``nnz`` (csr, bitmask) is the number of nonzeros; ``kept_blocks`` (block) the number of
    blocks with any nonzero. ``dtype_bytes`` is 1 for int8, 4 for fp32.
    """
    total = rows * cols
    if fmt == "dense":
        return total * dtype_bytes
    if fmt == "csr":
        assert nnz is not None
        return nnz * dtype_bytes + nnz * (1 if cols <= 256 else 2) + (rows + 1) * (2 if nnz < 65536 else 4)
    if fmt == "bitmask":
        assert nnz is not None
        return nnz * dtype_bytes + 4 * math.ceil(total / 32)
    if fmt == "nm":
        stored = total // m * n
        return stored * dtype_bytes + math.ceil(stored * max(1, math.ceil(math.log2(m))) / 8)
    if fmt == "block":
        assert kept_blocks is not None
        bh, bw = block
        return (kept_blocks * bh * bw * dtype_bytes + kept_blocks * (1 if cols // bw <= 256 else 2)
                + (rows // bh + 1) * (2 if kept_blocks < 65536 else 4))
    raise ValueError(f"unknown weight format {fmt!r}; valid: {', '.join(FORMATS)}")
