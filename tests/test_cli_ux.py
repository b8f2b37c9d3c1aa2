"""A newcomer's first run: a factory that raises is one line, the reference model's training
is announced, the Pareto table reads at 80 columns, patterns not offered are said on the
terminal, and export refuses a plan far below the dense accuracy unless it is named."""
from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from hwsearch import cli, exporting, zoo
from hwsearch.core import records
from hwsearch.cli import main, print_front_table
from hwsearch.core.plan import LayerChoice, Plan

ROOT = Path(__file__).parents[1]
FIXTURES = "tests.fixtures.bad_models"


def _error_lines(capsys, argv: list[str]) -> list[str]:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[0].startswith("hwsearch: error:"), err
    return err


@pytest.fixture
def restore_progress_logging():
    """``main`` routes hwsearch.zoo's INFO messages to the terminal; put the logger back."""
    lg = logging.getLogger("hwsearch.zoo")
    state = (lg.level, lg.propagate, list(lg.handlers))
    yield
    lg.setLevel(state[0])
    lg.propagate = state[1]
    lg.handlers[:] = state[2]


@pytest.mark.parametrize("argv, factory, quoted", [
    (["search", "--model", f"{FIXTURES}:raising_model"], f"{FIXTURES}:raising_model",
     "RuntimeError: checkpoint weights/net.pt not found"),
    (["search", "--model", f"{FIXTURES}:unexportable", "--data", f"{FIXTURES}:raising_data"],
     f"{FIXTURES}:raising_data", "ValueError: no split named 'validation'"),
    (["profile", "--model", f"{FIXTURES}:raising_model"], f"{FIXTURES}:raising_model",
     "RuntimeError: checkpoint weights/net.pt not found"),
])
def test_raising_factory_is_one_line(argv, factory, quoted, capsys, tmp_path, monkeypatch, restore_progress_logging):
    monkeypatch.chdir(ROOT)  # the fixtures import as tests.fixtures.*
    monkeypatch.setattr(sys, "path", list(sys.path))
    err = _error_lines(capsys, argv + ["--out", str(tmp_path / "o")])
    assert len(err) == 1, err  # no traceback, no second line of the exception
    assert repr(factory) in err[0] and quoted in err[0], err
    assert "hwsearch -v" in err[0]  # the remedy: where the traceback is


def test_export_of_a_search_whose_model_raises_is_one_line(capsys, tmp_path, restore_progress_logging, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))
    d = _fake_search(tmp_path, [("a", 0.99, 40e-6)], model=f"{FIXTURES}:raising_model")
    err = _error_lines(capsys, ["export", "--from", str(d)])
    assert len(err) == 1 and "RuntimeError: checkpoint weights/net.pt not found" in err[0], err
    assert not list(d.glob("export-*"))


