"""``hwsearch`` command line: a thin layer over the Python API.

Every user error prints one line (``hwsearch: error: …`` with the fix), then the error's
``details`` if it has any (e.g. the plans an export can choose from), and exits with status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hwsearch.core.errors import HwsearchError

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console, ConsoleOptions
    from rich.measure import Measurement
    from rich.text import Text

    from hwsearch.searching import SearchResult

__all__ = ["main"]


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, emoji=False)  # emoji=False: "2:4" and ":M:" are text, not emoji codes


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="host-x86", help="target name (see `hwsearch targets`) or spec .toml path")
    p.add_argument("--model", default=None, help="module:function returning a trained nn.Module "
                   "(or (module, example_input)); default: the embedded MNIST-1D CNN")
    p.add_argument("--data", default=None, help="module:function returning a hwsearch.zoo.Dataset or tensors "
                   "(x_train, y_train, x_val, y_val); default: MNIST-1D generated locally")


def _search_parser(sub) -> None:
    p = sub.add_parser("search", help="find per-layer sparsity for a device (search → measure → refit rounds)",
                       description="Search per-layer sparsity plans on a target: Optuna trials priced by the "
                       "cost model, the Pareto winners measured (TVM on the host), the cost model refit, "
                       "for --rounds rounds. Rerun the same command to resume.")
    _add_common(p)
    p.add_argument("--out", type=Path, default=Path("hwsearch-out"), help="output directory (default hwsearch-out)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<out>/study.db; "
                   "postgresql://…, or journal:<file>)")
    p.add_argument("--study", default="hwsearch", help="study name prefix (rounds are <study>-round<r>)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--trials", type=int, default=60, help="trials per round")
    p.add_argument("--measure-top-k", type=int, default=3, help="Pareto plans measured per round")
    p.add_argument("--max-accuracy-drop", type=float, default=0.05,
                   help="measure only front plans within this accuracy (absolute) of the dense model")
    p.add_argument("--runtime", choices=["auto", "onnxruntime", "tvm", "torch"], default="auto",
                   help="the runtime plans are measured (and shipped) in; auto: the one that runs the dense model "
                   "fastest, timed when the search starts (TVM counts only tuned: --mode tuned)")
    p.add_argument("--passes", type=int, default=3, help="fresh processes per interleaved sitting "
                   "(ONNX Runtime / torch): the dense model and a round's plans are timed together in each")
    p.add_argument("--mode", choices=["quick", "tuned"], default=None,
                   help="TVM measuring mode: quick (best of sampled schedules: an exploration proxy, never a "
                   "deployment latency) or tuned (MetaSchedule; the default with --runtime tvm)")
    p.add_argument("--tuning-trials", type=int, default=64, help="MetaSchedule trials per model (tuned mode)")
    p.add_argument("--samples", type=int, default=8, help="schedules sampled per kernel (quick mode)")
    p.add_argument("--patterns", default="dense,unstructured,channel,head,qhead",
                   help="comma-separated patterns to search (dense,unstructured,channel,nm,block,head,qhead; "
                   "head/qhead: attention heads / query heads per KV group, given on query projections)")
    p.add_argument("--criterion", default="magnitude", help="importance criterion")
    p.add_argument("--max-ratio", type=float, default=0.9)
    p.add_argument("--min-density", type=float, default=0.05, help="layer-collapse guard: minimum density per layer")
    p.add_argument("--channel-multiple", type=int, default=8, help="round kept channels to this multiple")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune steps per trial before evaluation")
    p.add_argument("--bn-recalibration", type=int, default=8, help="training batches to re-estimate BatchNorm "
                   "statistics of each pruned plan before scoring it (adaptive BN; 0: off); exports carry them")
    p.add_argument("--costmodel", type=Path, default=None, help="start from this saved cost model "
                   "(e.g. the lookup table written by `hwsearch profile`) instead of the analytical one")
    p.add_argument("--tvm-dir", type=Path, default=None, help="TVM tuning database directory to use and add "
                   "to (default: OUT/tvm-TARGET); share one between runs to reuse their schedules")
    p.add_argument("--sampler", choices=["nsga2", "tpe", "random"], default="nsga2")
    p.add_argument("--greedy-seed", action=argparse.BooleanOptionalAction, default=True,
                   help="with a latency budget, start round 1 also from a NetAdapt-style greedy plan")
    p.add_argument("--edge-seeds", type=int, default=64,
                   help="with a latency budget, start round 1 also from up to this many channel plans on the budget's "
                   "edge, all of them when the kept-channel lattice is small (0: off)")
    p.add_argument("--polish-trials", type=int, default=40, help="with budgets: up to this many more trials per "
                   "round of local search around the most accurate feasible plans (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", default="main", help="this worker's name: several workers on one --storage each "
                   "add --trials trials per round; rerunning a worker resumes its share")
    p.add_argument("--latency-budget-us", type=float, default=None, help="latency budget (µs) as a hard constraint")
    p.add_argument("--latency-budget-x", type=float, default=None, help="latency budget as a fraction of the dense "
                   "model's latency in the fastest runtime, timed when the search starts (e.g. 0.7)")
    p.add_argument("--flash-budget-kb", type=float, default=None, help="weight storage budget (KiB)")
    p.add_argument("--sram-budget-kb", type=float, default=None, help="peak activation memory budget (KiB)")


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a tuned deployment of a searched plan",
                       description="Write a bundle (model.pt2, the target's compiled library, manifest.json) "
                       "for a plan measured by `hwsearch search`.")
    p.add_argument("--from", dest="search_dir", type=Path, default=Path("hwsearch-out"),
                   help="the search's output directory")
    p.add_argument("--plan", dest="plan_key", default=None, help="plan key to export (default: fastest measured "
                   "plan within --max-drop of the dense accuracy)")
    p.add_argument("--max-drop", type=float, default=0.01, help="accepted accuracy drop (absolute fraction)")
    p.add_argument("--out", type=Path, default=None, help="bundle directory (default <from>/export-<plan>)")
    p.add_argument("--target", default=None, help="export for another target than the search's (e.g. cortex-a76)")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune the pruned model this many steps on the "
                   "search's training data before export (the artefacts are checked against the fine-tuned model)")
    p.add_argument("--finetune-candidates", type=int, default=5, help="with --finetune-steps and no --plan: fine-tune "
                   "this many measured plans that met the search's budget (most accurate as cut first) and ship the "
                   "fastest within --max-drop after fine-tuning; 0 picks by the accuracy as cut")
    p.add_argument("--verify", action="store_true", help="reload every artefact and check its outputs against "
                   "the masked model")


def _targets_parser(sub) -> None:
    p = sub.add_parser("targets", help="list the shipped targets, or show one",
                       description="List target specs shipped with hwsearch, or show one with its sources.")
    p.add_argument("name", nargs="?", help="a target to show in full")


def _profile_parser(sub) -> None:
    p = sub.add_parser("profile", help="profile a target: per-layer latency over a grid of patterns and ratios",
                       description="Measure every layer of a model alone on the target across channel and "
                       "weight-level sparsity ratios (one build times every cell), write profile.csv, "
                       "profile.png and a lookup-table cost model (costmodel-lut.json) for --costmodel.")
    _add_common(p)
    p.add_argument("--out", type=Path, default=Path("hwsearch-profile"))
    p.add_argument("--ratios", default="0,0.25,0.5,0.75", help="comma-separated ratios removed")
    p.add_argument("--patterns", default="dense,channel,unstructured")
    p.add_argument("--channel-multiple", type=int, default=8)
    p.add_argument("--mode", choices=["quick", "tuned"], default=None)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="sweep kernels on this device and fit its kernel-level latency predictor",
                       description="Measure conv/depthwise/linear kernels with their fused epilogues in a runtime "
                       "on this machine (Latin hypercube, then rounds where the predictor is least certain) and "
                       "save the device's kernel predictor in the cache ($HWSEARCH_CACHE), where every search on "
                       "this device uses it for round 1 (the kernel cost model).")
    p.add_argument("--runtime", choices=["onnxruntime"], default="onnxruntime")
    p.add_argument("--budget-minutes", type=float, default=25.0, help="stop starting new rounds after this (default 25)")
    p.add_argument("--initial", type=int, default=None, help="kernels in the initial Latin-hypercube sample")
    p.add_argument("--per-round", type=int, default=None, help="kernels added per adaptive round")
    p.add_argument("--rounds", type=int, default=None, help="adaptive rounds")
    p.add_argument("--tiny", action="store_true", help="a dozen kernels in seconds (CI; not for searches)")
    p.add_argument("--out", type=Path, default=None, help="predictor file (default: the cache path of this device)")
    p.add_argument("--table", type=Path, default=None, help="also write the measured kernels as CSV here")


def _cmd_sweep(a: argparse.Namespace) -> int:
    import dataclasses

    from hwsearch.kernel_sweep import SweepConfig, sweep

    given = {k: v for k, v in (("initial", a.initial), ("per_round", a.per_round), ("rounds", a.rounds)) if v is not None}
    base = SweepConfig.tiny_grid() if a.tiny else SweepConfig()
    cfg = dataclasses.replace(base, runtime=a.runtime, budget_minutes=a.budget_minutes, **given)
    con = _console()
    res = sweep(cfg, out=a.out, progress=con.print)
    if a.table is not None:
        a.table.parent.mkdir(parents=True, exist_ok=True)
        res.table.to_csv(a.table, index=False)
        con.print(f"  wrote {a.table}")
        if res.ops is not None:
            ops_path = a.table.with_name(a.table.stem + "_ops.csv")
            res.ops.to_csv(ops_path, index=False)
            con.print(f"  wrote {ops_path}")
    con.print(f"  {res.predictor.meta.get('kernels')} kernels in {res.wall_s / 60:.1f} min; per-call overhead "
              f"{res.predictor.overhead_s * 1e6:.1f} µs; cross-validated within ±10%: {res.cv['within10']:.0%}")
    con.print(f"  wrote {res.path}")
    return 0


def _cmd_profile(a: argparse.Namespace) -> int:
    from hwsearch.core.errors import PlanError
    from hwsearch.profiling import profile_target

    try:
        ratios = tuple(float(r) for r in a.ratios.split(","))
    except ValueError:
        raise PlanError(f"--ratios {a.ratios!r} must be comma-separated numbers in [0, 1)") from None
    if any(not 0.0 <= r < 1.0 for r in ratios):
        raise PlanError(f"--ratios {a.ratios!r} out of range: each ratio removed must be in [0, 1)")
    con = _console()
    df, files = profile_target(a.target, out=a.out, model=a.model, data=a.data, ratios=ratios,
                               patterns=tuple(p.strip() for p in a.patterns.split(",")),
                               channel_multiple=a.channel_multiple, mode=a.mode, samples=a.samples,
                               repeats=a.repeats, progress=con.print)
    con.print(f"  {len(df)} cells, dense model {df.attrs['dense_latency_s'] * 1e6:.1f} µs measured, "
              f"overhead {df.attrs['overhead_s'] * 1e6:.1f} µs")
    for path in files.values():
        con.print(f"  wrote {path}")
    return 0


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="plots and tables of a search (front, per-layer sparsity, fidelity)",
                       description="Write PNG plots and CSV tables for a search output directory.")
    p.add_argument("--from", dest="search_dir", type=Path, default=Path("hwsearch-out"))
    p.add_argument("--out", type=Path, default=None, help="default <from>/report")


def _cmd_report(a: argparse.Namespace) -> int:
    from hwsearch.reporting import study_report

    con = _console()
    for name, path in study_report(a.search_dir, a.out).items():
        con.print(f"  {name:14s} {path}")
    return 0


def _cmd_search(a: argparse.Namespace) -> int:
    from hwsearch import zoo
    from hwsearch.searching import SearchConfig, search

    cfg = SearchConfig(
        out_dir=a.out, target=a.target, model=a.model or zoo.REFERENCE[0], data=a.data or zoo.REFERENCE[1],
        storage=a.storage, study_name=a.study, rounds=a.rounds, trials=a.trials, measure_top_k=a.measure_top_k, max_accuracy_drop=a.max_accuracy_drop,
        mode=a.mode, tuning_trials=a.tuning_trials, samples=a.samples, runtime=a.runtime, passes=a.passes,
        latency_budget_x=a.latency_budget_x,
        patterns=tuple(p.strip() for p in a.patterns.split(",") if p.strip()), criterion=a.criterion,
        max_ratio=a.max_ratio, min_density=a.min_density, channel_multiple=a.channel_multiple,
        finetune_steps=a.finetune_steps, bn_recalibration=a.bn_recalibration, sampler=a.sampler, seed=a.seed,
        worker=a.worker, costmodel_path=a.costmodel, polish_trials=a.polish_trials,
        greedy_seed=a.greedy_seed, edge_seeds=a.edge_seeds, tvm_dir=a.tvm_dir,
        latency_budget_s=a.latency_budget_us * 1e-6 if a.latency_budget_us else None,
        flash_budget_bytes=int(a.flash_budget_kb * 1024) if a.flash_budget_kb else None,
        sram_budget_bytes=int(a.sram_budget_kb * 1024) if a.sram_budget_kb else None)
    from rich.markup import escape

    con = _console()
    res = search(cfg, progress=lambda m: con.print(f"[dim]·[/dim] {escape(m)}"), show_bars=sys.stderr.isatty())
    _print_front(con, res)
    notes = {r.get("latency_note") for rr in res.rounds for r in rr.measured if r.get("latency_note")}
    for note in sorted(notes):
        con.print(f"[yellow]measured latency = {escape(note)}[/yellow]")
    con.print(f"\nwrote to {res.out_dir}/:")
    for name, path in res.files.items():
        con.print(f"  {name:13s} {path}")
    last = res.rounds[-1].study_name
    con.print(f"open the study: optuna.load_study(study_name={last!r}, storage={cfg.storage_url()!r})")
    return 0


# Plans more than this many times the search's --max-accuracy-drop below the dense accuracy are
# left out of the terminal table (they stay in pareto.csv): far below usable accuracy, they are
# the fast end of the front, which nobody deploys, and they pushed the usable plans off screen.
_HIDE_BELOW_DROPS = 2.0


def _dense_accuracy(res: SearchResult) -> float | None:
    """The dense model's accuracy: from the front's dense measurement, else from this run's
    dense record (it carries the accuracy even when its measurement failed)."""
    from hwsearch.core.plan import Plan

    acc = res.front.attrs.get("dense_accuracy")
    if acc is None:
        acc = next((r.get("accuracy") for rr in res.rounds for r in rr.measured
                    if r.get("plan_key") == Plan().key and r.get("accuracy") is not None), None)
    return acc


def _print_front(con: Console, res: SearchResult) -> None:
    for r in res.rounds:
        if r.fit:
            held = (f"; previous model on this round's new plans: {r.heldout['mape']:.1%}" if r.heldout else "")
            con.print(f"round {r.round}: {r.trials} trials, {len(r.measured)} measured; cost-model error on measured "
                      f"plans {r.fit.mape_before:.1%} (before the refit) → {r.fit.mape_after:.1%} (refit){held}")
    csv = res.files.get("pareto_csv", "pareto.csv")
    print_front_table(con, res.front, dense_accuracy=_dense_accuracy(res),
                      hide_below=_HIDE_BELOW_DROPS * res.config.max_accuracy_drop, csv=csv)


class _Entries:
    """A table cell of short entries ("down ch50") joined by ", " that wraps between entries,
    never inside one (rich would break "down ch50" at its space)."""

    def __init__(self, entries: list[str]) -> None:
        self.entries = entries

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        from rich.measure import Measurement

        return Measurement(max(map(len, self.entries)) + 1, len(", ".join(self.entries)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        from rich.text import Text

        lines, cur = [], ""
        for i, e in enumerate(self.entries):
            piece = e + ("," if i < len(self.entries) - 1 else "")
            if cur and len(cur) + 1 + len(piece) > options.max_width:
                lines.append(cur)
                cur = piece
            else:
                cur = f"{cur} {piece}" if cur else piece
        lines.append(cur)
        yield Text("\n".join(lines))


def print_front_table(con: Console, df: pd.DataFrame, *, dense_accuracy: float | None, hide_below: float,
                      csv: object) -> None:
    """The front as a table that reads at 80 columns: one row per plan with its key prefix
    (enough for ``hwsearch export --plan``), accuracy, predicted and measured µs, speed-up,
    flash, and the plan in :meth:`~hwsearch.core.plan.Plan.compact` notation wrapped in its cell.
    Plans more than ``hide_below`` (absolute accuracy) below ``dense_accuracy`` are counted, not
    shown; when that leaves none, the three most accurate are shown."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from hwsearch.core.plan import COMPACT_LEGEND, Plan

    dense = df.attrs.get("dense_latency_s")
    dep = df.attrs.get("deployment") or {}
    base = dep.get("dense_baseline") or {}
    fastest = base.get("fastest")
    shown, note = df, None
    if dense_accuracy is not None and not df.empty:
        floor = dense_accuracy - hide_below
        shown = df[df["accuracy"] >= floor - 1e-12]
        n_hidden = len(df) - len(shown)
        if shown.empty:
            shown = df.nlargest(3, "accuracy").sort_values("predicted_latency_s")
            note = (f"no plan is within {hide_below * 100:.3g} points of the dense accuracy {dense_accuracy:.3f}; "
                    f"the {len(shown)} most accurate of {len(df)} shown (all in {csv})")
        elif n_hidden:
            note = (f"{n_hidden} plan{'s' if n_hidden > 1 else ''} more than {hide_below * 100:.3g} points below the "
                    f"dense accuracy {dense_accuracy:.3f} not shown (see {csv})")
    runtime = dep.get("runtime")
    parts = ([f"accuracy {dense_accuracy:.3f}"] if dense_accuracy is not None else []) + \
        ([f"{dense * 1e6:.1f} µs measured" + (f" in {runtime}" if runtime else "")] if dense else [])
    t = Table(title="Pareto plans, last round" + (f" (dense: {', '.join(parts)})" if parts else ""),
              box=box.SIMPLE_HEAD, pad_edge=False)
    # short two-line headers: at 80 columns the plan column keeps about 40 characters
    for col in ("key", "top-1\nacc.", "pred.\nµs", "meas.\nµs", "speed-\nup", "flash\nKiB"):
        # a speed-up reads "1.42×" over its 95% confidence interval "1.35–1.50", or "no measurable change"
        t.add_column(col, justify="left" if col == "key" else "right", no_wrap=not col.startswith("speed"),
                     max_width=10 if col.startswith("speed") else None)
    t.add_column("plan\n(per layer)", justify="left", ratio=1, min_width=20)
    for _, row in shown.iterrows():
        meas = row["measured_latency_s"]
        has = meas == meas
        plan = _Entries(Plan.from_dict(row["plan"]).compact(sep="\n").splitlines())
        t.add_row(escape(row["plan_key"][:7]), f"{row['accuracy']:.3f}", f"{row['predicted_latency_s'] * 1e6:.1f}",
                  f"{meas * 1e6:.1f}" if has else "—", _speedup_cell(row, dense) if has else "—",
                  f"{(row['flash_bytes'] or 0) / 1024:.1f}", plan)
    con.print(t)
    if fastest:
        lat = (base.get("latency_s") or {}).get(fastest)
        con.print(f"speed-ups are measured against the dense model in {fastest}, the fastest runtime here "
                  f"({lat * 1e6:.1f} µs when the search started), interleaved in the same sitting; under each, "
                  "the 95% confidence interval of the median paired ratio")
    con.print(f"[dim]{escape(COMPACT_LEGEND)}; key: for `hwsearch export --plan KEY`[/dim]")
    if note:
        con.print(escape(note))


