"""Cost models: exact storage, the host's 'no speed-up from zeros', coverage gaps, refit, files."""
from __future__ import annotations

import json

import numpy as np
import pytest

import costmodels
from costmodels.base import Sample
from costmodels.memory import flash_bytes, layer_storage
from hwsearch.core.errors import SpecError
from hwsearch.graph import analyze
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import resolve
from targets.spec import get_target


@pytest.fixture
def host():
    return get_target("host-x86")


def _res(g, plan, **kw):
    return resolve(g.table, g.groups, plan, **kw)


def test_storage_bytes_exact(resdw):
    model, x = resdw
    g = analyze(model, x)
    plan = Plan({"fc": LayerChoice("unstructured", 0.5), "c2": LayerChoice("nm")})
    st = layer_storage(_res(g, plan))
    # fc: 4x16 fp32, 32 kept -> values 128 B; CSR = 32 x 1 B col idx + 5 x 2 B row ptr = 42 B;
    # bitmask = 64 bits = 8 B -> bitmask wins. Bias 4 x 4 B.
    assert st.loc["fc"].to_dict() | {} == {"fmt": "bitmask", "values_bytes": 128, "index_bytes": 8,
                                           "bias_bytes": 16, "qparam_bytes": 0, "flash_bytes": 152}
    # c2: 8 x 24 weights, 2:4 -> 96 kept x 4 B = 384 B, 2-bit metadata per kept value = 24 B, no bias.
    assert (st.at["c2", "values_bytes"], st.at["c2", "index_bytes"], st.at["c2", "flash_bytes"]) == (384, 24, 408)
    dense = layer_storage(_res(g, Plan()))
    assert int(dense["flash_bytes"].sum()) == 4 * int(g.table["params"].sum())
    # int8: 1 B values, int32 bias, 8 B requantisation parameters per output channel
    assert flash_bytes(_res(g, Plan()), "int8") == int(g.table["weight_params"].sum()) + \
        sum(4 * g.table.at[n, "out_channels"] for n in g.table.index if g.table.at[n, "has_bias"]) + \
        8 * int(g.table["out_channels"].sum())


def test_channel_pruning_shrinks_storage_and_macs(resdw):
    model, x = resdw
    g = analyze(model, x)
    res = _res(g, Plan({"pw": LayerChoice("channel", 0.5)}), channel_multiple=8)
    assert res.at["pw", "kept_out"] == 8 and res.at["fc", "kept_in"] == 8
    assert res.at["pw", "dense_macs"] == g.table.at["pw", "macs"] // 2
    assert res.at["fc", "dense_macs"] == g.table.at["fc", "macs"] // 2


def test_host_unstructured_gives_no_speedup_but_channels_do(resdw, host):
    model, x = resdw
    g = analyze(model, x)
    cm = costmodels.default_for(host)
    dense = cm.predict(g, Plan())
    unstr = cm.predict(g, Plan({"c2": LayerChoice("unstructured", 0.8), "pw": LayerChoice("unstructured", 0.8)}))
    chan = cm.predict(g, Plan({"pw": LayerChoice("channel", 0.5)}))
    assert unstr.latency_s == pytest.approx(dense.latency_s)  # dense TVM kernels run the zeros
    assert unstr.flash_bytes < dense.flash_bytes                # ... but storage shrinks
    assert chan.latency_s < dense.latency_s
    assert chan.sram_bytes < dense.sram_bytes and unstr.sram_bytes == dense.sram_bytes
    assert not cm.features(_res(g, Plan({"c2": LayerChoice("unstructured", 0.8)})))["accelerated"].any()


def test_uncovered_layer_kind_is_an_error_not_zero(resdw, host):
    model, x = resdw
    g = analyze(model, x)
    cm = costmodels.default_for(host)
    del cm.scale["depthwise"]
    with pytest.raises(costmodels.CoverageError, match="dw"):
        cm.predict(g, Plan())
    c = cm.predict(g, Plan(), allow_gaps=True)
    assert c.coverage_gaps == ("dw",) and np.isnan(c.layers.at["dw", "latency_s"])


def test_refit_recovers_a_planted_linear_law(resdw, host):
    """Unit test with SYNTHETIC 'measurements' generated from a known law (the real refit on
    TVM measurements is exercised by the end-to-end search test)."""
    model, x = resdw
    g = analyze(model, x)
    cm = costmodels.default_for(host)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(8):
        plan = Plan({"c1": LayerChoice("channel", float(rng.choice([0.0, 0.5]))),
                     "pw": LayerChoice("channel", float(rng.choice([0.0, 0.5])))})
        res = _res(g, plan)
        roof = cm.features(res)["roofline_s"]
        layer_s = {n: 3.0 * roof[n] + 1e-6 for n in res.index}  # planted: scale 3, overhead 1 µs
        samples.append(Sample(res, sum(layer_s.values()) + 5e-6, layer_s))
    rep = cm.refit(samples)
    assert rep.mape_after < 0.01 < rep.mape_before
    assert cm.scale["conv"] == pytest.approx(3.0, rel=1e-3)
    assert cm.overhead_model == pytest.approx(5e-6, rel=1e-3)


