"""Layer geometry shared by the measuring harness and the C exporter: normalising PyTorch-layout
weights/inputs to the kernels' layouts, and emitting the C/assembly that describes a layer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._formats import PackedMatrix, pack

__all__ = ["OPS", "DTYPES", "LayerGeom", "geometry", "weight_matrices", "pack_layer", "AsmData", "as_conv2d_depthwise",
           "mat_initializer", "conv_initializer", "c_array", "c_type", "scratch_bytes", "prune_to_format"]

OPS = ("linear", "conv1d", "conv2d", "dwconv2d")
DTYPES = ("int8", "fp32")


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) == 1:  # a conv1d's stride/padding as PyTorch keeps them: (s,)
            return int(v[0]), int(v[0])
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass(frozen=True)
class LayerGeom:
    """A layer in kernel terms. Conv layers (conv1d as height 1) carry the ``hw_conv_t`` fields;
    linear layers ``batch``, ``in_c`` (in_features) and ``out_c`` (out_features)."""

    op: str
    in_c: int
    out_c: int
    batch: int = 1
    in_h: int = 1
    in_w: int = 1
    out_h: int = 1
    out_w: int = 1
    k_h: int = 1
    k_w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad_h: int = 0
    pad_w: int = 0
    groups: int = 1

    @property
    def is_conv(self) -> bool:
        return self.op != "linear"

    @property
    def in_elems(self) -> int:
        return self.batch * self.in_c if self.op == "linear" else self.in_c * self.in_h * self.in_w

    @property
    def out_elems(self) -> int:
        return self.batch * self.out_c if self.op == "linear" else self.out_c * self.out_h * self.out_w

    @property
    def rows(self) -> int:
        """Rows of one group's weight matrix."""
        return self.out_c // self.groups if self.op != "dwconv2d" else self.out_c

    @property
    def cols(self) -> int:
        """Reduction length of one group's weight matrix."""
        if self.op == "linear":
            return self.in_c
        if self.op == "dwconv2d":
            return self.k_h * self.k_w
        return self.k_h * self.k_w * (self.in_c // self.groups)

    @property
    def n_mats(self) -> int:
        return self.groups if self.op in ("conv1d", "conv2d") else 1

    @property
    def macs(self) -> int:
        """Dense multiply-accumulates, padding taps included (the usual MAC count)."""
        if self.op == "linear":
            return self.batch * self.in_c * self.out_c
        return self.out_h * self.out_w * self.out_c * self.cols

    def shape_dict(self) -> dict[str, int]:
        """The layer's shape parameters as recorded with a measurement."""
        if self.op == "linear":
            return {"batch": self.batch, "in_features": self.in_c, "out_features": self.out_c}
        if self.op == "conv1d":
            return {"in_channels": self.in_c, "out_channels": self.out_c, "in_len": self.in_w,
                    "kernel": self.k_w, "stride": self.stride_w, "padding": self.pad_w,
                    "groups": self.groups, "out_len": self.out_w}
        return {"in_channels": self.in_c, "out_channels": self.out_c, "in_h": self.in_h,
                "in_w": self.in_w, "kernel_h": self.k_h, "kernel_w": self.k_w,
                "stride_h": self.stride_h, "stride_w": self.stride_w, "pad_h": self.pad_h,
                "pad_w": self.pad_w, "groups": self.groups, "out_h": self.out_h, "out_w": self.out_w}


def geometry(op: str, w_shape: tuple[int, ...], x_shape: tuple[int, ...], *, stride=1, padding=0,
             groups: int = 1) -> LayerGeom:
    """Kernel geometry from PyTorch shapes. ``x_shape``: linear ``[K]``/``[B, K]``; conv1d
    ``[(1,) C, L]``; conv2d/dwconv2d ``[(1,) C, H, W]``. Raises ``ValueError`` on a mismatch."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; valid: {', '.join(OPS)}")
    if op == "linear":
        if len(w_shape) != 2:
            raise ValueError(f"linear weight must be [out, in], got {w_shape}")
        xs = tuple(x_shape) if len(x_shape) == 2 else (1, *x_shape)
        if len(xs) != 2 or xs[1] != w_shape[1]:
            raise ValueError(f"linear input {x_shape} does not match weight {w_shape}")
        return LayerGeom("linear", in_c=w_shape[1], out_c=w_shape[0], batch=xs[0])
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    if op == "conv1d":
        if len(w_shape) != 3:
            raise ValueError(f"conv1d weight must be [out, in/groups, k], got {w_shape}")
        xs = tuple(x_shape[1:]) if len(x_shape) == 3 else tuple(x_shape)
        if len(xs) != 2:
            raise ValueError(f"conv1d input must be [C, L] or [1, C, L], got {x_shape}")
        c, L = xs
        kh, kw, h, wd, sh, ph = 1, w_shape[2], 1, L, 1, 0
    else:
        if len(w_shape) != 4:
            raise ValueError(f"{op} weight must be [out, in/groups, kh, kw], got {w_shape}")
        xs = tuple(x_shape[1:]) if len(x_shape) == 4 else tuple(x_shape)
        if len(xs) != 3:
            raise ValueError(f"{op} input must be [C, H, W] or [1, C, H, W], got {x_shape}")
        c, h, wd = xs
        kh, kw = w_shape[2], w_shape[3]
    if op == "dwconv2d":
        groups = c
        if w_shape[0] != c or w_shape[1] != 1:
            raise ValueError(f"dwconv2d weight must be [C, 1, kh, kw] with C = {c} input channels, "
                             f"got {w_shape}")
    if groups < 1 or c % groups or w_shape[0] % groups or w_shape[1] * groups != c:
        raise ValueError(f"{op}: in_channels={c}, out_channels={w_shape[0]}, groups={groups} and weight "
                         f"{w_shape} do not fit (weight dim 1 must be in_channels/groups)")
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (wd + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: output would be empty (input {x_shape}, kernel {kh}x{kw}, padding {padding})")
    return LayerGeom(op, in_c=c, out_c=w_shape[0], in_h=h, in_w=wd, out_h=oh, out_w=ow, k_h=kh, k_w=kw,
                     stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw, groups=groups)


def weight_matrices(g: LayerGeom, w: np.ndarray) -> list[np.ndarray]:
    """PyTorch-layout weights → one 2-D matrix per group in the kernels' column order:
    linear ``[out, in]``; conv ``[out/groups, (kh, kw, in/groups)]`` (input channel fastest —
    N:M groups and blocks therefore run along input channels); depthwise ``[C, (kh, kw)]``."""
    if g.op == "linear":
        return [np.ascontiguousarray(w)]
    if g.op == "dwconv2d":
        return [np.ascontiguousarray(w.reshape(g.out_c, -1))]
    w4 = w.reshape(g.out_c, g.in_c // g.groups, g.k_h, g.k_w)
    m = w4.transpose(0, 2, 3, 1).reshape(g.out_c, -1)
    cog = g.out_c // g.groups
    return [np.ascontiguousarray(m[i * cog:(i + 1) * cog]) for i in range(g.groups)]


def pack_layer(g: LayerGeom, w: np.ndarray, fmt: str, *, n: int = 2, m: int = 4,
               block: tuple[int, int] = (4, 4)) -> list[PackedMatrix]:
    """Pack every group's matrix; raises ``ValueError`` when the weights do not fit ``fmt`` or
    the op has no kernel for it."""
    if g.op == "dwconv2d" and fmt not in ("dense", "csr", "bitmask"):
        raise ValueError(f"dwconv2d kernels exist for dense, csr and bitmask, not {fmt!r}")
    if g.op == "dwconv2d" and fmt == "csr" and g.cols > 256:
        raise ValueError("dwconv2d csr needs at most 256 taps per channel (8-bit tap indices)")
    try:
        return [pack(mat, fmt, n=n, m=m, block=block) for mat in weight_matrices(g, w)]
    except ValueError as exc:
        if fmt == "nm" and g.is_conv and g.k_h * g.k_w > 1 and "not" in str(exc) and "sparse" in str(exc):
            raise ValueError(f"{exc} (conv columns run (kh, kw, in_channel) with input channels fastest: "
                             f"build the {n}:{m} mask along input channels at each kernel tap, not along "
                             "PyTorch's flattened [in_channel, kh, kw])") from None
        raise


def as_conv2d_depthwise(weight: np.ndarray, x: np.ndarray, stride, padding
                        ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[int, int]]:
    """A depthwise conv1d (``[C, 1, k]`` weight, ``[C, L]`` or ``[1, C, L]`` input, int or
    1-tuple stride/padding) as the height-1 conv2d the ``dwconv2d`` kernel runs:
    ``([C, 1, 1, k], [C, 1, L], (1, s), (0, p))``."""
    def last(v) -> int:
        return int(v[-1]) if isinstance(v, (tuple, list)) else int(v)

    w = np.asarray(weight)
    xa = np.asarray(x)
    if xa.ndim == 3:
        xa = xa[0]
    return (w.reshape(w.shape[0], 1, 1, w.shape[-1]), xa.reshape(xa.shape[0], 1, xa.shape[-1]),
            (1, last(stride)), (0, last(padding)))


def c_array(ctype: str, name: str, arr: np.ndarray, per_line: int = 24) -> str:
    """A ``const`` C array definition (8-byte aligned) holding ``arr`` flattened."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.dtype == np.float32:
        vals = [repr(float(v)) + "f" if np.isfinite(v) else "0.0f" for v in flat]
    else:
        vals = [str(int(v)) for v in flat]
    if not vals:
        vals = ["0"]
    body = ",\n".join("    " + ", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line))
    return f"const {ctype} {name}[{max(flat.size, 1)}] __attribute__((aligned(8))) = {{\n{body}\n}};\n"


def c_type(arr: np.ndarray) -> str:
    return {np.dtype(np.int8): "int8_t", np.dtype(np.uint8): "uint8_t", np.dtype(np.uint16): "uint16_t",
            np.dtype(np.uint32): "uint32_t", np.dtype(np.int32): "int32_t",
            np.dtype(np.float32): "float"}[arr.dtype]


class AsmData:
    """Collects named arrays, written as binary files and ``.incbin``-ed by one assembly file
    (fast to build even for megabytes of weights). Read-only arrays go to ``.rodata`` (flash),
    writable ones to ``.data`` (RAM)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.items: list[tuple[str, np.ndarray, bool]] = []

    def add(self, name: str, arr: np.ndarray, *, writable: bool = False) -> str:
        self.items.append((name, np.ascontiguousarray(arr), writable))
        return name

    def declarations(self) -> str:
        lines = []
        for name, arr, writable in self.items:
            const = "" if writable else "const "
            lines.append(f"extern {const}{c_type(arr)} {name}[{max(arr.size, 1)}];")
        return "\n".join(lines)

    def write(self, asm_name: str = "hw_data.S", *, bin_dir: Path | None = None) -> Path:
        bdir = bin_dir or self.dir
        out = []
        for name, arr, writable in self.items:
            data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            if not data:
                data = b"\0" * arr.dtype.itemsize  # keep the symbol; size 0 arrays are not useful
            bpath = bdir / f"{name}.bin"
            bpath.write_bytes(data)
            sec = f".data.{name}" if writable else f".rodata.{name}"
            flags = '"aw"' if writable else '"a"'
            size_expr = f". - {name}" if arr.size else "0"
            out.append(f'  .section {sec},{flags},%progbits\n  .balign 8\n  .global {name}\n'
                       f'  .type {name}, %object\n{name}:\n  .incbin "{bpath.resolve()}"\n'
                       f'  .size {name}, {size_expr}\n')
        path = self.dir / asm_name
        path.write_text("".join(out))
        return path


def mat_initializer(p: PackedMatrix, syms: dict[str, str]) -> str:
    """C initializer of an ``hw_mat_t`` whose arrays are the symbols ``syms[role]``."""
    def ref(role: str) -> str:
        return syms.get(role, "0")
    return ("{" + f".rows = {p.rows}u, .cols = {p.cols}u, .values = {ref('values')}, "
            f".idx = {ref('idx')}, .ptr = {ref('ptr')}, .mask = {ref('mask')}, .meta = {ref('meta')}, "
            f".fmt = {p.code}, .idx_bytes = {p.itemsize('idx')}, .ptr_bytes = {p.itemsize('ptr')}, "
            f".meta_bits = {p.meta_bits}, .n = {p.n}, .m = {p.m}, .bh = {p.bh}, .bw = {p.bw}" + "}")


def conv_initializer(g: LayerGeom) -> str:
    return ("{" + f".in_h = {g.in_h}, .in_w = {g.in_w}, .in_c = {g.in_c}, .out_h = {g.out_h}, "
            f".out_w = {g.out_w}, .out_c = {g.out_c}, .k_h = {g.k_h}, .k_w = {g.k_w}, "
            f".stride_h = {g.stride_h}, .stride_w = {g.stride_w}, .pad_h = {g.pad_h}, "
            f".pad_w = {g.pad_w}, .groups = {g.groups}" + "}")


def scratch_elems(g: LayerGeom) -> tuple[int, int]:
    """(elements, pointer slots) of scratch the layer's kernel needs (see hw_kernels.h)."""
    if g.op == "dwconv2d":
        return g.in_c + 8, g.k_h * g.k_w
    if g.op == "linear":
        return 0, 0
    direct = g.k_h == 1 and g.k_w == 1 and g.groups == 1 and g.pad_h == 0 and g.pad_w == 0
    return (0 if direct else g.k_h * g.k_w * g.in_c), 0


def scratch_bytes(g: LayerGeom, dtype: str) -> int:
    el, ptrs = scratch_elems(g)
    eb = 1 if dtype == "int8" else 4
    return el * eb + 4 * ptrs + 8



def prune_to_format(op: str, weight: np.ndarray, fmt: str, density: float = 1.0, *, n: int = 2, m: int = 4,
                    block: tuple[int, int] = (4, 4), groups: int = 1) -> np.ndarray:
    """Magnitude-prune ``weight`` (PyTorch layout) so that it fits ``fmt`` in the kernels' matrix view.

    ``csr``/``bitmask``: keep the ``round(density * size)`` largest weights. ``nm``: the ``n``
    largest of every ``m`` consecutive reduction elements (for convs: input channels at one
    kernel tap). ``block``: keep the ``round(density * size / (bh*bw))`` blocks of largest L1 norm.
    ``dense`` returns a copy. Used by the fidelity study and tests; plans use hwsearch's masks.
    """
    w = np.array(weight, copy=True)
    if fmt == "dense":
        return w
    if fmt in ("csr", "bitmask"):
        k = int(round(density * w.size))
        flat = np.abs(w).reshape(-1)
        keep = np.zeros(w.size, dtype=bool)
        if k > 0:
            keep[np.argsort(-flat, kind="stable")[:k]] = True
        w.reshape(-1)[~keep] = 0
        return w
    dummy_x = _dummy_input_shape(op, w.shape, groups)
    g = geometry(op, w.shape, dummy_x, groups=groups)
    mats = weight_matrices(g, w)
    out = []
    for mat in mats:
        mat = mat.copy()
        R, K = mat.shape
        if fmt == "nm":
            v = mat.reshape(R, K // m, m)
            order = np.argsort(-np.abs(v), axis=2, kind="stable")
            np.put_along_axis(v, order[:, :, n:], 0, axis=2)
        elif fmt == "block":
            bh, bw = block
            b = mat.reshape(R // bh, bh, K // bw, bw)
            norms = np.abs(b).sum(axis=(1, 3))
            kb = int(round(density * mat.size / (bh * bw)))
            keep = np.zeros(norms.size, dtype=bool)
            if kb > 0:
                keep[np.argsort(-norms.reshape(-1), kind="stable")[:kb]] = True
            b *= keep.reshape(norms.shape)[:, None, :, None]
        else:
            raise ValueError(f"unknown weight format {fmt!r}")
        out.append(mat)
    full = np.concatenate(out, axis=0)
    if g.op == "linear":
        return full
    if g.op == "dwconv2d":
        return full.reshape(w.shape)
    cig = g.in_c // g.groups
    return full.reshape(g.out_c, g.k_h, g.k_w, cig).transpose(0, 3, 1, 2).reshape(w.shape)


def _dummy_input_shape(op: str, w_shape: tuple[int, ...], groups: int) -> tuple[int, ...]:
    if op == "linear":
        return (w_shape[1],)
    if op == "conv1d":
        return (w_shape[1] * groups, w_shape[2])
    if op == "dwconv2d":
        return (w_shape[0], w_shape[2], w_shape[3])
    return (w_shape[1] * groups, w_shape[2], w_shape[3])
