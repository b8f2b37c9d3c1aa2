"""Baselines: stated sparsity, NetAdapt reaching a predicted-latency budget with its trajectory,
deterministic random search — all scored through the search's Evaluator."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import costmodels
from hwsearch import baselines, prune, zoo
from hwsearch.graph import analyze
from hwsearch.core.resolve import kept_channels, resolve
from hwsearch.searching import Evaluator, SearchConfig
from hwsearch.space import SearchSpace
from targets.spec import get_target


@pytest.fixture
def setup(resdw, tmp_path):
    """ResDWNet, data labelled by the dense model itself (dense accuracy = 1.0), the host
    target and its roofline model with the fixed overheads removed (so channel pruning can cut
    the predicted latency of this tiny model by half)."""
    model, x = resdw
    g = analyze(model, x)
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(256, 1, 16, generator=gen)
    with torch.no_grad():
        ys = model(xs).argmax(-1)
    data = zoo.Dataset(xs[128:], ys[128:], xs[:128], ys[:128], name="self-labelled")
    target = get_target("host-x86")
    cm = costmodels.default_for(target)
    cm.overhead = {k: 0.0 for k in cm.overhead}
    cm.overhead_model = 0.0
    cfg = SearchConfig(out_dir=tmp_path, min_density=0.05, channel_multiple=8)
    return g, data, target, cm, Evaluator(g, data, target, cm, cfg)


def test_uniform_gives_the_stated_sparsity(setup):
    g, _, target, _, ev = setup
    plan = baselines.uniform(g, 0.6, "unstructured", target=target)
    assert set(plan) == set(g.table.index)
    res = resolve(g.table, g.groups, plan)
    for layer, r in res.iterrows():
        w = int(r["dense_weights"])
        assert r["nnz"] == math.ceil(0.4 * w - 1e-9)           # every layer: 60 % removed (rounded up kept)
    assert 1 - res["nnz"].sum() / res["dense_weights"].sum() == pytest.approx(0.6, abs=0.02)
    dec = ev.decisions(plan)
    for layer, mask in dec.masks.items():                       # the masks remove exactly that
        assert int(mask.sum()) == int(res.at[layer, "nnz"])
    chan = baselines.uniform(g, 0.5, "channel")
    leaders = [n for n in g.table.index if g.table.at[n, "group_leader"] and g.table.at[n, "channel_prunable"]]
    assert set(chan) == set(leaders) and "fc" not in chan       # the output layer keeps its classes
    res = resolve(g.table, g.groups, chan, channel_multiple=8)
    for layer in leaders:
        c = int(g.table.at[layer, "out_channels"])
        assert res.at[layer, "kept_out"] == kept_channels(c, 0.5, 8)
    with pytest.raises(Exception, match="unknown pattern"):
        baselines.uniform(g, 0.5, "diagonal")


@pytest.mark.parametrize("sparsity", [0.3, 0.7])
def test_global_magnitude_gives_the_stated_sparsity_with_one_threshold(setup, sparsity):
    g, *_ = setup
    plan = baselines.global_magnitude(g, sparsity)
    dec = prune.decide(g, plan)
    mods = dict(g.model.named_modules())
    total = sum(mods[n].weight.numel() for n in g.table.index)
    kept = sum(int(dec.masks[n].sum()) if n in dec.masks else mods[n].weight.numel() for n in g.table.index)
    assert kept == round((1 - sparsity) * total)
    removed_max = max(float(mods[n].weight.detach().abs()[~dec.masks[n]].max()) for n in dec.masks
                      if (~dec.masks[n]).any())
    kept_min = min(float(mods[n].weight.detach().abs()[dec.masks[n] if n in dec.masks else
                                                      torch.ones_like(mods[n].weight, dtype=torch.bool)].min())
                   for n in g.table.index)
    assert removed_max <= kept_min                               # one global magnitude threshold
    floored = baselines.global_magnitude(g, sparsity, min_density=0.25)   # the minimum density is respected
    dec = prune.decide(g, floored, min_density=0.25)
    res = dec.resolved
    assert (res["nnz"] >= np.ceil(0.25 * res["dense_weights"] - 1e-9)).all()
    kept = sum(int(dec.masks[n].sum()) if n in dec.masks else mods[n].weight.numel() for n in g.table.index)
    assert kept == round((1 - sparsity) * total)


def test_netadapt_meets_a_predicted_budget_and_records_its_trajectory(setup):
    g, _, _, cm, ev = setup
    dense = cm.predict(g, baselines.uniform(g, 0.0, "dense")).latency_s
    budget = 0.6 * dense
    run = baselines.netadapt(g, ev, cm, budget, step=0.1)
    traj = run.trajectory
    assert run.met and traj["predicted_latency_s"].iloc[-1] <= budget
    assert traj["predicted_latency_s"].iloc[0] == pytest.approx(dense)
    assert (np.diff(traj["predicted_latency_s"]) < 0).all()    # every iteration cuts latency
    assert traj["accuracy"].iloc[0] == pytest.approx(1.0)       # self-labelled data: dense is exact
    assert traj["accuracy"].between(0, 1).all() and len(traj) == len(run.plans) >= 2
    assert (traj["kept_after"].iloc[1:] < traj["kept_before"].iloc[1:]).all()
    for plan, lat in zip(run.plans, traj["predicted_latency_s"]):  # the recorded cost is the model's
        assert cm.predict(g, plan, channel_multiple=8, min_density=0.05).latency_s == pytest.approx(lat, rel=1e-9)
        assert all(c.pattern == "channel" for c in plan.values())
    best = run.best_within(budget)
    assert best is not None and best["predicted_latency_s"] <= budget
    # an unreachable budget: stops at the floor, says so
    floor = baselines.netadapt(g, ev, cm, 1e-12, step=0.2)
    assert not floor.met and floor.trajectory["predicted_latency_s"].iloc[-1] < dense


def test_random_search_is_deterministic_given_a_seed(setup):
    g, _, target, cm, ev = setup
    space = SearchSpace.build(g, target)
    a = baselines.random_search(space, ev, 12, seed=3)
    b = baselines.random_search(space, ev, 12, seed=3)
    c = baselines.random_search(space, ev, 12, seed=4)
    assert list(a.table["plan_key"]) == list(b.table["plan_key"])
    np.testing.assert_array_equal(a.table["accuracy"], b.table["accuracy"])
    assert list(a.table["plan_key"]) != list(c.table["plan_key"])
    assert len(a.plans) == 12 and a.table["error"].isna().all()
    for plan in a.plans:                                       # plans come from the space's grid
        for layer, ch in plan.items():
            assert ch.pattern in space.allowed[layer]
            assert ch.pattern == "nm" or abs(ch.ratio / space.step - round(ch.ratio / space.step)) < 1e-6
            assert ch.ratio <= space.max_ratio + 1e-9
    dense = cm.predict(g, baselines.uniform(g, 0.0, "dense")).latency_s
    within = baselines.random_search(space, ev, 6, seed=0, latency_budget_s=0.9 * dense)
    assert len(within.plans) == 6 and (within.table["predicted_latency_s"] <= 0.9 * dense).all()
