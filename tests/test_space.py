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


def test_pick_prefers_plans_with_unmeasured_kernels_within_each_run_of_the_front():
    import pandas as pd

    from hwsearch.search import _pick

    front = pd.DataFrame({"plan_key": list("abcdef"), "accuracy": [0.9, 0.89, 0.88, 0.8, 0.7, 0.6],
                          "plan": [{"l": {"pattern": "channel", "ratio": r}} for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]})
    novelty = {"a": 0, "b": 3, "c": 1, "d": 0, "e": 0, "f": 2}
    key_of = {Plan.from_dict(p).key: k for k, p in zip(front["plan_key"], front["plan"])}
    picks = _pick(front, measured=set(), k=2, novelty=lambda p: novelty[key_of[p.key]])
    assert [key_of[p.key] for p, _ in picks] == ["b", "f"]        # most novel in each half
    assert _pick(front, measured=set(front["plan_key"]), k=2) == []