def test_costmodel_file_round_trip_and_bad_files(resdw, host, tmp_path):
    model, x = resdw
    g = analyze(model, x)
    cm = costmodels.default_for(host)
    cm.scale["conv"] = 7.0
    path = cm.save(tmp_path / "cm.json")
    back = costmodels.load(path, host)
    assert back.predict(g, Plan()).latency_s == pytest.approx(cm.predict(g, Plan()).latency_s)
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match="schema_version"):
        costmodels.load(path, host)
    path.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        costmodels.load(path, host)


def test_refit_corrects_measured_kernels_and_fits_the_glue(resdw):
    """Kernels measured off the roofline (a schedule 2x slower for one channel count) are
    corrected exactly where they appear again, unmeasured kernels keep factor 1, and what totals
    leave after the layers is split into a fixed overhead and a term in kept activation bytes."""
    from costmodels.analytical import RooflineModel
    from hwsearch.core.plan import LayerChoice, Plan
    from hwsearch.core.resolve import resolve
    from targets.spec import get_target

    g = analyze(*resdw)
    cm = RooflineModel(get_target("host-x86"))
    prior = RooflineModel(get_target("host-x86"))
    plans = [Plan(), Plan({"c1": LayerChoice("channel", 0.5)}), Plan({"pw": LayerChoice("channel", 0.5)}),
             Plan({"c1": LayerChoice("channel", 0.5), "pw": LayerChoice("channel", 0.5)})]
    res = [resolve(g.table, g.groups, p, channel_multiple=1) for p in plans]

    def truth(r):  # the prior's layer times, but the 4-channel c2 kernel (c1 at 0.5) runs 2x slower
        lat, _ = prior.layer_latency(r)
        layer = dict(zip(r.index, lat))
        if int(r.at["c2", "kept_in"]) == 4:
            layer["c2"] *= 2.0
        return layer, sum(layer.values()) + 8e-6 + 2e-9 * float(r["act_out_bytes_kept"].sum())

    samples = [Sample(r, truth(r)[1], truth(r)[0]) for r in res[:3]]  # plan 3 held out
    cm.refit(samples)
    sig = cm.signatures(res[1])[list(res[1].index).index("c2")]
    assert cm.corrections[sig] == pytest.approx(2.0 * cm.corrections[cm.signatures(res[0])[1]], rel=1e-6)
    assert cm.glue_per_byte == pytest.approx(2e-9, rel=0.05) and cm.overhead_model == pytest.approx(8e-6, rel=0.05)
    # the held-out plan combines two measured kernels: predicted within 1 %
    assert cm.total_latency(res[3]) == pytest.approx(truth(res[3])[1], rel=0.01)
    # and it survives save/load
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        back = RooflineModel.load(cm.save(f"{d}/m.json"), get_target("host-x86"))
    assert back.corrections == cm.corrections and back.total_latency(res[3]) == pytest.approx(cm.total_latency(res[3]))


def test_same_shape_layers_with_different_fused_epilogues_are_different_kernels():
    """res1 and res2 of the reference CNN are both 64→64 k3 convs, but TVM fuses BatchNorm+ReLU
    into one and BatchNorm+add+ReLU into the other: two kernels, two schedules. A refit must
    learn a correction for each (one shared signature would average them)."""
    from costmodels.analytical import RooflineModel
    from hwsearch import zoo

    g = analyze(*zoo.mnist1d_cnn())
    assert g.table.at["res1", "epilogue"] == "batch_norm+relu"
    assert g.table.at["res2", "epilogue"] == "batch_norm+add+relu"
    assert g.table.at["head", "epilogue"] == ""
    prior = RooflineModel(get_target("host-x86"))
    cm = RooflineModel(get_target("host-x86"))
    r = _res(g, Plan())
    sig = dict(zip(r.index, cm.signatures(r)))
    assert sig["res1"] != sig["res2"]
    lat, _ = prior.layer_latency(r)
    layer = dict(zip(r.index, lat))
    layer["res2"] *= 0.6                                   # the add-fused kernel got a faster schedule
    cm.refit([Sample(r, sum(layer.values()) + 5e-6, layer)])
    assert cm.corrections[sig["res2"]] == pytest.approx(0.6 * cm.corrections[sig["res1"]], rel=1e-6)
    pred, _ = cm.layer_latency(r)
    assert dict(zip(r.index, pred))["res2"] == pytest.approx(layer["res2"], rel=1e-6)


def test_costmodel_of_one_runtime_is_refused_for_another(host, tmp_path):
    """A model fitted on ONNX Runtime's latencies cannot price TVM's (nor a bare device)."""
    ort_host = host.with_runtime("onnxruntime")
    path = costmodels.default_for(ort_host).save(tmp_path / "cm.json")
    assert json.loads(path.read_text())["runtime"] == "onnxruntime"
    assert costmodels.load(path, get_target("host-x86+onnxruntime")).target.runtime == "onnxruntime"
    with pytest.raises(SpecError, match="fitted on runtime 'onnxruntime'.*not 'tvm'.*--runtime onnxruntime"):
        costmodels.load(path, host)
    with pytest.raises(SpecError, match="not 'cortex-m7@1'"):
        costmodels.load(path, get_target("cortex-m7"))


