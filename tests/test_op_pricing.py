"""Compute ops without a layer row (``ModelGraph.ops``: attention, matmul, embedding, norm,
softmax) are priced, or reported as coverage gaps, never as zero: hand counts against predicted
seconds on a CPU and a GPU, decode vs prefill attention, proportional shrinking with a pruned
channel group, the vectorised path against ``predict``, and the refit of an op kind's scale from
measured totals (SYNTHETIC totals with a planted factor: the refit's arithmetic, not accuracy).
Every registered model's op coverage is checked in ``tests/contracts/test_cost_models.py``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import costmodels
from costmodels import CoverageError, Sample
from costmodels.analytical import RooflineModel
from costmodels.batch import BatchPricer
from costmodels.memory import DTYPE_BYTES
from costmodels.ops import GLUE_KIND, OP_KINDS
from hwsearch import graph_ops
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import resolve
from hwsearch.graph import ModelGraph, analyze
from targets.spec import get_target

B, L, V, E, H, FF = 2, 16, 64, 32, 4, 64
D = E // H


class _Encoder(nn.Module):
    """Embedding → q/k/v (4 heads) → SDPA → o added to the residual → LayerNorm → MLP with a
    LayerNorm after its activation (NormFormer) added to the residual → LayerNorm → attention
    pooling (a softmax over tokens, a matmul) → classifier: every op kind, and two prunable
    groups feeding ops (q/k/v → the attention, fc1 → the MLP's LayerNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.q, self.k, self.v, self.o = (nn.Linear(E, E) for _ in range(4))
        self.ln1 = nn.LayerNorm(E)
        self.fc1, self.ln_ffn, self.fc2 = nn.Linear(E, FF), nn.LayerNorm(FF), nn.Linear(FF, E)
        self.ln2 = nn.LayerNorm(E)
        self.score = nn.Linear(E, 1)
        self.head = nn.Linear(E, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        q = self.q(h).view(B, L, H, D).transpose(1, 2)
        k = self.k(h).view(B, L, H, D).transpose(1, 2)
        v = self.v(h).view(B, L, H, D).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        h = self.ln1(h + self.o(a.transpose(1, 2).reshape(B, L, E)))
        h = self.ln2(h + self.fc2(self.ln_ffn(F.gelu(self.fc1(h)))))
        w = torch.softmax(self.score(h), dim=1)
        return self.head((w.transpose(1, 2) @ h).squeeze(1))


class _CachedAttention(nn.Module):
    """One attention step of ``seq_q`` query tokens against a ``seq_k``-token KV cache given as
    inputs: ``seq_q = 1`` is a decode step, ``seq_q = seq_k`` a prefill."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.h, self.d = heads, head_dim
        self.q = nn.Linear(heads * head_dim, heads * head_dim)
        self.o = nn.Linear(heads * head_dim, 8)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.h, self.d).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.o(a.transpose(1, 2).reshape(b, n, self.h * self.d))


@pytest.fixture(scope="module")
def graph() -> ModelGraph:
    torch.manual_seed(0)
    return analyze(_Encoder().eval(), torch.randint(0, V, (B, L)))


def _op(graph: ModelGraph, kind: str, group_of: str | None = None) -> str:
    """The node of the (first) op of ``kind``, fed by ``group_of``'s channel group if given."""
    ops = graph.ops[graph.ops["kind"] == kind]
    if group_of is not None:
        ops = ops[ops["group"] == graph.table.at[group_of, "out_group"]]
    return str(ops.index[0])


def test_the_op_kinds_are_those_the_graph_counts():
    assert OP_KINDS == graph_ops.OP_KINDS and GLUE_KIND == graph_ops.GLUE_KIND


def test_the_encoder_has_every_op_kind_and_none_uncovered(graph):
    assert set(graph.ops["kind"]) == set(OP_KINDS) and not graph.uncovered


def _roofline_s(target, dtype: str, flops: float, nbytes: float) -> float:
    """The roofline from the spec's figures: peak FLOP/s = 2 × clock × cores × MACs/cycle; the
    cache's bandwidth when the bytes fit ``sram_bytes`` and the spec gives one, else DRAM's."""
    peak_flops = 2 * target.figure("compute", "clock_hz") * target.figure("compute", "cores") * \
        target.figure("compute", f"macs_per_cycle_{dtype}")
    fits = target.has("memory", "cache_bandwidth_Bps") and nbytes <= target.figure("memory", "sram_bytes")
    bw = target.figure("memory", "cache_bandwidth_Bps" if fits else "dram_bandwidth_Bps")
    return max(flops / peak_flops, nbytes / bw)


@pytest.mark.parametrize("name", ["host-x86", "nvidia-h100"])
def test_attention_seconds_from_hand_counts_and_the_spec(graph, name):
    target = get_target(name)
    model = costmodels.default_for(target)  # roofline (fp32) on the host, gpu24 (fp16) on the H100
    cost = model.predict(graph, Plan())
    node = _op(graph, "attention")
    macs = B * H * L * L * (D + D)                                 # QKᵀ and the weighted sum of V
    nbytes = 4 * (3 * B * H * L * D + B * H * L * D) * DTYPE_BYTES[model.dtype] / 4  # Q, K, V, out
    want = _roofline_s(target, model.dtype, 2 * macs, nbytes)
    assert cost.ops.at[node, "latency_s"] == pytest.approx(want, rel=1e-12)
    assert cost.ops.at[node, "kind"] == "attention" and not cost.coverage_gaps
    layers_s = float(np.nansum(cost.layers["latency_s"]))
    assert cost.latency_s == pytest.approx(layers_s + model.model_overhead_s() + model.glue_s(
        resolve(graph.table, graph.groups, Plan())) + cost.ops["latency_s"].sum(), rel=1e-12)


def test_decode_attention_is_memory_bound_and_a_long_prefill_compute_bound_on_h100():
    heads, head_dim, cache = 2, 64, 2048
    model = costmodels.default_for(get_target("nvidia-h100"))
    bounds, seconds = {}, {}
    for what, seq_q in (("decode", 1), ("prefill", cache)):
        kv = torch.zeros(1, heads, cache, head_dim)
        g = analyze(_CachedAttention(heads, head_dim).eval(), (torch.zeros(1, seq_q, heads * head_dim), kv, kv))
        row = g.ops[g.ops["kind"] == "attention"].iloc[0]
        assert (row["seq_q"], row["seq_k"]) == (seq_q, cache)
        feats = model.roofline.op_features(g.ops)
        bounds[what] = feats["bound"].iloc[0]
        seconds[what] = float(model.predict(g, Plan()).ops["latency_s"].iloc[0])
        assert seconds[what] == pytest.approx(feats["roofline_s"].iloc[0], rel=1e-12)
    assert bounds == {"decode": "memory", "prefill": "compute"}
    assert seconds["prefill"] > seconds["decode"]


def test_pruning_a_group_feeding_an_op_shrinks_its_price_in_proportion(graph):
    model = costmodels.default_for(get_target("host-x86"))
    dense = model.predict(graph, Plan()).ops["latency_s"]
    layer, kind = "fc1", "norm"  # the MLP's inner width feeds its LayerNorm (NormFormer)
    cost = model.predict(graph, Plan({layer: LayerChoice("channel", 0.5)}))
    res = resolve(graph.table, graph.groups, Plan({layer: LayerChoice("channel", 0.5)}))
    frac = float(res.at[layer, "out_frac"])
    node = _op(graph, kind, group_of=layer)
    assert frac == 0.5
    assert cost.ops.at[node, "latency_s"] == pytest.approx(frac * dense[node], rel=1e-12)
    others = [n for n in dense.index if n != node]
    assert (cost.ops.loc[others, "latency_s"] == dense[others]).all()  # ops of other groups keep their size
    # q/k/v feed attention heads: analysis refuses single-channel pruning there (whole heads would
    # have to go); the price of an attention op with half its input kept — what head pruning
    # will give — is still half the dense one
    with pytest.raises(PlanError, match="'q' cannot take channel pruning"):
        resolve(graph.table, graph.groups, Plan({"q": LayerChoice("channel", 0.5)}))
    att = _op(graph, "attention", group_of="q")
    kept = np.where(graph.ops.index == att, 0.5, 1.0)
    half = model.op_latency(graph.ops, kept, 4.0)
    full = model.op_latency(graph.ops, np.ones(len(graph.ops)), 4.0)
    i = list(graph.ops.index).index(att)
    assert half[i] == pytest.approx(0.5 * full[i], rel=1e-12) and full[i] == pytest.approx(dense[att], rel=1e-12)


@pytest.mark.parametrize("name,dtype", [("host-x86", "fp32"), ("nvidia-h100", "fp16")])
def test_price_batch_equals_predict_on_a_transformer_graph(graph, name, dtype):
    target = get_target(name)
    model = RooflineModel(target, dtype=dtype)
    bp = BatchPricer(graph, target, model, dtype=dtype)
    assert bp.vectorised and "fc1" in set(bp.channel_layers) and "q" not in set(bp.channel_layers)
    codes, ratios = bp.random_arrays(200, seed=1, codes_allowed=("dense", "unstructured", "channel"))
    got = bp.price(codes, ratios)
    plans = bp.arrays_to_plans(codes, ratios)
    pruned = 0
    for i, plan in enumerate(plans):
        res = resolve(graph.table, graph.groups, plan)
        want = model.predict(graph, plan, resolved=res, dtype=dtype)
        assert got["valid"][i]
        assert abs(got["latency_s"][i] - want.latency_s) / want.latency_s < 1e-9
        pruned += bool((res.loc[["fc1"], "out_frac"] < 1).any())
    assert pruned > 50  # many plans shrink an op


class _NoOpsRoofline(RooflineModel):
    """A real roofline that declares no op kind priced: its ops must be gaps, in both paths."""

    priced_op_kinds = frozenset()


def test_ops_of_kinds_a_model_does_not_price_are_gaps_in_predict_and_in_the_batch_pricer(graph):
    target = get_target("host-x86")
    model = _NoOpsRoofline(target)
    with pytest.raises(CoverageError, match=r"<scaled_dot_product_attention \(attention\)>") as err:
        model.predict(graph, Plan())
    assert "\n" not in str(err.value)
    cost = model.predict(graph, Plan(), allow_gaps=True)
    assert set(cost.coverage_gaps) == {f"<{n} ({k})>" for n, k in zip(graph.ops.index, graph.ops["kind"])}
    assert cost.ops["latency_s"].isna().all()  # NaN, never 0
    codes, ratios = BatchPricer(graph, target, RooflineModel(target)).random_arrays(4)
    with pytest.raises(CoverageError, match="<embedding"):
        BatchPricer(graph, target, model).price(codes, ratios)
    out = BatchPricer(graph, target, model, allow_gaps=True).price(codes, ratios)
    priced = BatchPricer(graph, target, RooflineModel(target)).price(codes, ratios)
    assert (out["latency_s"] < priced["latency_s"]).all()  # the gaps are left out, and said so above


def _samples(model: RooflineModel, graph: ModelGraph, norm_factor: float, overhead_s: float,
             with_ops: bool = True) -> list[Sample]:
    """SYNTHETIC measurements: each layer as the model predicts it, totals = layers + ops with
    the norms ``norm_factor`` × slower + ``overhead_s``; plans prune fc1's group (which feeds a
    LayerNorm) to different widths."""
    out = []
    for r in (0.0, 0.25, 0.5, 0.75):
        res = resolve(graph.table, graph.groups, Plan({"fc1": LayerChoice("channel", r)} if r else {}))
        lat, _ = model.layer_latency(res)
        ops_s = model.plan_op_latency(graph.ops, res)
        ops_s = np.where(graph.ops["kind"] == "norm", norm_factor, 1.0) * ops_s
        total = float(np.sum(lat)) + float(np.sum(ops_s)) + overhead_s
        out.append(Sample(res, total, dict(zip(res.index, map(float, lat))), ops=graph.ops if with_ops else None))
    return out


def test_refit_fits_an_op_kind_scale_from_totals(graph):
    model = RooflineModel(get_target("host-x86"))
    samples = _samples(RooflineModel(get_target("host-x86")), graph, norm_factor=3.0, overhead_s=1e-5)
    report = model.refit(samples)
    assert model.op_scale["norm"] == pytest.approx(3.0, rel=1e-6)
    assert all(model.op_scale[k] == 1.0 for k in OP_KINDS if k != "norm")  # constant across plans: kept
    assert model.overhead_model == pytest.approx(1e-5, rel=1e-6)
    for s in samples:
        got = model.predict(graph, None, resolved=s.resolved).latency_s
        assert got == pytest.approx(s.latency_s, rel=1e-6)
    assert report.mape_after < report.mape_before
    back = RooflineModel(get_target("host-x86"))
    back.set_params(model.params())
    assert back.op_scale == model.op_scale


def test_refit_without_ops_in_the_samples_keeps_the_op_scales(graph):
    model = RooflineModel(get_target("host-x86"))
    model.refit(_samples(RooflineModel(get_target("host-x86")), graph, 3.0, 1e-5, with_ops=False))
    assert model.op_scale == {k: 1.0 for k in OP_KINDS}


def test_a_model_file_without_op_scales_reads_as_the_analytical_prior():
    model = RooflineModel(get_target("host-x86"))
    params = model.params()
    del params["op_scale"]
    model.set_params(params)
    assert model.op_scale == {k: 1.0 for k in OP_KINDS}
