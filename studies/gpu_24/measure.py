#!/usr/bin/env python
"""Measure dense vs 2:4 semi-structured sparse GEMMs on an NVIDIA GPU and write a gpu24 table.

For every (dtype, N, K) a weight ``W[N, K]`` is pruned to 2:4 along K (random 2 of every 4 kept)
and compressed once with ``torch.sparse.to_sparse_semi_structured``; then for every M the layer
``Y = F.linear(X[M, K], W)`` is timed with the dense weight and with the compressed one (int8:
``torch._int_mm`` dense vs the int8 sparse mm, both with int8 inputs).

Timing (per shape, per variant): ``--warmup`` untimed calls, then ``--repeats`` timed blocks,
dense and sparse blocks alternating so clock drift hits both alike. A block is ``inner`` back-to-
back calls between two CUDA events (``inner`` is chosen so a dense block lasts about 1 ms, 1-100
calls; ``--inner 1`` with ``--flush-l2`` measures cold single calls); one sample = block time /
inner. The CSV holds the median and the inter-quartile range (p75 - p25) of the samples in
milliseconds, the speed-up ``dense_ms / sparse_ms``, and per row the device, SM count, L2 size,
driver, torch / CUDA / cuSPARSELt versions and the UTC date. A failing shape is a row with an
``error`` and no times, never a crash. Rows are appended as they are measured, so a run that hits
``--budget-s`` (or is killed) keeps what it has, and a rerun skips rows already present.

Run from the repository root on the GPU machine (needs only torch with CUDA)::

    python studies/gpu_24/measure.py                 # full grid, ~5-10 min on an H200
    python studies/gpu_24/measure.py --quick         # 8 shapes, fp16, < 1 min
    python studies/gpu_24/measure.py --out $OUT/gpu24_nvidia_h200.csv --budget-s 540

Exit status: 0 done, 2 no usable GPU (message on stderr), 1 bad arguments.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import logging
import math
import re
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("gpu24.measure")

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "costmodels" / "data"
SPEC_DIR = REPO / "targets" / "specs"
SCHEMA_VERSION = 1
EXIT_NO_GPU = 2
SOURCE = "measured: studies/gpu_24/measure.py"
COLUMNS = ["schema_version", "device", "sm_count", "l2_bytes", "capability", "driver", "torch", "cuda", "cusparselt",
           "date", "dtype", "backend", "op", "M", "N", "K", "dense_ms", "dense_iqr_ms", "sparse_ms", "sparse_iqr_ms",
           "speedup", "repeats", "inner", "warmup", "flush_l2", "max_rel_err", "fit", "error", "source"]
FULL_M = (1, 8, 32, 128, 512, 2048, 8192, 16384)
FULL_NK = (256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_M = (64, 2048)
QUICK_NK = (1024, 4096)
_KEY = ("device", "dtype", "backend", "op", "M", "N", "K")


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 256,1024,4096")
    return vals


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="CSV to write/append (default: costmodels/data/<[measure] gpu24_table of the spec whose "
                        "device_match is in the device name>)")
    p.add_argument("--dtypes", default="fp16,bf16,int8", help="comma list of fp16, bf16, int8 (default: all three)")
    p.add_argument("--m", type=_ints, default=None, help=f"token counts M (default {','.join(map(str, FULL_M))})")
    p.add_argument("--n", type=_ints, default=None, help=f"out features N (default {','.join(map(str, FULL_NK))})")
    p.add_argument("--k", type=_ints, default=None, help=f"in features K (default {','.join(map(str, FULL_NK))})")
    p.add_argument("--backend", choices=("cusparselt", "cutlass"), default="cusparselt",
                   help="torch semi-structured backend (default cusparselt, torch's default)")
    p.add_argument("--repeats", type=int, default=30, help="timed blocks per variant (median and IQR over them)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per variant before timing")
    p.add_argument("--inner", default="auto", help="calls per timed block: an integer, or auto (~1 ms blocks)")
    p.add_argument("--flush-l2", action="store_true", help="overwrite L2 before every block (forces --inner 1)")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="stop cleanly after this many seconds")
    p.add_argument("--quick", action="store_true", help="tiny grid: fp16, M in 64,2048, N,K in 1024,4096, 5 repeats")
    p.add_argument("--overwrite", action="store_true", help="re-measure rows already in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.dtypes = "fp16"
        args.m, args.n, args.k = args.m or QUICK_M, args.n or QUICK_NK, args.k or QUICK_NK
        args.repeats = min(args.repeats, 5)
        args.warmup = min(args.warmup, 2)
    args.m, args.n, args.k = args.m or FULL_M, args.n or FULL_NK, args.k or FULL_NK
    args.dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    bad = set(args.dtypes) - {"fp16", "bf16", "int8"}
    if bad:
        p.error(f"unknown dtypes {sorted(bad)}; valid: fp16, bf16, int8")
    if args.inner != "auto" and (not args.inner.isdigit() or int(args.inner) < 1):
        p.error(f"--inner {args.inner!r}: give a positive integer or auto")
    if args.repeats < 3:
        p.error("--repeats must be >= 3 (median and IQR need a few samples)")
    return args


def default_out(device_name: str) -> Path:
    """costmodels/data/<gpu24_table> of the GPU spec whose ``device_match`` occurs in the device name."""
    for spec in sorted(SPEC_DIR.glob("*.toml")):
        try:
            data = tomllib.loads(spec.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        meas = data.get("measure", {})
        match = meas.get("device_match")
        # not glued to a preceding letter/digit: "H200" is not "GH200" (same rule as costmodels.gpu24.device_matches)
        if data.get("kind") == "gpu" and match and re.search(rf"(?<![a-z0-9]){re.escape(match)}", device_name,
                                                             flags=re.IGNORECASE):
            return DATA_DIR / str(meas.get("gpu24_table", f"gpu24_{data['name'].replace('-', '_')}.csv"))
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
    return DATA_DIR / f"gpu24_{slug}.csv"


def environment(torch: Any) -> dict[str, Any]:
    """Provenance recorded on every row."""
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = "unknown (nvidia-smi unavailable)"
    cslt = "n/a"
    backend = getattr(torch.backends, "cusparselt", None)
    if backend is not None and hasattr(backend, "version"):
        try:
            cslt = str(backend.version())
        except Exception as exc:  # the query raises differently across builds; a record, not a failure
            cslt = f"unknown ({type(exc).__name__})"
    return {"device": torch.cuda.get_device_name(0), "sm_count": props.multi_processor_count,
            "l2_bytes": getattr(props, "L2_cache_size", ""), "capability": f"{props.major}.{props.minor}",
            "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda, "cusparselt": cslt}


def mask_24(torch: Any, n: int, k: int, gen: Any) -> Any:
    """Boolean [n, k] mask keeping 2 random entries of every 4 consecutive ones along k."""
    scores = torch.rand(n, k // 4, 4, device="cuda", generator=gen)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(-1, scores.topk(2, dim=-1).indices, True)
    return keep.view(n, k)


def time_pair(torch: Any, dense: Callable[[], Any], sparse: Callable[[], Any], *, warmup: int, repeats: int,
              inner: int, flush: Callable[[], None] | None) -> tuple[list[float], list[float]]:
    """Per-call milliseconds of ``repeats`` alternating blocks of ``inner`` calls each."""
    for _ in range(warmup):
        dense()
        sparse()
    torch.cuda.synchronize()
    out: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, samples in ((dense, out[0]), (sparse, out[1])):
            if flush is not None:
                flush()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / inner)
    return out


def _median_iqr(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[2] - q[0]


def measure_shape(torch: Any, F: Any, dtype: str, M: int, W: Any, Ws: Any, args: argparse.Namespace,
                  flush: Callable[[], None] | None) -> dict[str, Any]:
    """Time one (M, N, K) in ``dtype``; returns the CSV fields that vary per shape."""
    N, K = W.shape
    if dtype == "int8":
        x = torch.randint(-8, 8, (M, K), device="cuda", dtype=torch.int8)
        wt = W.t()

        def dense() -> Any:
            return torch._int_mm(x, wt)

        def sparse() -> Any:
            return torch.mm(x, Ws.t())
    else:
        x = torch.randn(M, K, device="cuda", dtype=W.dtype)

        def dense() -> Any:
            return F.linear(x, W)

        def sparse() -> Any:
            return F.linear(x, Ws)
    ref, got = dense().float(), sparse().float()
    if ref.shape != got.shape:
        raise RuntimeError(f"sparse output shape {tuple(got.shape)} != dense {tuple(ref.shape)}")
    err = float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-6))
    if args.inner == "auto" and flush is None:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            dense()
        end.record()
        end.synchronize()
        inner = int(min(100, max(1, math.ceil(1.0 / max(start.elapsed_time(end) / 3, 1e-4)))))
    else:
        inner = 1 if flush is not None else int(args.inner)
    d, s = time_pair(torch, dense, sparse, warmup=args.warmup, repeats=args.repeats, inner=inner, flush=flush)
    dm, di = _median_iqr(d)
    sm, si = _median_iqr(s)
    return {"dense_ms": f"{dm:.6g}", "dense_iqr_ms": f"{di:.4g}", "sparse_ms": f"{sm:.6g}",
            "sparse_iqr_ms": f"{si:.4g}", "speedup": f"{dm / sm:.5g}", "inner": inner, "max_rel_err": f"{err:.3g}"}


def existing_keys(path: Path) -> set[tuple[str, ...]]:
    if not path.exists():
        return set()
    with path.open(newline="") as f:
        return {tuple(str(r.get(k, "")) for k in _KEY) for r in csv.DictReader(f) if not (r.get("error") or "").strip()}


def grid(args: argparse.Namespace) -> Iterable[tuple[str, int, int]]:
    for dtype in args.dtypes:
        for n in args.n:
            for k in args.k:
                yield dtype, n, k


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print(f"measure.py: no CUDA GPU visible (torch {torch.__version__}, built with CUDA {torch.version.cuda}; "
              "torch.cuda.is_available() is False). Run it on a machine with an NVIDIA GPU of compute capability "
              ">= 8.0 (A100, H100, H200) and a CUDA build of torch; nothing was written.", file=sys.stderr)
        return EXIT_NO_GPU
    major, minor = torch.cuda.get_device_capability(0)
    if (major, minor) < (8, 0):
        print(f"measure.py: {torch.cuda.get_device_name(0)} has compute capability {major}.{minor}; 2:4 sparse "
              "tensor cores need >= 8.0 (Ampere or newer); nothing was written.", file=sys.stderr)
        return EXIT_NO_GPU
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = args.backend == "cutlass"
    env = environment(torch)
    out = args.out or default_out(env["device"])
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set() if args.overwrite else existing_keys(out)
    new_file = not out.exists() or out.stat().st_size == 0
    flush = None
    if args.flush_l2:
        l2 = int(env["l2_bytes"] or 64 << 20)
        buf = torch.empty(2 * l2, dtype=torch.uint8, device="cuda")
        flush = buf.zero_
    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    tdt = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
    t0 = time.monotonic()
    n_rows = n_err = 0
    log.info("measuring on %s (SMs %s, L2 %s B, driver %s, torch %s, CUDA %s, cuSPARSELt %s) -> %s", env["device"],
             env["sm_count"], env["l2_bytes"], env["driver"], env["torch"], env["cuda"], env["cusparselt"], out)
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        if new_file:
            writer.writeheader()
        for dtype, N, K in grid(args):
            todo = [M for M in args.m if (env["device"], dtype, args.backend, "linear", str(M), str(N), str(K))
                    not in done]
            if not todo:
                continue
            if time.monotonic() - t0 > args.budget_s:
                log.warning("budget of %.0f s used up: stopping; rerun to continue where this run stopped",
                            args.budget_s)
                break
            W = Ws = None
            prep_error = ""
            try:
                if dtype == "int8":
                    W = torch.randint(-8, 8, (N, K), device="cuda", dtype=torch.int8)
                else:
                    W = torch.randn(N, K, device="cuda", dtype=tdt[dtype], generator=gen)
                W = (W * mask_24(torch, N, K, gen)).contiguous()
                Ws = to_sparse_semi_structured(W)
            except Exception as exc:  # unsupported shape/dtype on this build: recorded, the grid goes on
                prep_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            for M in todo:
                row: dict[str, Any] = {**env, "schema_version": SCHEMA_VERSION, "dtype": dtype,
                                       "backend": args.backend, "op": "linear", "M": M, "N": N, "K": K,
                                       "repeats": args.repeats, "warmup": args.warmup, "flush_l2": int(args.flush_l2),
                                       "fit": 1, "error": prep_error, "source": SOURCE,
                                       "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
                if not prep_error:
                    try:
                        row.update(measure_shape(torch, F, dtype, M, W, Ws, args, flush))
                    except Exception as exc:  # e.g. an M the int8 kernels refuse: a record, not a crash
                        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                        row["error"] = f"{type(exc).__name__}: {msg}"
                        torch.cuda.synchronize()
                writer.writerow(row)
                f.flush()
                n_rows += 1
                n_err += bool(row["error"])
                log.info("%s M=%-6d N=%-6d K=%-6d %s", dtype, M, N, K,
                         f"error: {row['error']}" if row["error"] else
                         f"dense {row['dense_ms']} ms, 2:4 {row['sparse_ms']} ms, speed-up {row['speedup']}")
            del W, Ws
            torch.cuda.empty_cache()
    log.info("wrote %d rows (%d with errors) to %s in %.0f s", n_rows, n_err, out, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
