"""Attention-head pruning (#13): heads found on the exported graph, their shapes resolved, priced
(per plan and in batch, equal), searched, and folded to the same outputs as the masks — for
multi-head attention (heads) and grouped-query attention (whole KV groups, or query heads within
every KV group), on small blocks written here and on the zoo's ViT, BERT and Llama."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import costmodels
from costmodels.batch import PATTERN_CODES, BatchPricer, arrays_to_plans
from costmodels.ops import head_fraction, kept_fraction
from hwsearch import prune
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import resolve
from hwsearch.graph import analyze
from hwsearch.space import SearchSpace
from targets.spec import get_target

B, L, E, D = 2, 12, 48, 8


class _Attention(nn.Module):
    """q/k/v/o projections around SDPA with ``heads`` query heads and ``kv_heads`` KV heads;
    head counts live in attributes (as in Hugging Face modules) and widths come from the
    projections (``view(..., -1, D)``), so a folded block runs with fewer heads."""

    def __init__(self, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads = heads, kv_heads
        self.num_key_value_groups = heads // kv_heads
        self.q, self.k = nn.Linear(E, heads * D), nn.Linear(E, kv_heads * D)
        self.v, self.o = nn.Linear(E, kv_heads * D), nn.Linear(heads * D, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, D).transpose(1, 2)
        k = self.k(x).view(b, t, -1, D).transpose(1, 2)
        v = self.v(x).view(b, t, -1, D).transpose(1, 2)
        k = k.repeat_interleave(self.num_key_value_groups, dim=1)   # repeat_kv, as Llama does
        v = v.repeat_interleave(self.num_key_value_groups, dim=1)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.o(a.transpose(1, 2).reshape(b, t, -1))


class _Block(nn.Module):
    def __init__(self, heads: int = 4, kv_heads: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(6, E)
        self.attn = _Attention(heads, kv_heads)
        self.ln = nn.LayerNorm(E)
        self.fc1, self.fc2 = nn.Linear(E, 2 * E), nn.Linear(2 * E, E)
        self.head = nn.Linear(E, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.attn(self.ln(h))
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h.mean(1))


def _graph(heads: int, kv_heads: int):
    torch.manual_seed(0)
    return analyze(_Block(heads, kv_heads).eval(), torch.randn(B, L, 6))


def _logits(y):
    return y.logits if hasattr(y, "logits") else y


def _fold_equals_mask(graph, plan: Plan) -> tuple[nn.Module, prune.Decisions]:
    dec = prune.decide(graph, plan)
    masked, folded = prune.apply(graph, dec, mode="mask"), prune.apply(graph, dec, mode="fold")
    x = graph.example_inputs
    with torch.no_grad():
        ym, yf, yd = _logits(masked(*x)), _logits(folded(*x)), _logits(graph.model(*x))
    torch.testing.assert_close(yf, ym, atol=1e-5, rtol=1e-5)
    assert (ym - yd).abs().max() > 1e-4, "the plan changed nothing: the test would not see a wrong fold"
    return folded, dec


def test_heads_found_on_the_graph_with_their_geometry():
    g = _graph(8, 2)
    (h,) = g.heads.values()
    assert (h.q, h.k, h.v, h.o, h.heads, h.kv_heads, h.head_dim, h.group_size) == ("attn.q", "attn.k", "attn.v",
                                                                                   "attn.o", 8, 2, D, 4)
    assert not h.reason
    assert list(g.table.loc[["attn.q", "attn.k", "attn.v", "attn.o"], "head_role"]) == ["q", "k", "v", "o"]
    assert g.ops.loc[h.node, "head_leader"] == "attn.q"


@pytest.mark.parametrize("heads,kv,pattern,ratio,kept", [
    (4, 4, "head", 0.5, (2, 2)),      # MHA: single heads
    (8, 2, "head", 0.5, (4, 1)),      # GQA: one of two KV groups, with its 4 query heads
    (8, 2, "qhead", 0.5, (4, 2)),     # GQA: 2 of 4 query heads in each KV group, both KV heads kept
    (8, 2, "qhead", 0.75, (2, 2)),
])
def test_head_pruning_folds_to_the_masked_outputs(heads, kv, pattern, ratio, kept):
    g = _graph(heads, kv)
    folded, dec = _fold_equals_mask(g, Plan({"attn.q": LayerChoice(pattern, ratio)}))
    assert dec.heads == {"attn.q": kept}
    mods = dict(folded.named_modules())
    n_q, n_kv = kept
    assert tuple(mods["attn.q"].weight.shape) == (n_q * D, E)
    assert tuple(mods["attn.k"].weight.shape) == tuple(mods["attn.v"].weight.shape) == (n_kv * D, E)
    assert tuple(mods["attn.o"].weight.shape) == (E, n_q * D)
    assert (mods["attn"].num_heads, mods["attn"].num_key_value_heads, mods["attn"].num_key_value_groups) == \
        (n_q, n_kv, n_q // n_kv)
    res = resolve(g.table, g.groups, Plan({"attn.q": LayerChoice(pattern, ratio)}))
    assert list(res.loc[["attn.q", "attn.k", "attn.v"], "kept_out"]) == [n_q * D, n_kv * D, n_kv * D]
    assert res.at["attn.o", "kept_in"] == n_q * D and res.at["attn.o", "kept_out"] == E


def test_heads_combine_with_channels_and_weight_patterns():
    g = _graph(8, 2)
    plan = Plan({"attn.q": LayerChoice("head", 0.5), "fc1": LayerChoice("channel", 0.5),
                 "attn.o": LayerChoice("unstructured", 0.5)})
    _fold_equals_mask(g, plan)


def test_head_choices_off_a_query_projection_or_qhead_on_mha_are_refused():
    g = _graph(4, 4)
    with pytest.raises(PlanError, match="query projection.*'attn.k' is not one.*attn.q"):
        resolve(g.table, g.groups, Plan({"attn.k": LayerChoice("head", 0.5)}))
    with pytest.raises(PlanError, match="qhead pruning needs grouped-query attention.*use pattern 'head'"):
        resolve(g.table, g.groups, Plan({"attn.q": LayerChoice("qhead", 0.5)}))
    # the min_density floor keeps at least that share of heads, and says it bound
    res = resolve(g.table, g.groups, Plan({"attn.q": LayerChoice("head", 0.9)}), min_density=0.5)
    assert res.at["attn.q", "kept_out"] == 2 * D and bool(res.at["attn.q", "min_density_binds"])


def test_attention_op_shrinks_with_the_heads_against_hand_counts():
    g = _graph(8, 2)
    att = g.ops[g.ops["kind"] == "attention"].iloc[0]
    assert att["macs"] == B * 8 * L * L * (D + D)
    for pattern, kept_heads in (("head", 4), ("qhead", 4)):
        res = resolve(g.table, g.groups, Plan({"attn.q": LayerChoice(pattern, 0.5)}))
        frac = kept_fraction(g.ops, {}, head_fraction(res))
        i = list(g.ops.index).index(att.name)
        assert frac[i] == pytest.approx(kept_heads / 8)
        assert att["macs"] * frac[i] == B * kept_heads * L * L * (D + D)   # QKᵀ and the weighted sum of V
    # the roofline prices the pruned attention below the dense one
    cm = costmodels.default_for(get_target("host-x86"))
    dense = cm.predict(g, Plan()).ops.loc[att.name, "latency_s"]
    pruned = cm.predict(g, Plan({"attn.q": LayerChoice("head", 0.5)})).ops.loc[att.name, "latency_s"]
    assert pruned < dense


def test_batch_pricer_prices_head_plans_as_predict_does():
    g = _graph(8, 2)
    host = get_target("host-x86")
    cm = costmodels.default_for(host)
    bp = BatchPricer(g, host, cm, min_density=0.1)
    codes, ratios = bp.random_arrays(300, seed=1, codes_allowed=("dense", "channel", "head", "qhead", "unstructured"),
                                     max_ratio=0.95)
    assert (codes == PATTERN_CODES["head"]).any() and (codes == PATTERN_CODES["qhead"]).any()
    bad = codes.copy()
    bad[:, bp.layers.index("attn.k")] = PATTERN_CODES["head"]     # heads named on a key projection: invalid
    assert not bp.price(bad[:5], ratios[:5])["valid"].any()
    got = bp.price(codes, ratios, details=True)
    plans = arrays_to_plans(codes, ratios, bp.layers)
    for i, plan in enumerate(plans):
        want = cm.predict(g, plan, min_density=0.1)
        assert got["valid"][i]
        assert got["latency_s"][i] == pytest.approx(want.latency_s, rel=1e-9)
        assert got["flash_bytes"][i] == want.flash_bytes and got["sram_bytes"][i] == want.sram_bytes
        res = resolve(g.table, g.groups, plan, min_density=0.1)
        np.testing.assert_array_equal(got["kept_out"][i], res["kept_out"].to_numpy())
        np.testing.assert_array_equal(got["kept_in"][i], res["kept_in"].to_numpy())


def test_search_space_offers_heads_on_query_projections_only():
    host = get_target("host-x86")
    mha, gqa = _graph(4, 4), _graph(8, 2)
    pats = ("dense", "channel", "head", "qhead")
    s_mha = SearchSpace.build(mha, host, patterns_wanted=pats)
    s_gqa = SearchSpace.build(gqa, host, patterns_wanted=pats)
    assert [q for q, o in s_mha.allowed.items() if "head" in o] == ["attn.q"]
    assert "qhead" not in s_mha.allowed["attn.q"] and "qhead" in s_gqa.allowed["attn.q"]
    assert not any("head" in o for layer, o in s_gqa.allowed.items() if layer != "attn.q")
    # the uniform seeds prune heads along with channels
    assert any(p.get_choice("attn.q").pattern == "head" for p in s_gqa.seed_plans())
    assert Plan({"attn.q": LayerChoice("head", 0.5)}).compact() == "attn.q hd50"


@pytest.mark.parametrize("factory,pattern", [("hwsearch.zoo_vit:vit_digits", "head"),
                                             ("hwsearch.zoo_text:bert_tokens", "head"),
                                             ("hwsearch.zoo_text:llama_tokens", "head"),
                                             ("hwsearch.zoo_text:llama_tokens", "qhead")])
def test_zoo_transformers_fold_pruned_heads_to_the_masked_outputs(factory, pattern):
    pytest.importorskip("transformers", reason="the text zoo needs transformers: pip install -e '.[transformers]'")
    import importlib

    mod, fn = factory.split(":")
    model, x = getattr(importlib.import_module(mod), fn)(trained=False)
    g = analyze(model, x)
    assert g.heads and not any(h.reason for h in g.heads.values())
    plan = Plan({q: LayerChoice(pattern, 0.5) for q in g.heads})
    folded, dec = _fold_equals_mask(g, plan)
    for q, h in g.heads.items():
        n_q, n_kv = dec.heads[q]
        assert n_q == h.heads // 2 and n_kv == (h.kv_heads // 2 if pattern == "head" else h.kv_heads)
        assert dict(folded.named_modules())[h.o].in_features == n_q * h.v_head_dim


def test_search_plans_state_the_whole_heads_they_remove():
    g = _graph(8, 2)
    space = SearchSpace.build(g, get_target("host-x86"), patterns_wanted=("dense", "head", "qhead"), min_density=0.0)
    # 2 KV groups: 0.2 removes none (dense), 0.6 removes one (0.5); 4 query heads per group: 0.3 removes one (0.25)
    assert space.whole_heads(Plan({"attn.q": LayerChoice("head", 0.2)})) == Plan()
    assert space.whole_heads(Plan({"attn.q": LayerChoice("head", 0.6)})) == Plan({"attn.q": LayerChoice("head", 0.5)})
    assert space.whole_heads(Plan({"attn.q": LayerChoice("qhead", 0.3)})) == Plan({"attn.q": LayerChoice("qhead", 0.25)})
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        c = space.suggest(study.ask()).get_choice("attn.q")
        if c.pattern == "head":
            assert c.ratio == 0.5
        elif c.pattern == "qhead":
            assert c.ratio in (0.25, 0.5, 0.75)
