"""Export a chosen plan as a deployment bundle.

A bundle ships what was measured: the target's runtime decides the artefact — ``model.onnx``
(with ``dense.onnx`` beside it and a loading snippet, ``run_onnxruntime.py``) for ONNX Runtime,
``model.so`` for TVM (built with the search's tuning database), ``model.pt2`` for torch, C
sources for Cortex-M — and ``manifest.json`` names the runtime, its version and the latency
measured in it (schema version, plan, predicted and measured costs with their provenance,
library versions). :func:`verify` checks every artefact against the masked model and, for ONNX
Runtime, times the shipped model against the dense one in one interleaved sitting.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwsearch import prune, recalibrate
from hwsearch.core import records
from hwsearch.core.errors import PlanError, StoreError
from hwsearch.graph import ModelGraph
from hwsearch.measure import versions
from hwsearch.core.plan import Plan
from hwsearch.finetuned_pick import pick_finetuned
from hwsearch.searching.summary import SearchSummary
from targets.runtimes import export_onnx

__all__ = ["MANIFEST_SCHEMA_VERSION", "NoPlanWithinDrop", "candidate_line", "pick_plan", "from_search", "bundle",
           "verify"]

log = logging.getLogger(__name__)
MANIFEST_SCHEMA_VERSION = 1


class NoPlanWithinDrop(PlanError):
    """No measured plan of a search is within the accepted accuracy drop of the dense model
    (or the dense accuracy is unknown), so there is nothing to export without the user naming
    a plan. ``candidates`` are the most accurate measured plans (records, best first);
    ``details`` their one-line descriptions for the CLI."""

    def __init__(self, message: str, candidates: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.candidates = list(candidates or [])
        self.details = tuple(candidate_line(r) for r in self.candidates)


def _fmt_accuracy(rec: dict[str, Any]) -> str:
    return "?" if rec.get("accuracy") is None else f"{rec['accuracy']:.3f}"


def candidate_line(rec: dict[str, Any]) -> str:
    """One measured plan for a terminal: key, accuracy, measured latency (µs), compact plan."""
    return (f"{rec['plan_key']}  accuracy {_fmt_accuracy(rec)}  measured {rec['latency_s'] * 1e6:.1f} µs  "
            f"{Plan.from_dict(rec['plan']).compact()}")


def pick_plan(search_dir: Path, *, plan_key: str | None = None, max_drop: float = 0.01,
              n_candidates: int = 5) -> dict[str, Any]:
    """The measurement record of the plan to export from a search's output directory.

    With ``plan_key`` (the full key or a unique prefix of it, as the search's table shows):
    that plan, whatever its accuracy. Otherwise the fastest *measured* pruned plan whose
    accuracy is within ``max_drop`` (absolute fraction) of the dense model's (fastest by its
    speed-up over dense in its own sitting: :func:`hwsearch.core.records.fastest`). Raises
    :class:`NoPlanWithinDrop` with the ``n_candidates`` most accurate measured plans when no
    plan is, or when the dense accuracy was not recorded: a plan far below the dense accuracy
    is never exported unless named. Raises :class:`StoreError` when nothing was measured.
    """
    search_dir = Path(search_dir)
    every = records.load(search_dir / "measurements.jsonl", strict=False)
    recs = [r for r in every if not r.get("error") and r.get("latency_s")]
    if not recs:
        raise StoreError(f"no successful measurement in {search_dir}/measurements.jsonl: run `hwsearch search "
                         f"--out {search_dir}` first")
    if plan_key:
        keys = sorted({r["plan_key"] for r in recs})
        hits = [k for k in keys if k == plan_key] or [k for k in keys if k.startswith(plan_key)]
        if len(hits) == 1:
            return next(r for r in recs if r["plan_key"] == hits[0])
        if hits:
            raise PlanError(f"plan {plan_key!r} is ambiguous in {search_dir}: it begins {', '.join(hits)}; "
                            "give more of the key")
        raise PlanError(f"plan {plan_key!r} was not measured in {search_dir}; measured: {', '.join(keys)}")
    dense_key = Plan().key
    # the dense accuracy is on its record even when its measurement failed
    dense_acc = records.accuracy_of(every, dense_key)
    pruned = [r for r in recs if r["plan_key"] != dense_key]
    best = sorted(pruned, key=lambda r: (-(r.get("accuracy") if r.get("accuracy") is not None else -1.0),
                                         r["latency_s"]))[:n_candidates]
    if dense_acc is None:
        raise NoPlanWithinDrop(f"the dense model's accuracy is not recorded in {search_dir}/measurements.jsonl, so "
                               f"no plan can be checked against --max-drop {max_drop:g}; name one with --plan KEY "
                               f"(most accurate measured plans below)", best)
    ok = [r for r in pruned if r.get("accuracy") is not None and r["accuracy"] >= dense_acc - max_drop]
    if ok:
        return records.fastest(ok)
    top = f"the most accurate reaches {best[0]['accuracy']:.3f}" if best and best[0].get("accuracy") is not None \
        else "no pruned plan was measured"
    raise NoPlanWithinDrop(f"no measured plan in {search_dir} is within --max-drop {max_drop:g} of the dense accuracy "
                           f"{dense_acc:.3f} ({top}); nothing exported: name a plan with --plan KEY, allow a larger "
                           f"--max-drop, or search again with a looser budget"
                           + (" (best measured plans below)" if best else ""), best)


def from_search(search_dir: Path, *, plan_key: str | None = None, max_drop: float = 0.01, out: Path | None = None,
                target: str | None = None, progress: Callable[[str], None] | None = None,
                finetune_steps: int = 0, finetune_candidates: int = 0) -> tuple[Path, dict[str, Any]]:
    """Export a plan of a finished search (``hwsearch export``): the plan picked by
    :func:`pick_plan`, rebuilt from the search's ``summary.json`` config (model, data, pruning
    settings, BatchNorm recalibration) and bundled by :func:`bundle` for ``target`` (default:
    the search's) into ``out`` (default ``<search_dir>/export-<plan key>``). With
    ``finetune_steps`` and ``finetune_candidates`` > 0 (and no ``plan_key``) the plan is picked
    by its accuracy after the fine-tune instead (:func:`hwsearch.finetuned_pick.pick_finetuned`:
    the candidates that met the search's latency budget, fine-tuned, the fastest within
    ``max_drop``); the manifest lists them. Returns (bundle directory, manifest). Nothing is
    written when no plan qualifies (:class:`NoPlanWithinDrop`); :class:`StoreError` when
    ``search_dir`` is not a search's output."""
    import costmodels
    from hwsearch import zoo
    from hwsearch.graph import analyze
    from targets.spec import get_target

    say = progress or (lambda msg: log.info(msg))
    search_dir = Path(search_dir)
    summary = SearchSummary.load(search_dir)
    cfg = summary.config
    by_finetune = finetune_steps > 0 and finetune_candidates > 0 and not plan_key
    rec = None if by_finetune else pick_plan(search_dir, plan_key=plan_key, max_drop=max_drop)
    spec = get_target(target or cfg.get("target", "host-x86"))
    if target is None and summary.runtime and spec.runtime != summary.runtime:
        spec = spec.with_runtime(summary.runtime)  # ship in the runtime the search measured
    model, example = zoo.load_model(cfg.get("model", zoo.REFERENCE[0]))
    data = None
    n_bn = int(cfg.get("bn_recalibration", 0))  # what the search scored the plan with
    if example is None or n_bn > 0 or finetune_steps > 0:
        data = zoo.load_data(cfg.get("data", zoo.REFERENCE[1]))
        example = data.example_input if example is None else example
    graph = analyze(model, example)
    bn_batches = None
    if n_bn > 0 and data is not None and data.x_train is not None:
        bn_batches = recalibrate.calibration_batches(data, n_bn)
    tried: list[dict[str, Any]] = []
    if by_finetune:
        budget_x = cfg.get("latency_budget_x")
        rec, tried = pick_finetuned(search_dir, graph, data, steps=finetune_steps, max_drop=max_drop,
                                    candidates=finetune_candidates, speedup_needed=1 / budget_x if budget_x else None,
                                    channel_multiple=int(cfg.get("channel_multiple", 8)),
                                    min_density=float(cfg.get("min_density", 0.0)),
                                    criterion=cfg.get("criterion", "magnitude"), bn_batches=bn_batches, say=say)
        if rec is None:
            by_key = {r.get("plan_key"): r for r in records.load(search_dir / "measurements.jsonl", strict=False)}
            raise NoPlanWithinDrop(f"no fine-tuned candidate in {search_dir} is within --max-drop {max_drop:g} of the "
                                   f"dense accuracy after {finetune_steps} steps (best "
                                   f"{max(t['accuracy_finetuned'] for t in tried):.3f}); nothing exported: fine-tune "
                                   "longer, allow a larger --max-drop or search with a looser budget",
                                   [by_key[t["plan_key"]] for t in tried])
    plan = Plan.from_dict(rec["plan"])
    out = Path(out) if out is not None else search_dir / f"export-{plan.key}"
    say(f"exporting plan {plan.key} ({plan.compact()}; accuracy {_fmt_accuracy(rec)}, measured "
        f"{rec['latency_s'] * 1e6:.1f} µs) for {spec.identity} to {out}")
    cm = None
    if (search_dir / "costmodel.json").exists() and spec.identity == summary.target:
        cm = costmodels.load(search_dir / "costmodel.json", spec)
    manifest = bundle(graph, plan, spec, out, channel_multiple=int(cfg.get("channel_multiple", 8)),
                      min_density=float(cfg.get("min_density", 0.0)), criterion=cfg.get("criterion", "magnitude"),
                      record=rec, predicted={"latency_s": rec.get("predicted_latency_s")},
                      tvm_work_dir=search_dir / f"tvm-{spec.name}", cost_model=cm, bn_batches=bn_batches,
                      finetune_data=data, finetune_steps=finetune_steps)
    if tried:
        manifest["finetune_candidates"] = tried
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return out, manifest


def bundle(graph: ModelGraph, plan: Plan, target: Any, out: Path, *, channel_multiple: int = 8,
           min_density: float = 0.0, criterion: str = "magnitude", record: dict[str, Any] | None = None,
           predicted: dict[str, Any] | None = None, tvm_work_dir: Path | None = None,
           compile_artifact: bool = True, cost_model: Any = None,
           bn_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
           finetune_data: Any = None, finetune_steps: int = 0) -> dict[str, Any]:
    """Write the bundle for ``plan`` into ``out``; returns the manifest. A failed compile of the
    target artefact is recorded in the manifest (``artifacts.error``), not raised.

    ``bn_batches`` (a function giving training batches) re-estimates the BatchNorm statistics of
    the pruned model as the search's Evaluator did when it scored the plan
    (:mod:`hwsearch.recalibrate`), so the bundle is the model whose accuracy was reported.
    ``finetune_steps`` > 0 fine-tunes the folded model that many steps on ``finetune_data``'s
    train split (:func:`hwsearch.zoo.train`, Adam, lr 1e-3) before export: the artefacts are
    then checked against the fine-tuned model, and the manifest says so."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dec = prune.decide(graph, plan, criterion=criterion, channel_multiple=channel_multiple, min_density=min_density)
    folded = prune.apply(graph, dec, mode="fold").eval()
    masked = prune.apply(graph, dec, mode="mask").eval()
    bn_used = 0
    if bn_batches is not None:
        bn_used = recalibrate.recalibrate_bn(folded, bn_batches())
        recalibrate.recalibrate_bn(masked, bn_batches())
    with torch.no_grad():
        ref = masked(*graph.example_inputs)
        got = folded(*graph.example_inputs)
    max_err = float((ref - got).abs().max())
    if finetune_steps > 0:
        from hwsearch import zoo

        if finetune_data is None or finetune_data.x_train is None:
            raise PlanError("fine-tuning a bundle needs a data set with a train split")
        zoo.train(folded, finetune_data, steps=finetune_steps, lr=1e-3)
        folded.eval()
        with torch.no_grad():
            ref = folded(*graph.example_inputs)  # the shipped model is the fine-tuned one
    ep = torch.export.export(folded, graph.example_inputs)
    torch.export.save(ep, out / "model.pt2")
    artifacts: dict[str, Any] = {"pytorch": "model.pt2", "fold_vs_mask_max_abs_err": max_err,
                                 "bn_recalibration_batches": bn_used, "finetune_steps": finetune_steps}
    errors: list[str] = []
    try:
        export_onnx(folded, graph.example_inputs, out / "model.onnx")
        artifacts["onnx"] = "model.onnx"
    except Exception as exc:  # recorded: an ONNX failure must not lose the other artefacts
        errors.append(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    backend = getattr(target, "backend", None) or target.measure.get("backend")
    runtime = getattr(target, "runtime", None)
    if runtime == "onnxruntime" and "onnx" in artifacts:
        try:
            export_onnx(graph.model, graph.example_inputs, out / "dense.onnx")
            artifacts["dense_onnx"] = "dense.onnx"  # what verify times the shipped model against
        except Exception as exc:  # recorded
            errors.append(f"dense ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        (out / "run_onnxruntime.py").write_text(_ORT_SNIPPET)
        artifacts["loader"] = "run_onnxruntime.py"
    if compile_artifact and backend in ("tvm-local", "tvm-rpc"):
        try:
            from targets import tvm as tvm_backend

            lib = tvm_backend.build_library(folded, graph.example_inputs, out_path=out / "model.so",
                                            work_dir=Path(tvm_work_dir or out / "tvm"),
                                            tvm_target=dict(target.measure.get("tvm_target", {})) or None,
                                            cross_compiler=target.measure.get("cross_compiler"))
            artifacts["tvm_library"] = Path(lib).name
            artifacts["tvm_target"] = dict(target.measure.get("tvm_target", {})) or "host default"
        except Exception as exc:  # a failed build is a record in the manifest
            errors.append(f"TVM build failed: {type(exc).__name__}: {exc}")
    predicted = dict(predicted or {})
    try:
        import costmodels

        cm = cost_model or costmodels.default_for(target)
        cost = cm.predict(graph, plan, resolved=dec.resolved, allow_gaps=True)
        predicted.update({"latency_s": predicted.get("latency_s", cost.latency_s), "model_latency_s": cost.latency_s,
                          "latency_std_s": cost.latency_std_s, "flash_bytes": cost.flash_bytes,
                          "sram_bytes": cost.sram_bytes, "instructions": cost.instructions,
                          "coverage_gaps": list(cost.coverage_gaps), "costmodel": cm.identity})
    except Exception as exc:  # a prediction failure must not stop the export
        predicted["error"] = f"{type(exc).__name__}: {exc}"
    mcu_info: dict[str, Any] | None = None
    if compile_artifact and backend == "mcu-qemu":
        try:
            mcu_info = _export_mcu(folded, graph, dec, target, out / "mcu_c")
            artifacts["mcu_c"] = "mcu_c"
        except Exception as exc:  # recorded: the other artefacts stay usable
            errors.append(f"MCU C export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    if errors:
        artifacts["error"] = "; ".join(errors)
    shipped = {"onnxruntime": "onnx", "torch": "pytorch", "tvm": "tvm_library"}.get(runtime or "")
    if shipped is None:
        shipped = "tvm_library" if backend in ("tvm-local", "tvm-rpc") else ("mcu_c" if backend == "mcu-qemu" else None)
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "target": target.identity, "plan_key": plan.key, "plan": plan.to_dict(),
        # the runtime the plan was measured in and ships in, and the artefact that runs in it
        "runtime": runtime, "runtime_version": _runtime_version(runtime), "shipped_artifact": artifacts.get(shipped),
        "channel_multiple": channel_multiple, "criterion": criterion,
        "input_shapes": [list(x.shape) for x in graph.example_inputs],
        "predicted": predicted,
        "measured": {k: record.get(k) for k in ("latency_s", "latency_iqr_s", "latency_min_s", "latency_max_s",
                                                 "repeats", "number", "mode", "backend", "device", "date",
                                                 "versions", "tvm_target", "accuracy", "runtime", "runtime_version",
                                                 "speedup_same_runtime", "speedup_vs_fastest", "speedup_vs_fastest_lo",
                                                 "speedup_vs_fastest_hi", "no_measurable_change", "sitting",
                                                 "sitting_protocol")} if record else None,
        "artifacts": artifacts, "versions": versions(),
    }
    if mcu_info is not None:
        manifest["mcu"] = mcu_info
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    np.save(out / "example_input.npy", graph.example_inputs[0].detach().numpy())
    np.save(out / "reference_output.npy", ref.detach().numpy())
    return manifest


_ORT_SNIPPET = '''"""Run the exported model with ONNX Runtime (CPU execution provider), as hwsearch measured it."""
import sys

import numpy as np
import onnxruntime as ort

so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession("model.onnx", so, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[1] if len(sys.argv) > 1 else "example_input.npy").astype(np.float32)
print(session.run(None, {session.get_inputs()[0].name: x})[0])
'''


def _runtime_version(runtime: str | None) -> str | None:
    if runtime is None:
        return None
    from targets.runtimes import runtime_versions

    if runtime == "tvm":
        return versions().get("tvm")
    return runtime_versions().get(runtime)


def verify(bundle_dir: Path, *, atol: float = 1e-4, time_it: bool = True, passes: int = 3) -> dict[str, str]:
    """Reload every artefact of a bundle and compare its outputs with the masked model's
    (``reference_output.npy`` on ``example_input.npy``). Returns {artefact: "ok …" or the
    failure}; a library built for another architecture is checked as an ELF of that machine.
    An ONNX bundle also runs in ONNX Runtime (``onnxruntime``) and, with ``time_it``, the
    shipped ``model.onnx`` is timed against ``dense.onnx`` in one interleaved sitting of
    ``passes`` fresh processes (``latency``)."""
    bundle_dir = Path(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    x = np.load(bundle_dir / "example_input.npy")
    ref = np.load(bundle_dir / "reference_output.npy")
    arts = manifest["artifacts"]
    res: dict[str, str] = {}

    def check(name: str, got: np.ndarray) -> None:
        err = float(np.abs(np.asarray(got) - ref).max())
        res[name] = f"ok (max abs err {err:.2e})" if err <= atol * max(1.0, float(np.abs(ref).max())) else \
            f"FAILED: max abs err {err:.2e} > {atol:g}"

    for name, fn in (("pytorch", _run_pt2), ("onnx", _run_onnx), ("tvm_library", _run_tvm)):
        if name not in arts:
            continue
        try:
            got = fn(bundle_dir / arts[name], x, manifest)
            if isinstance(got, str):
                res[name] = got
            else:
                check(name, got)
        except Exception as exc:
            res[name] = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if "mcu_c" in arts:
        res["mcu_c"] = _verify_mcu(bundle_dir / arts["mcu_c"], manifest)
    if manifest.get("runtime") == "onnxruntime" and "onnx" in arts:
        try:
            check("onnxruntime", _run_ort(bundle_dir / arts["onnx"], x))
        except Exception as exc:
            res["onnxruntime"] = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if time_it and "dense_onnx" in arts:
            res["latency"] = _time_shipped(bundle_dir, arts, x, manifest, passes)
    return res


def _run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _time_shipped(bundle_dir: Path, arts: dict[str, Any], x: np.ndarray, manifest: dict, passes: int) -> str:
    """The shipped ONNX model against the dense one, interleaved in ONNX Runtime."""
    import tempfile

    from hwsearch.deploy import speedup_text
    from targets.runtimes import SittingConfig, measure_sitting

    with tempfile.TemporaryDirectory(prefix="hwsearch-verify-") as tmp:
        res = measure_sitting({"dense": bundle_dir / arts["dense_onnx"], "shipped": bundle_dir / arts["onnx"]},
                              (torch.from_numpy(x),), work_dir=Path(tmp), runtimes=("onnxruntime",),
                              reference="dense", config=SittingConfig(passes=passes, rounds=15))
    d, s = res[("dense", "onnxruntime")], res[("shipped", "onnxruntime")]
    if d.error or s.error:
        return f"FAILED: {d.error or s.error}"
    rec = {"speedup_same_runtime": s.speedup, "speedup_lo": s.speedup_lo, "speedup_hi": s.speedup_hi,
           "no_measurable_change": s.no_measurable_change}
    fastest = ((manifest.get("measured") or {}).get("runtime") or "onnxruntime")
    return (f"ok: shipped {s.latency_s * 1e6:.1f} µs vs dense {d.latency_s * 1e6:.1f} µs in onnxruntime "
            f"{s.versions.get('onnxruntime', '')} (interleaved, {s.passes} fresh processes): "
            f"{speedup_text(rec)} (the search measured the plan in {fastest})")


def _run_pt2(path: Path, x: np.ndarray, manifest: dict) -> np.ndarray:
    ep = torch.export.load(str(path))
    with torch.no_grad():
        return ep.module()(torch.from_numpy(x)).numpy()


def _run_onnx(path: Path, x: np.ndarray, manifest: dict) -> np.ndarray:
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x})[0]


_ELF_MACHINES = {0x3E: "x86-64", 0xB7: "AArch64", 0x28: "ARM"}


def _elf_machine(path: Path) -> str:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        raise ValueError(f"{path.name} is not an ELF file")
    return _ELF_MACHINES.get(int.from_bytes(head[18:20], "little"), hex(int.from_bytes(head[18:20], "little")))


def _run_tvm(path: Path, x: np.ndarray, manifest: dict) -> np.ndarray | str:
    import platform

    machine = _elf_machine(path)
    host = {"x86_64": "x86-64", "aarch64": "AArch64"}.get(platform.machine(), platform.machine())
    if machine != host:
        return f"ok (built only: {machine} ELF shared object; run it on the device or over TVM RPC)"
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()


def _export_mcu(folded: torch.nn.Module, graph: ModelGraph, dec: prune.Decisions, target: Any, out: Path) -> dict:
    """C sources for a Cortex-M target: kernels, weights in each layer's format, buffer plan."""
    from costmodels.memory import layer_storage
    from targets.mcu.ops import mcu_fmt
    from targets.mcu import codegen

    res = dec.resolved
    storage = layer_storage(res, "int8")
    formats = {layer: {"fmt": mcu_fmt(str(r["pattern"]), str(storage.at[layer, "fmt"])), "n": int(r["n"]),
                       "m": int(r["m"]), "block": tuple(r["block"])} for layer, r in res.iterrows()}
    exp = codegen.export_graph(folded, graph.example_inputs[0], out, dtype="int8", formats=formats)
    info = {"cpu": str(target.measure.get("qemu_cpu", "cortex-m4")), "dtype": "int8", "sources": "mcu_c"}
    m = exp.manifest
    for key in ("flash_bytes", "weight_bytes", "peak_sram_bytes", "arena_bytes", "scratch_bytes", "sram_bytes"):
        if key in m:
            info[key] = m[key]
    return info


def _verify_mcu(c_dir: Path, manifest: dict) -> str:
    from targets.mcu import codegen

    cpu = manifest.get("mcu", {}).get("cpu", "cortex-m4")
    r = codegen.build(c_dir, cpu, run=True)
    if r.error or not r.ok:
        return f"FAILED: {r.error}"
    return (f"ok (arm-none-eabi-gcc build ran in QEMU {cpu}: {r.instructions} instructions per inference, "
            f"max abs err {r.max_abs_err:.3g} vs the int8 reference, flash {r.text_bytes} B)")
