"""Glue: the elementwise nodes between layers and ops (``ModelGraph.glue``) — found in the graph,
timed by the kernel sweep, priced by the kernel cost model only (the others absorb glue in their
overhead terms), the same plan by plan and in a batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import costmodels
from costmodels.base import Sample
from costmodels.batch import BatchPricer
from costmodels.kernel_cost import KernelModel
from costmodels.kernel_predictor import KernelPredictor, device_fingerprint
from costmodels.ops import GLUE_KIND, OP_KINDS, op_table
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import resolve
from hwsearch.graph import analyze
from hwsearch.kernel_sweep import sample_specs
from hwsearch.kernel_sweep_ops import OpSpec, build_op_onnx
from targets.spec import get_target


class _Glued(nn.Module):
    """One of each: a layer with a ReLU epilogue (fused: not glue), an output used twice then
    combined (``pow`` and ``add``: glue), a reshape (layout: not glue), a buffer computed from
    constants alone (folded by export: not glue), and pooling (glue)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(16, 32)
        self.l2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.l1(x))
        g = self.l2(h)
        g = g + g.pow(2)  # g has two users: no epilogue takes them
        g = g.reshape(1, 4, 8, 32)
        const = torch.ones(32) * 3.0  # constants only
        g = g.mean(dim=2) * const
        return self.head(g.reshape(1, 4, 32).mean(dim=1))


def _predictor(glue: bool) -> KernelPredictor:
    """A predictor on SYNTHETIC kernels (1 µs + MACs at 1 GMAC/s) with a planted glue law."""
    specs = sample_specs(60, seed=0)
    coef = {k: [1e-6, 0.0, 1e-10, 0.0] for k in OP_KINDS}
    if glue:
        coef[GLUE_KIND] = [2e-6, 0.0, 1e-9, 0.0]
    return KernelPredictor(np.stack([s.features() for s in specs]), [1e-6 + s.macs() / 1e9 for s in specs],
                           overhead_s=4e-6, fingerprint=device_fingerprint("onnxruntime"), op_coef=coef)


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return analyze(_Glued().eval(), torch.randn(1, 4, 8, 16))


def test_the_graph_lists_glue_outside_epilogues_layouts_and_constants(graph):
    aten = [a.split(".")[1] for a in graph.glue["aten"]]
    assert sorted(aten) == ["add", "mean", "mean", "mul", "pow"]
    assert (graph.glue["kind"] == GLUE_KIND).all() and (graph.glue["bytes_out"] > 0).all()
    assert not {"relu", "reshape", "view", "ones"} & set(aten)
    assert set(graph.glue.index).isdisjoint(graph.ops.index)


def test_only_a_model_that_prices_glue_gets_its_rows(graph):
    assert len(op_table(graph)) == len(graph.ops)
    assert len(op_table(graph, glue=True)) == len(graph.ops) + len(graph.glue)
    target = get_target("host-x86+onnxruntime")
    roof = costmodels.default_for(target)
    assert not roof.prices_glue
    assert not any("glue" in g for g in roof.predict(graph, Plan(), allow_gaps=True).coverage_gaps)
    assert not KernelModel(target, predictor=_predictor(glue=False)).prices_glue  # swept before glue was


def test_the_kernel_model_adds_each_glue_row_by_the_swept_law(graph):
    target = get_target("host-x86+onnxruntime")
    with_glue = KernelModel(target, predictor=_predictor(glue=True))
    without = KernelModel(target, predictor=_predictor(glue=False))
    assert with_glue.prices_glue
    a, b = with_glue.predict(graph, Plan()), without.predict(graph, Plan())
    law = 2e-6 + 1e-9 * (graph.glue["bytes_in"] + graph.glue["bytes_out"]).to_numpy(float)
    assert a.latency_s - b.latency_s == pytest.approx(law.sum(), rel=1e-9)
    assert not a.coverage_gaps


def test_glue_shrinks_with_its_group_and_the_batch_pricer_agrees(graph):
    target = get_target("host-x86+onnxruntime")
    model = KernelModel(target, predictor=_predictor(glue=True))
    plans = [Plan(), Plan({"l2": LayerChoice("channel", 0.5)}), Plan({"l1": LayerChoice("channel", 0.25)})]
    pricer = BatchPricer(graph, target, model)
    batch = pricer.price_plans(plans)["latency_s"]
    one = [model.predict(graph, p).latency_s for p in plans]
    assert np.allclose(batch, one, rtol=1e-9)
    dense, half = (model.predict(graph, p).ops for p in plans[:2])
    glue = dense.index[dense["kind"] == GLUE_KIND]
    assert (half.loc[glue, "latency_s"] <= dense.loc[glue, "latency_s"] + 1e-15).all()
    assert (half.loc[glue, "latency_s"] < dense.loc[glue, "latency_s"]).any()  # glue on l2's channels shrank


def test_a_refit_with_glue_in_the_samples_keeps_predict_and_refit_consistent(graph):
    target = get_target("host-x86+onnxruntime")
    model = KernelModel(target, predictor=_predictor(glue=True))
    dense = resolve(graph.table, graph.groups, Plan())
    ops = op_table(graph, glue=True)
    pred = model.total_latency(dense, ops)
    assert pred == pytest.approx(model.predict(graph, Plan()).latency_s, rel=1e-12)
    model.refit([Sample(dense, 2.0 * pred, None, ops=ops)])
    assert model.predict(graph, Plan()).latency_s == pytest.approx(2.0 * pred, rel=1e-9)


def test_the_sweeps_glue_graph_is_a_chain_onnxruntime_runs():
    import onnxruntime as ort

    spec = OpSpec(GLUE_KIND, 1, 8, 16)
    sess = ort.InferenceSession(build_op_onnx(spec, 4), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 8, 16)).astype(np.float32)
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert np.allclose(out, 5 * x, atol=1e-5)  # x + x + x + x + x: four chained adds, one output
    assert spec.row() == {"macs": 0, "flops_other": 128, "bytes": 3 * 128 * 4}


@pytest.mark.parametrize("kind", ["attention", "matmul", "embedding", "norm", "softmax"])
def test_each_copy_of_a_swept_op_reads_inputs_of_its_own(kind):
    """Copies on the same tensors would be merged by ONNX Runtime's common-subexpression
    elimination (one node timed, divided by the copies): each copy gets its own inputs."""
    import onnxruntime as ort

    spec = OpSpec(kind, 2, 8, 16, vocab=50 if kind == "embedding" else 0)
    sess = ort.InferenceSession(build_op_onnx(spec, 3), providers=["CPUExecutionProvider"])
    assert len(sess.get_inputs()) == 3 * len(spec.inputs())
    rng = np.random.default_rng(0)
    feed = {i.name: (rng.integers(0, 50, s["shape"]) if s.get("int_high") else rng.standard_normal(s["shape"]))
            .astype(np.int64 if s.get("int_high") else np.float32)
            for i, s in zip(sess.get_inputs(), spec.inputs() * 3)}
    outs = sess.run(None, feed)
    assert len(outs) == 3 and not np.allclose(outs[0], outs[1])  # three distinct results
