"""BatchNorm recalibration (adaptive BN): the statistics it writes are the batches' own, mask and
fold mode agree after it, it is what the search's Evaluator scores, and it helps a pruned model."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from hwsearch import prune, recalibrate, zoo
from hwsearch.graph import analyze
from hwsearch.core.plan import LayerChoice, Plan


def _batches(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 1, 16, generator=g), torch.zeros(32, dtype=torch.long)) for _ in range(n)]


def test_running_stats_are_the_average_of_the_batch_statistics(resdw) -> None:
    model, _ = resdw
    batches = _batches(3)
    # expected: b1's input is c1(x); its per-batch mean/unbiased var, averaged over batches
    with torch.no_grad():
        acts = [model.c1(x) for x, _ in batches]
    mean = torch.stack([a.mean(dim=(0, 2)) for a in acts]).mean(0)
    var = torch.stack([a.transpose(0, 1).reshape(8, -1).var(dim=1, unbiased=True) for a in acts]).mean(0)
    w_before = model.c1.weight.clone()
    n = recalibrate.recalibrate_bn(model, batches)
    assert n == 3
    assert not model.training
    torch.testing.assert_close(model.b1.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.b1.running_var, var, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.c1.weight, w_before)
    assert model.b1.momentum == 0.1  # restored


def test_no_batches_leaves_the_statistics_alone(resdw) -> None:
    model, _ = resdw
    before = model.b2.running_var.clone()
    assert recalibrate.recalibrate_bn(model, []) == 0
    assert torch.equal(model.b2.running_var, before)
    assert recalibrate.recalibrate_bn(nn.Sequential(nn.Linear(2, 2)), _batches()) == 0


def test_mask_and_fold_agree_after_recalibration(resdw) -> None:
    model, x = resdw
    graph = analyze(model, x)
    plan = Plan({"c1": LayerChoice("channel", 0.5), "pw": LayerChoice("unstructured", 0.5)})
    dec = prune.decide(graph, plan, channel_multiple=1)
    folded = prune.apply(graph, dec, mode="fold")
    masked = recalibrate.masked_model(graph, prune.masked_state(graph, dec))
    batches = _batches(4)
    recalibrate.recalibrate_bn(folded, batches)
    recalibrate.recalibrate_bn(masked, batches)
    assert folded.b1.num_features == 4
    with torch.no_grad():
        torch.testing.assert_close(folded(batches[0][0]), masked(batches[0][0]), rtol=1e-4, atol=1e-5)
    # and the statistics differ from the dense model's: recalibration did something
    assert not torch.allclose(masked.b2.running_mean, model.b2.running_mean)


@pytest.fixture(scope="module")
def reference():
    """The trained width-8 reference model, MNIST-1D, its graph and the host target."""
    from targets.spec import get_target

    torch.set_num_threads(1)
    model, example = zoo.mnist1d_cnn_small()
    return model, zoo.mnist1d_data(), analyze(model, example), get_target("host-x86")


def test_evaluator_scores_the_recalibrated_model_and_it_helps(reference) -> None:
    """On the trained reference model (width 8), a channel-pruned plan scored by the Evaluator
    equals the accuracy of the masked model recalibrated on the same batches, and beats the
    stale-statistics accuracy (EagleEye's observation) by a clear margin."""
    import costmodels
    from hwsearch.searching import Evaluator, SearchConfig

    model, data, graph, target = reference
    plan = Plan({"down": LayerChoice("channel", 0.5), "pw": LayerChoice("channel", 0.5)})
    on = Evaluator(graph, data, target, costmodels.default_for(target), SearchConfig(out_dir="unused"))
    off = Evaluator(graph, data, target, costmodels.default_for(target),
                    SearchConfig(out_dir="unused", bn_recalibration=0))
    assert on.bn_batches is not None and off.bn_batches is None
    dec = on.decisions(plan)
    acc_on, acc_off = on.accuracy(dec), off.accuracy(dec)
    ref = recalibrate.masked_model(graph, prune.masked_state(graph, dec))
    recalibrate.recalibrate_bn(ref, data.batches("train", 128, shuffle=True, seed=0, limit=8))
    assert acc_on == zoo.evaluate(ref, data)
    assert acc_off == zoo.evaluate(model, data, params=prune.masked_state(graph, dec))
    assert acc_on > acc_off + 0.05, (acc_on, acc_off)


def test_export_ships_the_recalibrated_model_the_evaluator_scored(reference, tmp_path) -> None:
    """The bundle's model.pt2 has the accuracy the search's Evaluator gave the plan (so what
    ships is what was chosen), and the manifest says how many batches recalibrated it."""
    import costmodels
    from hwsearch import exporting
    from hwsearch.searching import Evaluator, SearchConfig

    model, data, graph, target = reference
    plan = Plan({"res1": LayerChoice("channel", 0.5), "head": LayerChoice("unstructured", 0.5)})
    ev = Evaluator(graph, data, target, costmodels.default_for(target), SearchConfig(out_dir="unused"))
    acc = ev.accuracy(ev.decisions(plan))
    m = exporting.bundle(graph, plan, target, tmp_path / "b", min_density=0.05, compile_artifact=False,
                      bn_batches=recalibrate.calibration_batches(data, 8))
    assert m["artifacts"]["bn_recalibration_batches"] == 8
    assert m["artifacts"]["fold_vs_mask_max_abs_err"] < 1e-4
    shipped = torch.export.load(tmp_path / "b" / "model.pt2").module()
    # the exported program has a batch-1 input: score the first 50 validation signals one by one
    with torch.no_grad():
        correct = sum(int(shipped(data.x_val[i:i + 1]).argmax(-1)[0] == data.y_val[i]) for i in range(50))
    ref = recalibrate.masked_model(graph, prune.masked_state(graph, ev.decisions(plan)))
    recalibrate.recalibrate_bn(ref, ev.bn_batches())
    with torch.no_grad():
        expect = int((ref(data.x_val[:50]).argmax(-1) == data.y_val[:50]).sum())
    assert correct == expect
    assert acc == zoo.evaluate(ref, data)
