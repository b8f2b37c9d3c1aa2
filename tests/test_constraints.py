"""Budgets are hard constraints of the Optuna study: every trial carries its violations (on
the trial itself with Optuna 5, where the sampler reads them), the front holds only feasible
plans (the over-budget dense model, on the front without the constraint, is not), and an
unreachable budget is reported with the closest any plan came. Real Optuna, real cost model and
evaluator on the trained width-8 reference model; no TVM (nothing is measured)."""
from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
import torch

import costmodels
from costmodels.batch import BatchPricer
from hwsearch.searching import config as S_config
from hwsearch.searching import evaluator as S_eval
from hwsearch.searching import front as S_front
from hwsearch.searching import polish as S_polish
from hwsearch.searching import seeds as S_seeds
from hwsearch.searching import trials as S_trials
from hwsearch import zoo
from hwsearch.graph import analyze
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.space import SearchSpace
from targets.spec import get_target


@pytest.fixture
def setup(tmp_path):
    """The width-8 reference model (trained, so pruning costs accuracy and the dense model is
    the most accurate plan) on MNIST-1D, priced by the host's roofline model."""
    torch.set_num_threads(1)
    model, example = zoo.mnist1d_cnn_small()
    data = zoo.mnist1d_data()
    g = analyze(model, example)
    target = get_target("host-x86")
    cm = costmodels.default_for(target)
    pricer = BatchPricer(g, target, cm, channel_multiple=1, min_density=0.05)
    dense = float(pricer.price_plans([Plan()])["latency_s"][0])
    space = SearchSpace.build(g, target, patterns_wanted=("dense", "channel"), max_ratio=0.9, min_density=0.05)
    cfg = S_config.SearchConfig(out_dir=tmp_path, channel_multiple=1, min_density=0.05, seed=0)
    return g, data, target, cm, pricer, dense, space, cfg


def _run(setup, budget_frac: float, n: int = 80) -> tuple[optuna.Study, S_config.SearchConfig]:
    g, data, target, cm, pricer, dense, space, cfg = setup
    cfg = dataclasses.replace(cfg, latency_budget_s=budget_frac * dense)
    ev = S_eval.Evaluator(g, data, target, cm, cfg)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=S_trials.make_sampler(cfg, True))
    study.enqueue_trial(space.params_of(Plan()))  # the dense model: the most accurate plan, over budget
    S_trials.run_trials(study, space, ev, pricer, n, cfg, show_bars=False)
    return study, cfg


def test_budget_is_a_constraint_the_sampler_follows(setup):
    dense = setup[5]
    study, cfg = _run(setup, 0.95)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 80
    for t in done:
        (v,) = t.user_attrs["constraints"]
        assert v == pytest.approx(t.values[1] / cfg.latency_budget_s - 1.0)
        if S_trials.TRIAL_CONSTRAINTS:  # Optuna 5: the value the sampler reads lives on the trial
            assert t.constraints == {"latency": pytest.approx(v)}
    assert done[0].user_attrs["plan_key"] == Plan().key and done[0].user_attrs["constraints"][0] > 0
    # Unconstrained, the dense plan (accuracy 1.0) is on the accuracy/latency front; as a
    # constraint the budget keeps it (and every other over-budget plan) off the front.
    front = S_front.pareto_front(study)
    assert len(front) and front["feasible"].all()
    assert Plan().key not in set(front["plan_key"])
    assert (front["predicted_latency_s"] <= 0.95 * dense + 1e-12).all()


def test_unreachable_budget_is_reported_with_the_closest_plan(setup):
    study, cfg = _run(setup, 1e-3, n=20)
    front = S_front.pareto_front(study)
    assert len(front) and not front["feasible"].any()  # least-violating plans, flagged
    msg = S_front.closest_to_budgets(study, cfg)
    assert msg.startswith("latency: best") and "vs budget" in msg


def test_local_search_adds_feasible_new_configurations_within_its_budget(setup):
    g, data, target, cm, pricer, dense, space, cfg = setup
    cfg = dataclasses.replace(cfg, latency_budget_s=0.95 * dense, polish_trials=24)
    ev = S_eval.Evaluator(g, data, target, cm, cfg)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=S_trials.make_sampler(cfg, True))
    S_trials.run_trials(study, space, ev, pricer, 40, cfg, show_bars=False)
    before = {S_front.config_key(ev.decisions(Plan.from_dict(t.user_attrs["plan"])).resolved) for t in study.trials}
    best_before = max(t.values[0] for t in study.trials if t.user_attrs["constraints"][0] <= 0)
    start, best, n = S_polish.polish(study, space, ev, pricer, cfg)
    polished = [t for t in study.trials if t.user_attrs.get("phase") == "polish"]
    assert start == best_before and best >= start
    assert 0 < n == len(polished) <= 24
    for t in polished:
        assert t.user_attrs["constraints"][0] <= 0                      # only feasible neighbours
        key = S_front.config_key(ev.decisions(Plan.from_dict(t.user_attrs["plan"])).resolved)
        assert key not in before                                        # nothing evaluated twice
        before.add(key)
    # a resumed worker continues the count: with the budget spent, nothing more runs
    if n == 24:
        assert S_polish.polish(study, space, ev, pricer, cfg) is None


