"""The zoo's dense models through Apache TVM on the host: does each import, compile and run, and
how fast is it next to ONNX Runtime?

For each zoo model: ``torch.export`` → TVM Relax (``from_exported_program``) → build for the
host's llvm target (MetaSchedule in ``quick`` mode: the fastest of a few sampled schedules per
kernel, an exploration proxy, not a tuned deployment latency) → run and compare outputs with
torch. A failure at any step is a row with the error (the issue's "failure record"), never a crash.
ONNX Runtime's dense latency comes from ``results.csv`` of ``run.py`` (the same sitting's
search baseline) when present.

    python studies/architectures/tvm_zoo.py          # writes tvm_zoo.csv next to this file
"""
from __future__ import annotations

import argparse
import datetime as _dt
import tempfile
import time
from pathlib import Path

import pandas as pd

from hwsearch import zoo
from hwsearch.graph import analyze
from hwsearch.measure import measure_model
from targets.spec import get_target

HERE = Path(__file__).resolve().parent
ZOO = {"resnet": "hwsearch.zoo2d:resnet_digits", "vit": "hwsearch.zoo_vit:vit_digits",
       "bert": "hwsearch.zoo_text:bert_tokens", "llama": "hwsearch.zoo_text:llama_tokens"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--samples", type=int, default=8, help="schedules sampled per kernel (quick mode)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hwsearch-tvm-zoo")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    target = get_target("host-x86")
    ort = {}
    if (args.out / "results.csv").exists():
        r = pd.read_csv(args.out / "results.csv")
        ort = dict(zip(r["model"], r["dense_us"]))
    rows = []
    for name in args.models.split(","):
        net, example = zoo.load_model(ZOO[name])
        graph = analyze(net, example)
        t0 = time.perf_counter()
        rec = measure_model(target, graph, net, work_dir=args.work, mode="quick", samples=args.samples)
        lat = rec.get("latency_s")
        row = {"model": name, "ok": rec.get("error") is None, "tvm_quick_us": lat * 1e6 if lat else None,
               "onnxruntime_us": ort.get(name), "ratio_tvm_quick_over_ort": (lat * 1e6 / ort[name]) if lat and ort.get(name)
               else None, "max_abs_err": rec.get("max_abs_err"), "seconds": round(time.perf_counter() - t0, 1),
               "error": (rec.get("error") or "")[:300], "tvm": (rec.get("versions") or {}).get("tvm"),
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        print(row, flush=True)
        rows.append(row)
    pd.DataFrame(rows).to_csv(args.out / "tvm_zoo.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
