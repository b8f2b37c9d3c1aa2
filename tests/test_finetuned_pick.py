"""The fine-tuned pick (#12): when the export fine-tunes, the plan is chosen by its accuracy
*after* fine-tuning, among the measured plans that met the budget — and the model that ships is
the one whose accuracy was compared.

The measurement records here are written by the test (a stand-in for a search's
``measurements.jsonl``: the speed-ups and as-cut accuracies are set so the ranking is known);
the fine-tunes, the fold and the export are real. The whole path through a real search is in
``tests/test_search_e2e.py`` and ``studies/deployment``."""
from __future__ import annotations

import pytest

from hwsearch import zoo
from hwsearch.core import records
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.exporting import bundle
from hwsearch.finetuned_pick import finetuned_accuracy, pick_finetuned
from hwsearch.graph import analyze
from targets.spec import get_target


@pytest.fixture(scope="module")
def small():
    model, x = zoo.mnist1d_cnn_small()
    return analyze(model, x), zoo.mnist1d_data()


def _rec(plan: Plan, accuracy: float, latency_s: float, speedup: float) -> dict:
    return {"plan_key": plan.key, "plan": plan.to_dict(), "accuracy": accuracy, "latency_s": latency_s,
            "speedup_vs_fastest": speedup, "error": None, "target": "host-x86@1+onnxruntime",
            "backend": "onnxruntime-sitting", "mode": "sitting", "predicted_latency_s": latency_s,
            "versions": {}, "date": "2026-12-02T00:00:00+00:00"}


def test_pick_ranks_by_accuracy_after_fine_tuning_among_plans_meeting_the_budget(small, tmp_path):
    graph, data = small
    lead = [n for n in graph.table.index if bool(graph.table.at[n, "group_leader"])
            and bool(graph.table.at[n, "channel_prunable"])]
    assert lead, "the reference model has prunable channel groups"
    mild = Plan({lead[0]: LayerChoice("channel", 0.25)})
    hard = Plan({layer: LayerChoice("channel", 0.75) for layer in lead})
    slow = Plan({lead[-1]: LayerChoice("channel", 0.1)})
    dense_acc = zoo.evaluate(graph.model, data)
    recs = [_rec(Plan(), dense_acc, 100e-6, 1.0),
            _rec(mild, dense_acc - 0.05, 80e-6, 1.45),    # meets 1/0.7 = 1.43x
            _rec(hard, dense_acc - 0.40, 50e-6, 2.0),     # meets it, far below as cut
            _rec(slow, dense_acc, 95e-6, 1.05)]           # most accurate as cut, misses the budget
    for r in recs:
        records.append(tmp_path / "measurements.jsonl", r)
    said: list[str] = []
    rec, tried = pick_finetuned(tmp_path, graph, data, steps=10, max_drop=1.0, candidates=5,
                                speedup_needed=1 / 0.7, say=said.append)
    assert {t["plan_key"] for t in tried} == {mild.key, hard.key}       # the slow plan is not a candidate
    assert len(said) == 2 and all("after 10 steps" in s for s in said)
    assert rec["plan_key"] == hard.key                                 # any drop allowed: the fastest
    # what was compared is what ships: re-fine-tuning the pick gives the same accuracy
    ft = {t["plan_key"]: t["accuracy_finetuned"] for t in tried}
    assert ft[hard.key] == pytest.approx(finetuned_accuracy(graph, hard, data, 10))
    # a drop only the more accurate fine-tuned plan meets: that one, whatever its accuracy as cut
    best = max(ft, key=ft.get)
    rec, _ = pick_finetuned(tmp_path, graph, data, steps=10, max_drop=dense_acc - ft[best] + 1e-9,
                            candidates=5, speedup_needed=1 / 0.7)
    assert rec["plan_key"] == best
    # with no drop allowed nothing qualifies, and the caller gets every fine-tuned accuracy
    rec, tried = pick_finetuned(tmp_path, graph, data, steps=10, max_drop=-1.0, candidates=1, speedup_needed=1.4)
    assert rec is None and len(tried) == 1 and tried[0]["plan_key"] == mild.key   # most accurate as cut first


def test_bundle_ships_the_fine_tuned_model_the_pick_scored(small, tmp_path):
    graph, data = small
    lead = next(n for n in graph.table.index if bool(graph.table.at[n, "group_leader"])
                and bool(graph.table.at[n, "channel_prunable"]))
    plan = Plan({lead: LayerChoice("channel", 0.5)})
    acc = finetuned_accuracy(graph, plan, data, 10)
    bundle(graph, plan, get_target("host-x86").with_runtime("onnxruntime"), tmp_path, finetune_data=data,
           finetune_steps=10, compile_artifact=False)
    import numpy as np
    import onnxruntime as ort

    # the shipped model.onnx (batch 1, as exported), run by ONNX Runtime over the validation split
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = data.x_val.numpy()
    pred = np.array([int(np.argmax(sess.run(None, {name: x[i:i + 1]})[0])) for i in range(len(x))])
    assert float(np.mean(pred == data.y_val.numpy())) == pytest.approx(acc, abs=2e-3)  # fp32 reorderings: ±2 samples