def _speedup_cell(row: pd.Series, dense: float | None) -> str:
    """A measured plan's speed-up: from its sitting record when there is one (against the fastest
    dense runtime, with its confidence interval), else measured dense ÷ measured plan."""
    text = row.get("speedup")
    if isinstance(text, str) and text != "—":
        return text.replace(" (", "\n").rstrip(")")
    meas = row["measured_latency_s"]
    return f"{dense / meas:.2f}×" if dense else "—"


def _cmd_export(a: argparse.Namespace) -> int:
    from rich.markup import escape

    from hwsearch import exporting

    con = _console()
    out, manifest = exporting.from_search(a.search_dir, plan_key=a.plan_key, max_drop=a.max_drop, out=a.out,
                                       target=a.target, progress=lambda m: con.print(escape(m)),
                                       finetune_steps=a.finetune_steps, finetune_candidates=a.finetune_candidates)
    for k, v in manifest["artifacts"].items():
        con.print(f"  {k}: {v}")
    con.print(f"  manifest: {out / 'manifest.json'}")
    failed = "error" in manifest["artifacts"]
    if a.verify:
        for k, v in exporting.verify(out).items():
            con.print(f"  verify {k}: {v}")
            failed |= not v.startswith("ok")
    return 1 if failed else 0


def _cmd_targets(a: argparse.Namespace) -> int:
    from rich.table import Table

    from targets.spec import get_target, list_targets

    con = _console()
    if a.name:
        s = get_target(a.name)
        con.print(f"[bold]{s.identity}[/bold] ({s.kind}) — {s.description}\nspec: {s.path}")
        for section in ("compute", "memory"):
            for k, f in getattr(s, section).items():
                con.print(f"  {section}.{k} = {f.value:g}    [dim]{f.source}[/dim]")
        for p, d in s.patterns.items():
            con.print(f"  patterns.{p}: {d}")
        con.print(f"  measure: {s.measure}")
        return 0
    t = Table(title="targets")
    for col in ("name", "kind", "backend", "accelerated patterns", "description"):
        t.add_column(col)
    for name, s in list_targets().items():
        acc = ", ".join(p for p in s.patterns if s.accelerates(p)) or "—"
        t.add_row(name, s.kind, str(s.measure.get("backend", "none")), acc, s.description)
    con.print(t)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwsearch", description="Hardware-aware per-layer sparsity search.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="cmd", required=True)
    _search_parser(sub)
    _export_parser(sub)
    _targets_parser(sub)
    _report_parser(sub)
    _profile_parser(sub)
    _sweep_parser(sub)
    return p


