"""BatchPricer gives exactly what the per-plan CostModel.predict loop gives, on random plans.

Covers channel groups (residual add), coupled consumers, coupled depthwise convs, a grouped
conv, a torch.cat of two branches, a linear after a flatten, unstructured / N:M / block storage
(CSR vs bitmask), int8 storage, accelerated weight patterns, a refit model, peak SRAM, and the
validity flags of plans ``resolve`` refuses. Throughput is measured in
``studies/search_speed``, not asserted here.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import costmodels
from costmodels.analytical import RooflineModel
from costmodels.batch import PATTERN_CODES, BatchPricer, arrays_to_plans, plans_to_arrays
from hwsearch.core.errors import PlanError
from hwsearch.graph import analyze
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import resolve
from targets.spec import get_target

ALL = ("dense", "unstructured", "channel", "nm", "block")


class MixNet(nn.Module):
    """Residual group (c1, c2) → coupled depthwise → grouped conv (4 groups) → cat of two
    branches → pointwise → max-pool → flatten → linear → linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, 16, 3, padding=1)
        self.b1 = nn.BatchNorm1d(16)
        self.c2 = nn.Conv1d(16, 16, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm1d(16)
        self.dw = nn.Conv1d(16, 16, 3, padding=1, groups=16)
        self.gc = nn.Conv1d(16, 32, 3, padding=1, groups=4)
        self.p1 = nn.Conv1d(32, 24, 1)
        self.p2 = nn.Conv1d(32, 16, 1, bias=False)
        self.pw = nn.Conv1d(40, 24, 1)
        self.fc1 = nn.Linear(24 * 8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(x + self.b2(self.c2(x)))
        x = F.relu(self.dw(x))
        x = F.relu(self.gc(x))
        x = torch.cat([F.relu(self.p1(x)), F.relu(self.p2(x))], 1)
        x = F.max_pool1d(F.relu(self.pw(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def host():
    return get_target("host-x86")


@pytest.fixture(scope="module")
def mix():
    torch.manual_seed(0)
    return analyze(MixNet().eval(), torch.randn(1, 1, 16))


def _random_arrays(bp: BatchPricer, n: int, seed: int, pats: tuple[str, ...] = ALL) -> tuple[np.ndarray, np.ndarray]:
    """Random codes and ratios; half the ratios on the search grid (0.05 steps) so rounding ties
    (banker's rounding of kept channels) are hit, a few out of range."""
    rng = np.random.default_rng(seed)
    codes, ratios = bp.random_arrays(n, seed=seed, codes_allowed=pats, max_ratio=0.97)
    grid = rng.integers(0, 20, size=ratios.shape) * 0.05
    ratios = np.where(rng.random(ratios.shape) < 0.5, grid, ratios)
    # a few channel choices on layers that cannot take them, and ratios out of range
    bad = rng.random(codes.shape) < 0.01
    codes = np.where(bad, PATTERN_CODES["channel"], codes)
    ratios = np.where(rng.random(ratios.shape) < 0.005, 1.0, ratios)
    return codes, ratios


def _loop(graph, cm, plans, **kw):
    rows = []
    for p in plans:
        try:
            c = cm.predict(graph, p, **kw)
        except PlanError:
            rows.append((False, np.nan, -1, -1))
            continue
        rows.append((True, c.latency_s, c.flash_bytes, c.sram_bytes))
    return pd.DataFrame(rows, columns=["valid", "latency_s", "flash_bytes", "sram_bytes"])


def _assert_same(bp: BatchPricer, graph, cm, codes, ratios, *, dtype="fp32"):
    got = bp.price(codes, ratios)
    ratios_ok = np.where((ratios >= 0) & (ratios < 1), ratios, 0.5)  # LayerChoice refuses the rest
    plans = arrays_to_plans(codes, ratios_ok, bp.layers, nm=bp.nm, block=bp.block)
    want = _loop(graph, cm, plans, dtype=dtype, channel_multiple=bp.channel_multiple, min_density=bp.min_density)
    uses_ratio = [PATTERN_CODES[p] for p in ("unstructured", "channel", "block", "head", "qhead")]
    in_range = ~(((ratios < 0) | (ratios >= 1)) & np.isin(codes, uses_ratio)).any(axis=1)
    want.loc[~in_range, "valid"] = False
    np.testing.assert_array_equal(got["valid"], want["valid"].to_numpy())
    v = want["valid"].to_numpy()
    assert v.sum() >= 20, "too few valid random plans to compare"
    np.testing.assert_allclose(got["latency_s"][v], want["latency_s"].to_numpy()[v], rtol=1e-9, atol=0)
    np.testing.assert_array_equal(got["flash_bytes"][v], want["flash_bytes"].to_numpy()[v])
    np.testing.assert_array_equal(got["sram_bytes"][v], want["sram_bytes"].to_numpy()[v])
    assert np.isnan(got["latency_s"][~v]).all() and (got["flash_bytes"][~v] == -1).all()
    return got, v


@pytest.mark.parametrize("multiple,min_density,dtype", [(8, 0.0, "fp32"), (4, 0.1, "int8"), (8, 0.3, "fp16")])
def test_batch_equals_loop_mixnet(mix, host, multiple, min_density, dtype):
    cm = costmodels.default_for(host)
    bp = BatchPricer(mix, host, cm, channel_multiple=multiple, min_density=min_density, dtype=dtype)
    assert bp.vectorised
    for seed, pats in ((0, ALL), (1, ("dense", "unstructured", "channel"))):
        codes, ratios = _random_arrays(bp, 300, seed, pats)
        _assert_same(bp, mix, cm, codes, ratios, dtype=dtype)


def test_batch_equals_loop_resdw(resdw, host):
    g = analyze(*resdw)
    cm = costmodels.default_for(host)
    bp = BatchPricer(g, host, cm, min_density=0.05)
    _assert_same(bp, g, cm, *_random_arrays(bp, 300, 3))


def test_accelerated_patterns_and_refit_parameters(mix, host):
    """A target whose kernels speed up every weight pattern, and a cost model with changed
    parameters after the pricer was built (the pricer reads them at each call)."""
    fast = dataclasses.replace(host, patterns={p: {"kernel": True, "speedup": True} for p in ALL})
    cm = RooflineModel(fast)
    bp = BatchPricer(mix, fast, cm, min_density=0.05)
    codes, ratios = _random_arrays(bp, 300, 4)
    before = bp.price(codes, ratios)["latency_s"]
    cm.scale = {k: v * (1.5 + i) for i, (k, v) in enumerate(cm.scale.items())}
    cm.overhead_model = 3e-5
    got, v = _assert_same(bp, mix, cm, codes, ratios)
    assert not np.allclose(before[v], got["latency_s"][v])
    # unstructured zeros now cut MACs: sparser is cheaper
    u = np.zeros((2, len(bp.layers)), dtype=np.int64)
    u[:, bp.layers.index("fc1")] = PATTERN_CODES["unstructured"]
    r = np.zeros(u.shape)
    r[1, bp.layers.index("fc1")] = 0.9
    lat = bp.price(u, r)["latency_s"]
    assert lat[1] < lat[0]


def test_kernel_corrections_and_glue_match_the_loop(mix, host):
    """A refit model with per-kernel corrections (dense and accelerated kernels) and a glue term
    prices the same in a batch as plan by plan, and the corrections do change prices."""
    from costmodels.base import Sample
    from hwsearch.core.resolve import resolve

    fast = dataclasses.replace(host, patterns={p: {"kernel": True, "speedup": True} for p in ALL})
    cm = RooflineModel(fast)
    bp = BatchPricer(mix, fast, cm, channel_multiple=4, min_density=0.05)
    codes, ratios = _random_arrays(bp, 300, 5)
    before = bp.price(codes, ratios)["latency_s"]
    plans = arrays_to_plans(codes[:40], np.clip(ratios[:40], 0, 0.95), bp.layers, nm=bp.nm, block=bp.block)
    rng = np.random.default_rng(0)
    samples = []
    for p in plans:
        try:
            res = resolve(mix.table, mix.groups, p, channel_multiple=4, min_density=0.05)
        except PlanError:
            continue
        lat, _ = cm.layer_latency(res)
        layer_s = {n: float(t * rng.uniform(0.5, 2.0)) for n, t in zip(res.index, lat)}  # kernel-specific
        samples.append(Sample(res, sum(layer_s.values()) + 1e-5 + 1e-9 * float(res["act_out_bytes_kept"].sum()),
                              layer_s))
    cm.refit(samples)
    assert len(cm.corrections) > 10 and cm.glue_per_byte > 0
    got, v = _assert_same(bp, mix, cm, codes, ratios)
    assert not np.allclose(before[v], got["latency_s"][v])


def test_details_match_resolve(mix, host):
    cm = costmodels.default_for(host)
    bp = BatchPricer(mix, host, cm, channel_multiple=8, min_density=0.05)
    codes, ratios = _random_arrays(bp, 60, 5, ("dense", "unstructured", "channel"))
    got = bp.price(codes, ratios, details=True)
    for i, plan in enumerate(bp.arrays_to_plans(codes, np.clip(ratios, 0, 0.99))):
        if not got["valid"][i]:
            continue
        res = resolve(mix.table, mix.groups, plan, channel_multiple=8, min_density=0.05)
        for key in ("kept_out", "kept_in", "dense_macs", "nnz"):
            np.testing.assert_array_equal(got[key][i], res[key].to_numpy(), err_msg=key)
        assert got["macs"][i] == int(res["dense_macs"].sum())
        np.testing.assert_allclose(got["layer_latency_s"][i], cm.layer_latency(res)[0], rtol=1e-12)


def test_plans_arrays_round_trip_and_errors(mix):
    layers = list(mix.table.index)
    plans = [Plan(), Plan({"c1": LayerChoice("channel", 0.5), "fc1": LayerChoice("unstructured", 0.7),
                           "pw": LayerChoice("nm"), "p1": LayerChoice("block", 0.25)})]
    codes, ratios = plans_to_arrays(plans, layers)
    assert codes.shape == (2, len(layers)) and codes[0].sum() == 0
    assert arrays_to_plans(codes, ratios, layers) == plans
    with pytest.raises(PlanError, match="not one of the priced layers"):
        plans_to_arrays([Plan({"nope": LayerChoice("unstructured", 0.5)})], layers)
    with pytest.raises(PlanError, match="nm=\\(n, m\\)"):
        plans_to_arrays([Plan({"c1": LayerChoice("nm", n=1, m=4)})], layers)


def test_bad_inputs(mix, host):
    cm = costmodels.default_for(host)
    bp = BatchPricer(mix, host, cm)
    with pytest.raises(costmodels.CostModelError, match="P x 9"):
        bp.price(np.zeros((3, 4)), np.zeros((3, 4)))
    other = dataclasses.replace(host, name="other")
    with pytest.raises(costmodels.CostModelError, match="cost model's own target"):
        BatchPricer(mix, other, cm)
    del cm.scale["depthwise"]
    with pytest.raises(costmodels.CoverageError, match="dw"):
        bp.price(np.zeros((1, 9), dtype=int), np.zeros((1, 9)))
    bp_gaps = BatchPricer(mix, host, cm, allow_gaps=True)
    lat = bp_gaps.price(np.zeros((1, 9), dtype=int), np.zeros((1, 9)))["latency_s"][0]
    assert lat == pytest.approx(cm.predict(mix, Plan(), allow_gaps=True).latency_s, rel=1e-12)


def test_other_cost_models_fall_back_to_the_loop(mix, host, caplog):
    class Doubled(RooflineModel):
        def layer_latency(self, resolved):
            lat, gaps = super().layer_latency(resolved)
            return 2 * lat, gaps

    cm = Doubled(host)
    with caplog.at_level(logging.WARNING, logger="costmodels.batch"):
        bp = BatchPricer(mix, host, cm, min_density=0.05)
    assert not bp.vectorised and "not vectorised" in caplog.text
    _assert_same(bp, mix, cm, *_random_arrays(bp, 60, 6, ("dense", "unstructured", "channel")))