def test_target_runtimes_and_identity(host):
    assert host.runtime == "tvm" and set(host.runtimes) == {"tvm", "onnxruntime", "torch"}
    assert host.identity == "host-x86@1+tvm" and host.backend == "tvm-local"
    ort_host = get_target("host-x86+onnxruntime")
    assert ort_host.identity == "host-x86@1+onnxruntime" and ort_host.backend == "onnxruntime"
    assert get_target("cortex-m7").identity == "cortex-m7@1" and get_target("cortex-m7").runtime is None
    with pytest.raises(SpecError, match="no runtime 'tflite'; valid: tvm, onnxruntime, torch"):
        host.with_runtime("tflite")


def test_an_unmeasured_width_of_a_measured_layer_takes_its_nearest_correction():
    """A runtime's efficiency on a layer changes slowly with the layer's width: a kernel never
    measured borrows the correction of the same layer at the nearest measured width, not 1.0."""
    from costmodels.kernels import kernel_correction, kernel_key

    table = {kernel_key("convA", 64, 64, None): 2.0, kernel_key("convA", 16, 16, None): 5.0,
             kernel_key("convB", 56, 56, None): 9.0}
    assert kernel_correction(table, "convA", 64, 64, None) == 2.0            # measured: its own
    assert kernel_correction(table, "convA", 56, 64, None) == 2.0            # nearest width: 64x64
    assert kernel_correction(table, "convA", 16, 24, None) == 5.0            # nearest width: 16x16
    assert kernel_correction(table, "convC", 64, 64, None) == 1.0            # never measured: no correction
    assert kernel_correction(table, "convA", 64, 64, 0.5) == 1.0             # another density mode


def test_kernel_keys_round_the_density_as_the_refit_does_and_name_dense_kernels(resdw, host):
    """One kernel identity (costmodels.kernels) for the refit's corrections and the search: an
    accelerated weight pattern is its own kernel by density (3 decimals), anything else the
    dense kernel of its kept shape."""
    import dataclasses

    from costmodels.analytical import RooflineModel
    from costmodels.kernels import DENSITY_DECIMALS, kernel_key, kernel_keys

    g = analyze(*resdw)
    res = _res(g, Plan({"c2": LayerChoice("unstructured", 0.5), "pw": LayerChoice("channel", 0.5)}))
    fast = dataclasses.replace(host, patterns={"unstructured": {"kernel": True, "speedup": True}})
    on_host, on_fast = kernel_keys(res, host.accelerates), kernel_keys(res, fast.accelerates)
    assert list(on_host.index) == list(res.index)
    assert on_host["c2"].endswith("|8x8|dense") and on_fast["c2"].endswith("|8x8|d0.500")
    assert on_fast["pw"].endswith("|8x8|dense") and on_host["pw"] == on_fast["pw"]
    assert DENSITY_DECIMALS == 3 and kernel_key("s", 8, 8, 0.12345) == "s|8x8|d0.123"
    assert RooflineModel(fast).signatures(res) == list(on_fast)


def test_registry_names_every_kind_loads_lazily_and_lists_valid_kinds(host):
    import subprocess
    import sys

    from costmodels import registry

    assert costmodels.names() == ["gpu24", "kernel", "lut", "mcu", "roofline"]
    with pytest.raises(costmodels.CostModelFileError, match="unknown cost model 'nope'; valid: gpu24, kernel, lut, "
                                                             "mcu, roofline"):
        costmodels.make("nope", host)
    registry.register("roofline-again", "costmodels.analytical:RooflineModel")
    try:
        assert type(costmodels.make("roofline-again", host)).__name__ == "RooflineModel"
    finally:
        registry._FACTORIES.pop("roofline-again")
    # names() imports no implementation; make() imports only the one it makes
    code = ("import sys, costmodels; costmodels.names(); assert 'costmodels.gpu24' not in sys.modules; "
            "from targets.spec import get_target; costmodels.make('lut', get_target('host-x86')); "
            "assert 'costmodels.lut' in sys.modules and 'costmodels.gpu24' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_empty_refits_and_bad_dtypes_are_cost_model_errors(host):
    from costmodels.memory import check_dtype

    cm = costmodels.default_for(host)
    with pytest.raises(costmodels.CostModelError, match="needs at least one measured plan"):
        cm.refit([])
    with pytest.raises(costmodels.CostModelError, match="unknown dtype 'fp8'; valid: fp32, fp16, bf16, int8"):
        check_dtype("fp8")
    assert issubclass(costmodels.CoverageError, costmodels.CostModelError)
    assert issubclass(costmodels.CostModelFileError, SpecError)
