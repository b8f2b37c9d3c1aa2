"""Search space: patterns per layer follow the target, the shapes and the cost model; the
collapse guard binds and is reported; sampling is deterministic."""
from __future__ import annotations

import optuna

import costmodels
from hwsearch.graph import analyze
from hwsearch.plan import Plan, resolve
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