def test_greedy_seed_is_the_netadapt_path_end_within_the_budget(setup):
    g, data, target, cm, pricer, dense, space, cfg = setup
    cfg = dataclasses.replace(cfg, latency_budget_s=0.95 * dense)
    ev = S_eval.Evaluator(g, data, target, cm, cfg)
    said = []
    seeds = S_seeds.greedy_seeds(g, ev, cm, cfg, said.append)
    assert 1 <= len(seeds) <= 3 and said and said[0].startswith("greedy seed:")
    lat = pricer.price_plans(seeds)["latency_s"]
    assert lat[-1] <= cfg.latency_budget_s < lat[0] or len(seeds) == 1   # the path ends at the budget
    assert all(c.pattern == "channel" for p in seeds for c in p.values())
    assert S_seeds.greedy_seeds(g, ev, cm, dataclasses.replace(cfg, greedy_seed=False), said.append) == []
    assert S_seeds.greedy_seeds(g, ev, cm, dataclasses.replace(cfg, latency_budget_s=None), said.append) == []


def test_edge_plans_are_exactly_the_budgets_edge_of_the_channel_lattice(setup):
    """Every edge plan is within the budget, one level less pruning of any layer is over it,
    and every feasible point of the kept-channel lattice prunes at least as much as some edge
    plan (nothing on the edge is missed); the random-direction fallback stays within it too."""
    import itertools

    g, data, target, cm, pricer, dense, space, cfg = setup

    def price(plans):
        return pricer.price_plans(plans)["latency_s"]

    budget = 0.96 * dense            # the width-8 model's default pricing is mostly fixed overheads
    lv = space.channel_levels(channel_multiple=1)
    layers = list(lv)
    assert len(layers) >= 2 and all(v[0] == 0.0 and v == sorted(v) for v in lv.values())

    def plan_of(idx):
        return Plan({la: LayerChoice("channel", lv[la][i]) for la, i in zip(layers, idx) if i > 0})

    def idx_of(p):
        return tuple(lv[la].index(p.get_choice(la).ratio if p.get_choice(la).pattern == "channel" else 0.0)
                     for la in layers)

    edge = space.edge_plans(price, budget, channel_multiple=1, limit=100_000)
    assert len(edge) >= 2 and (price(edge) <= budget).all()
    eidx = [idx_of(p) for p in edge]
    for e in eidx:
        less = [plan_of(e[:j] + (e[j] - 1,) + e[j + 1:]) for j in range(len(e)) if e[j] > 0]
        assert (price(less) > budget).all()
    pts = list(itertools.product(*(range(len(lv[la])) for la in layers)))
    lat = price([plan_of(c) for c in pts])
    feasible = np.array([c for c, t in zip(pts, lat) if t <= budget])
    assert len(feasible) > len(eidx)
    assert (np.array(eidx)[None, :, :] <= feasible[:, None, :]).all(-1).any(-1).all()
    # a sample when the edge is longer than the limit; directions when the lattice is too big
    assert len(space.edge_plans(price, budget, channel_multiple=1, limit=2)) == 2
    rnd = space.edge_plans(price, budget, channel_multiple=1, limit=8, max_lattice=1)
    assert 1 <= len(rnd) <= 8 and (price(rnd) <= budget).all()
    assert space.edge_plans(price, budget, channel_multiple=1, limit=0) == []


def test_edge_seeds_need_a_latency_budget_and_are_distinct_configurations(setup):
    g, data, target, cm, pricer, dense, space, cfg = setup
    ev = S_eval.Evaluator(g, data, target, cm, cfg)
    said = []
    seeds = S_seeds.edge_seeds(space, ev, pricer, dataclasses.replace(cfg, latency_budget_s=0.96 * dense, trials=40),
                          said.append)
    assert 1 <= len(seeds) <= 20 and said and said[0].startswith("edge seeds:")
    keys = [S_front.config_key(ev.decisions(p).resolved) for p in seeds]
    assert len(set(keys)) == len(keys)
    assert S_seeds.edge_seeds(space, ev, pricer, cfg, said.append) == []
    assert S_seeds.edge_seeds(space, ev, pricer, dataclasses.replace(cfg, latency_budget_s=dense, edge_seeds=0),
                         said.append) == []