_COMMANDS = {"search": "_cmd_search", "export": "_cmd_export", "targets": "_cmd_targets", "report": "_cmd_report", "profile": "_cmd_profile",
             "sweep": "_cmd_sweep"}


class _ProgressLog(logging.Handler):
    """INFO messages of the loggers in :data:`_PROGRESS_LOGGERS` (data generation, training
    the reference model: the library does not print) on the terminal, like the search's
    progress lines."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        head = "[dim]·[/dim]" if record.levelno < logging.WARNING else f"[yellow]{record.levelname.lower()}:[/yellow]"
        _console().print(f"{head} {escape(record.getMessage())}")


_PROGRESS_LOGGERS = ("hwsearch.zoo", "hwsearch.searching.refit")


def _setup_logging(verbose: bool) -> None:
    """Warnings (debug messages with -v) on stderr; without -v, the progress loggers' INFO
    messages on the terminal through :class:`_ProgressLog` instead."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler])
    for name in _PROGRESS_LOGGERS:
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if isinstance(h, _ProgressLog)]:
            lg.removeHandler(h)
        if not verbose:  # with -v the root handler shows them, with their logger's name
            lg.setLevel(logging.INFO)
            lg.addHandler(_ProgressLog(logging.INFO))
            lg.propagate = False
        else:
            lg.setLevel(logging.NOTSET)
            lg.propagate = True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    # like `python -m`: --model mypkg.models:net imports from the current directory (the
    # library leaves sys.path alone; the console script's sys.path[0] is its bin directory)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    _setup_logging(a.verbose)
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if not a.verbose:  # third-party chatter (torch.export graph dumps, deprecations) hides our output
        import torch

        torch._logging.set_logs(all=logging.ERROR)  # documented switch for torch's own log handlers
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module="torch_pruning")
    try:
        return globals()[_COMMANDS[a.cmd]](a)
    except HwsearchError as exc:
        if a.verbose and exc.__cause__ is not None:  # e.g. the traceback of a --model factory that raised
            traceback.print_exception(exc.__cause__)
        print(f"hwsearch: error: {exc}", file=sys.stderr)
        for line in exc.details:  # e.g. the plans to choose from
            print(f"  {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwsearch: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