def test_model_module_imports_from_the_current_directory(capsys, tmp_path, monkeypatch, restore_progress_logging):
    """The library leaves sys.path alone; the command imports --model from where it runs."""
    pkg = tmp_path / "mypkg_cli_ux"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("def net():\n    raise RuntimeError('imported from the cwd')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    with pytest.raises(Exception, match="No module named 'mypkg_cli_ux'"):
        zoo.load_model("mypkg_cli_ux.models:net")  # the library did not add the cwd
    monkeypatch.delitem(sys.modules, "mypkg_cli_ux", raising=False)
    err = _error_lines(capsys, ["profile", "--out", str(tmp_path / "o"), "--model", "mypkg_cli_ux.models:net"])
    assert "RuntimeError: imported from the cwd" in err[0], err
    monkeypatch.delitem(sys.modules, "mypkg_cli_ux.models", raising=False)
    monkeypatch.delitem(sys.modules, "mypkg_cli_ux", raising=False)


def test_training_the_reference_model_is_announced(capsys, tmp_path, monkeypatch, restore_progress_logging):
    zoo.mnist1d_data()  # generated once per session cache; copied so only the model trains here
    data = next(zoo.cache_dir().glob("mnist1d-seed42.pt"))
    monkeypatch.setenv("HWSEARCH_CACHE", str(tmp_path))
    shutil.copy(data, tmp_path / data.name)
    cli._setup_logging(verbose=False)  # what `hwsearch ...` sets up
    zoo.mnist1d_cnn(width=4, epochs=2)
    out = capsys.readouterr().out
    assert "· training the reference model (width 4, 2 epochs; first run only)" in out, out
    assert "epoch 1/2: training loss" in out, out
    assert "trained the reference model in" in out and "validation accuracy" in out, out
    assert str(tmp_path) in out.replace("\n", "")  # where it is cached
    zoo.mnist1d_cnn(width=4, epochs=2)  # cached now: nothing to announce
    assert "training" not in capsys.readouterr().out


def test_compact_plan_notation():
    plan = Plan({"stem": LayerChoice("channel", 0.25), "pw": LayerChoice("channel", 0.5),
                 "head": LayerChoice("unstructured", 0.7), "res1": LayerChoice("nm"),
                 "dw": LayerChoice("block", 0.125, block=(1, 4)), "down": LayerChoice("dense")})
    assert plan.compact() == "dw bk12.5[1x4] · head un70 · pw ch50 · res1 2:4 · stem ch25"
    assert plan.compact(sep=", ") == "dw bk12.5[1x4], head un70, pw ch50, res1 2:4, stem ch25"
    assert Plan().compact() == "dense"


def _front(rows: list[tuple[str, dict, float, float, float | None]], dense_s: float | None) -> pd.DataFrame:
    df = pd.DataFrame([{"plan_key": Plan.from_dict(p).key, "plan": p, "accuracy": acc,
                        "predicted_latency_s": pred, "measured_latency_s": meas if meas is not None else float("nan"),
                        "flash_bytes": 4096, "describe": Plan.from_dict(p).describe()} for _, p, acc, pred, meas in rows])
    df.attrs["dense_latency_s"] = dense_s
    return df


def test_front_table_reads_at_80_columns():
    many = {layer: {"pattern": "channel", "ratio": 0.5} for layer in ("stem", "down", "res1", "dw", "pw")}
    many["head"] = {"pattern": "unstructured", "ratio": 0.7}
    rows = [("far", {"stem": {"pattern": "channel", "ratio": 0.9}}, 0.332, 20e-6, None),
            ("far2", {"down": {"pattern": "channel", "ratio": 0.9}}, 0.61, 22e-6, 30e-6),
            ("many", many, 0.981, 30e-6, 41e-6),
            ("one", {"pw": {"pattern": "channel", "ratio": 0.25}}, 0.993, 50e-6, None)]
    df = _front(rows, dense_s=60e-6)
    con = Console(width=80, file=io.StringIO(), highlight=False, emoji=False, record=True)
    print_front_table(con, df, dense_accuracy=0.995, hide_below=0.1, csv="out/pareto.csv")
    text = con.export_text()
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80, text
    assert "dense: accuracy 0.995, 60.0 µs measured" in text
    keys = {name: Plan.from_dict(p).key[:7] for name, p, *_ in rows}
    assert keys["many"] in text and keys["one"] in text
    assert keys["far"] not in text and keys["far2"] not in text  # 0.332 and 0.61 are > 10 points below 0.995
    assert "2 plans more than 10 points below the dense accuracy 0.995 not shown (see out/pareto.csv)" in " ".join(
        ln.strip() for ln in lines)
    # every layer's choice is shown whole (wrapped between layers, never inside one)
    cells = " ".join(ln[ln.index(keys["many"]):] if keys["many"] in ln else ln for ln in lines)
    for entry in ("down ch50", "dw ch50", "head un70", "pw ch50", "res1 ch50", "stem ch50", "pw ch25"):
        assert entry in cells, text
    row = next(ln for ln in lines if keys["many"] in ln)
    assert "0.981" in row and "41.0" in row and "1.46×" in row and "4.0" in row  # the numbers stay


def test_front_table_shows_the_best_when_none_is_near_dense():
    df = _front([("a", {"pw": {"pattern": "channel", "ratio": 0.9}}, 0.2, 10e-6, None),
                 ("b", {"pw": {"pattern": "channel", "ratio": 0.8}}, 0.3, 11e-6, None)], dense_s=None)
    con = Console(width=80, file=io.StringIO(), highlight=False, emoji=False, record=True)
    print_front_table(con, df, dense_accuracy=0.99, hide_below=0.1, csv="pareto.csv")
    text = " ".join(con.export_text().split())
    assert "no plan is within 10 points of the dense accuracy 0.990; the 2 most accurate of 2 shown" in text
    assert "pw ch90" in text and "pw ch80" in text


def test_not_offered_lines_group_layers_by_reason():
    from hwsearch.graph import analyze
    from hwsearch.searching import SearchConfig, fit_cost_model
    from hwsearch.space import SearchSpace
    from targets.spec import get_target

    graph = analyze(*zoo.load_model("hwsearch.zoo:mnist1d_cnn_small"))
    target = get_target("host-x86")
    cm = fit_cost_model(target, graph, [], SearchConfig(out_dir=Path("unused")))[0]
    space = SearchSpace.build(graph, target, patterns_wanted=("dense", "nm", "channel"), cost_model=cm,
                              memory_matters=True)
    # with a memory budget 2:4 is offered wherever the shape takes it: stem has 1 input
    # channel, dw is depthwise (1 per group)
    assert space.not_offered_lines() == [
        "pattern nm not offered on 2 of 7 layers:",
        "  stem, dw: 2:4 sparsity needs its input channels per group (1) divisible by 4 (groups run along input "
        "channels)"]
    dense_only = SearchSpace.build(graph, target, patterns_wanted=("dense", "nm"), cost_model=cm, memory_matters=False)
    lines = dense_only.not_offered_lines()
    assert lines[0] == "pattern nm not offered on 7 of 7 layers:"
    assert "  down, res1, res2, pw, head: no predicted speed-up on this target and no flash/SRAM budget is set " \
        "(it would only cost accuracy)" in lines
    assert lines[-1] == "no layer is left any pattern but dense: this search can only return the dense model"
    assert SearchSpace.build(graph, target, patterns_wanted=("dense", "channel"), cost_model=cm).not_offered_lines() == []


def test_patterns_not_offered_are_printed(capsys, tmp_path, restore_progress_logging):
    # nvidia-h200: its measuring backend (CUDA) is not run by the CLI, so the search ends without
    # TVM; on the small reference model stem (1 input channel) and dw (depthwise) cannot take
    # 2:4 and without a memory budget no other layer is predicted to gain from it
    code = main(["search", "--target", "nvidia-h200", "--model", "hwsearch.zoo:mnist1d_cnn_small", "--patterns",
                 "dense,nm", "--rounds", "1", "--trials", "2", "--measure-top-k", "0", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert code == 0, out
    joined = " ".join(out.split())
    assert "pattern nm not offered on 7 of 7 layers:" in joined, out
    assert "stem, dw: 2:4 sparsity needs its input channels per group (1) divisible by 4" in joined, out
    assert "down, res1, res2, pw, head: " in joined, out
    assert "no layer is left any pattern but dense: this search can only return the dense model" in joined, out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert set(summary["patterns_not_offered"]) == {"stem", "down", "res1", "res2", "dw", "pw", "head"}


def _fake_search(d: Path, plans: list[tuple[str, float, float]], *, dense_accuracy: float | None = 0.995,
                 model: str = zoo.REFERENCE[0]) -> Path:
    """A search output directory with only summary.json and measurements.jsonl."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text(json.dumps({"target": "host-x86@1", "config": {
        "target": "host-x86", "model": model, "data": zoo.REFERENCE[1], "bn_recalibration": 0}}))
    base = {"target": "host-x86@1", "backend": "tvm-local", "mode": "quick", "predicted_latency_s": 1e-5,
            "versions": {}, "date": "x", "error": None}
    records.append(d / "measurements.jsonl", dict(base, plan_key=Plan().key, plan={}, accuracy=dense_accuracy,
                                                  latency_s=100e-6))
    for name, acc, lat in plans:
        plan = Plan({name: LayerChoice("channel", 0.5)})
        records.append(d / "measurements.jsonl", dict(base, plan_key=plan.key, plan=plan.to_dict(), accuracy=acc,
                                                      latency_s=lat))
    return d


def test_export_refuses_a_plan_far_below_dense(capsys, tmp_path):
    d = _fake_search(tmp_path / "s", [("stem", 0.332, 40e-6), ("pw", 0.5, 60e-6), ("down", 0.41, 50e-6)])
    before = sorted(p.name for p in d.iterdir())
    err = _error_lines(capsys, ["export", "--from", str(d), "--max-drop", "0.01"])
    assert "no measured plan" in err[0] and "within --max-drop 0.01 of the dense accuracy 0.995" in err[0], err
    assert "the most accurate reaches 0.500" in err[0] and "--plan KEY" in err[0], err
    # then the candidates, best first: key, accuracy, measured latency, compact plan
    keys = {n: Plan({n: LayerChoice("channel", 0.5)}).key for n in ("stem", "pw", "down")}
    assert len(err) == 4, err
    assert err[1].split() == [keys["pw"], "accuracy", "0.500", "measured", "60.0", "µs", "pw", "ch50"], err
    assert err[2].startswith(f"  {keys['down']}  accuracy 0.410") and err[3].strip().startswith(keys["stem"]), err
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written
    # a named plan (a unique key prefix, as the table shows it) is the user's choice
    assert exporting.pick_plan(d, plan_key=keys["stem"][:7])["accuracy"] == 0.332
    # within the accepted drop, the fastest qualifying plan is picked
    assert exporting.pick_plan(d, max_drop=0.7)["plan_key"] == keys["stem"]


def test_export_refuses_without_a_dense_accuracy(tmp_path):
    d = _fake_search(tmp_path / "s", [("stem", 0.98, 40e-6)], dense_accuracy=None)
    with pytest.raises(exporting.NoPlanWithinDrop, match="dense model's accuracy is not recorded") as e:
        exporting.pick_plan(d)
    assert [r["accuracy"] for r in e.value.candidates] == [0.98]
