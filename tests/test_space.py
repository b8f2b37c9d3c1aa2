"""Search space: patterns per layer follow the target, the shapes and the cost model; the
collapse guard binds and is reported; sampling is deterministic."""
from __future__ import annotations

import optuna

import costmodels
from hwsearch.graph import analyze
from hwsearch.core.plan import Plan
from hwsearch.core.resolve import resolve
from hwsearch.space import SearchSpace
from targets.spec import get_target


def test_channel_only_on_group_leaders_and_shapes_respected(resdw):
    g = analyze(*resdw)
    sp = SearchSpace.build(g, get_target("host-x86"), patterns_wanted=("dense", "unstructured", "channel", "nm", "block"))
    assert "channel" in sp.allowed["c1"] and "channel" not in sp.allowed["c2"]   # c2 follows c1 (residual)
    assert "channel" not in sp.allowed["fc"]                                     # output layer
    assert "nm" not in sp.allowed["c1"] and "nm" in sp.dropped["c1"]             # 1x3 reduction: not /4
    assert "nm" in sp.allowed["c2"]


def test_gpu_offers_2of4_only_where_predicted_to_pay(resdw):
    g = analyze(*resdw)
    t = get_target("nvidia-a100")
    sp = SearchSpace.build(g, t, patterns_wanted=("dense", "nm"), cost_model=costmodels.default_for(t))
    for layer in g.table.index:
        if "nm" not in sp.allowed[layer]:
            assert "nm" in sp.dropped[layer]
    # a tiny model is launch-bound: no layer gains from 2:4, and each says why
    assert any("predicted no gain" in why.get("nm", "") for why in sp.dropped.values())


def test_sampling_is_deterministic_and_guard_reported(resdw):
    g = analyze(*resdw)
    sp = SearchSpace.build(g, get_target("host-x86"), max_ratio=0.95, min_density=0.2)

    def plans(seed):
        st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        return [sp.suggest(st.ask()).key for _ in range(10)]

    assert plans(3) == plans(3) and plans(3) != plans(4)
    plan = Plan.from_dict({"c2": {"pattern": "unstructured", "ratio": 0.95}})
    res = resolve(g.table, g.groups, plan, min_density=0.2)
    assert res.at["c2", "weight_density"] >= 0.2
    assert any(r.startswith("c2:") for r in sp.guard_report(res))


def test_pick_prefers_plans_with_unmeasured_kernels_within_each_run_of_the_front():
    import pandas as pd

    from hwsearch.searching.picks import pick as _pick

    front = pd.DataFrame({"plan_key": list("abcdef"), "accuracy": [0.9, 0.89, 0.88, 0.8, 0.7, 0.6],
                          "plan": [{"l": {"pattern": "channel", "ratio": r}} for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]})
    novelty = {"a": 0, "b": 3, "c": 1, "d": 0, "e": 0, "f": 2}
    key_of = {Plan.from_dict(p).key: k for k, p in zip(front["plan_key"], front["plan"])}
    picks = _pick(front, measured=set(), k=2, novelty=lambda p: novelty[key_of[p.key]])
    assert [key_of[p.key] for p, _ in picks] == ["b", "f"]        # most novel in each half
    assert _pick(front, measured=set(front["plan_key"]), k=2) == []


def test_patterns_that_save_no_time_are_searched_only_when_memory_matters(resdw):
    """On host-x86 unstructured sparsity runs through dense kernels: with no flash/SRAM budget it
    is not offered (it could only cost accuracy); with one it is. On the Cortex-M7, whose sparse
    kernels do save time, it stays either way."""
    g = analyze(*resdw)
    host = get_target("host-x86")
    cm = costmodels.default_for(host)
    lat_only = SearchSpace.build(g, host, cost_model=cm, memory_matters=False)
    with_mem = SearchSpace.build(g, host, cost_model=cm, memory_matters=True)
    for layer in g.table.index:
        assert "unstructured" not in lat_only.allowed[layer]
        assert "no flash/SRAM budget" in lat_only.dropped[layer]["unstructured"]
        assert "unstructured" in with_mem.allowed[layer]
    assert "channel" in lat_only.allowed["c1"]
    m7 = get_target("cortex-m7")
    mcu = SearchSpace.build(g, m7, cost_model=costmodels.default_for(m7), memory_matters=False)
    assert any("unstructured" in mcu.allowed[layer] for layer in g.table.index)


def test_seed_plans_are_uniform_channel_plans_on_the_grid(resdw):
    g = analyze(*resdw)
    sp = SearchSpace.build(g, get_target("host-x86"), max_ratio=0.35)
    seeds = sp.seed_plans()
    leaders = [layer for layer, opts in sp.allowed.items() if "channel" in opts]
    assert leaders and len(seeds) == 4  # 0.1, 0.2, 0.3 and 0.4 capped at 0.35
    for p in seeds:
        assert set(p.keys()) == set(leaders)
        ratios = {p.get_choice(layer).ratio for layer in leaders}
        assert len(ratios) == 1 and all(c.pattern == "channel" for c in p.values())
    # enqueued, they come back as the same plans
    study = optuna.create_study()
    for p in seeds:
        study.enqueue_trial(sp.params_of(p))
    assert [sp.suggest(study.ask()).key for _ in seeds] == [p.key for p in seeds]


def test_neighbours_move_one_layer_or_trade_between_two(resdw):
    from hwsearch.core.plan import LayerChoice

    g = analyze(*resdw)
    sp = SearchSpace.build(g, get_target("host-x86"), patterns_wanted=("dense", "channel"), max_ratio=0.55)
    plan = Plan({"c1": LayerChoice("channel", 0.5)})
    nb = sp.neighbours(plan)
    assert nb and plan.key not in {p.key for p in nb}
    by = {p.key: p for p in nb}
    ratio = lambda p, layer: p.get_choice(layer).ratio if p.get_choice(layer).pattern != "dense" else 0.0  # noqa: E731
    # single moves of c1: ±1…4 steps (0.55 is the cap, so only +1 is offered upward)
    singles = {round(ratio(p, "c1"), 2) for p in nb if ratio(p, "pw") == 0.0}
    assert singles == {0.3, 0.35, 0.4, 0.45, 0.55}
    # a trade: c1 down and pw (dense) up in the same plan
    assert any(ratio(p, "c1") < 0.5 and ratio(p, "pw") > 0 for p in by.values())
    for p in nb:
        moved = [layer for layer in sp.allowed if ratio(p, layer) != ratio(plan, layer)]
        assert 1 <= len(moved) <= 2
        assert all(0.0 <= ratio(p, layer) <= 0.55 + 1e-9 for layer in sp.allowed)
