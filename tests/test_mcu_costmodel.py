"""MCU instruction cost model: shipped coefficients, held-out accuracy, save/load, refit."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from costmodels import mcu as M
from targets import mcu

NO_TOOLS = mcu.available()
DATA = [M.DATA_DIR / "mcu_counts_cortex_m4.csv", M.DATA_DIR / "mcu_counts_cortex_m7.csv"]


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    df = pd.concat([pd.read_csv(p) for p in DATA], ignore_index=True)
    return df[df["error"].isna()]


def _split(rows: pd.DataFrame, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = np.array(sorted(rows["shape_id"].unique()))
    held = set(np.random.default_rng(seed).choice(ids, size=len(ids) // 4, replace=False).tolist())
    mask = rows["shape_id"].isin(held)
    return rows[~mask], rows[mask]


def test_shipped_data_has_provenance(rows: pd.DataFrame) -> None:
    for col in ("version.gcc", "version.qemu", "version.python", "date", "board", "cpu", "version.cflags"):
        assert rows[col].notna().all(), col
    assert set(rows["cpu"]) == {"cortex-m4", "cortex-m7"}
    assert {"int8", "fp32"} <= set(rows["dtype"])


def test_shipped_model_loads_and_predicts() -> None:
    model = M.default_model()
    assert model.provenance["rows"] > 1000 and model.provenance["gcc"] and model.provenance["qemu"]
    shape = M.shape_from_layer("conv2d", (16, 12, 12), 32, kernel=(3, 3), padding=1)
    dense = model.predict("conv2d", "dense", "int8", shape, 1.0, cpu="cortex-m4")
    csr10 = model.predict("conv2d", "csr", "int8", shape, 0.1, cpu="cortex-m4")
    csr50 = model.predict("conv2d", "csr", "int8", shape, 0.5, cpu="cortex-m4")
    assert csr10 < dense < csr50  # CSR pays off only at low density on int8 (SMLAD dense)
    macs = 32 * 16 * 9 * 144
    assert 1.5 < dense / macs < 4.0
    lat = M.McuInstructionModel.latency_s(dense, clock_hz=180e6, cpi=1.2)
    assert lat == pytest.approx(dense * 1.2 / 180e6)


def test_heldout_shapes_within_10_percent(rows: pd.DataFrame) -> None:
    train, held = _split(rows)
    model = M.fit(train)
    pred = model.predict_df(held)
    rel = np.abs(pred - held["instructions"].to_numpy()) / held["instructions"].to_numpy()
    assert (rel <= 0.10).mean() >= 0.95
    assert np.median(rel) < 0.02


def test_save_load_roundtrip(tmp_path, rows: pd.DataFrame) -> None:
    model = M.fit(rows[rows["cpu"] == "cortex-m4"].head(400))
    path = model.save(tmp_path / "m.json")
    again = M.load(path)
    sample = rows[rows["cpu"] == "cortex-m4"].head(400).sample(40, random_state=0)
    sample = sample[[again.covers("cortex-m4", o, f, d) for o, f, d in zip(sample.op, sample.fmt, sample.dtype)]]
    assert np.array_equal(model.predict_df(sample), again.predict_df(sample))
    assert again.provenance == json.loads(path.read_text())["provenance"]


def test_refit_from_normal_equations_equals_full_fit(rows: pd.DataFrame) -> None:
    r = rows[(rows["cpu"] == "cortex-m4") & (rows["dtype"] == "int8")]
    a, b = r.iloc[: len(r) // 2], r.iloc[len(r) // 2:]
    # shared scale: fit the first half, refit with the second; compare with one fit on both
    inc = M.fit(a).refit(b)
    full = M.fit(pd.concat([a, b]))
    pi, pf = inc.predict_df(r, exact_counts=True), full.predict_df(r, exact_counts=True)
    assert np.allclose(pi, pf, rtol=0.02)
    assert inc.provenance["rows"] == len(r) and len(inc.provenance["history"]) == 2


def test_bad_files_say_how_to_fix(tmp_path) -> None:
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"schema_version": 99, "kind": "mcu-instructions", "groups": {}}))
    with pytest.raises(M.McuModelError, match="refit"):
        M.load(p)
    p.write_text("{not json")
    with pytest.raises(M.McuModelError, match="not valid JSON"):
        M.load(p)


def test_uncovered_layer_is_an_error_not_zero(rows: pd.DataFrame) -> None:
    only_csr = M.fit(rows[(rows["fmt"] == "csr") & (rows["op"] == "linear") & (rows["cpu"] == "cortex-m4")])
    shape = {"batch": 1, "in_features": 64, "out_features": 32}
    assert only_csr.predict("linear", "csr", "int8", shape, 0.3) > 0
    with pytest.raises(M.McuModelError, match="block"):
        only_csr.predict("linear", "block", "int8", shape, 0.3)
    with pytest.raises(M.McuModelError, match="cortex-m7"):
        only_csr.predict("linear", "csr", "int8", shape, 0.3, cpu="cortex-m7")
    assert not only_csr.covers("cortex-m4", "conv2d", "csr", "int8", M.shape_from_layer(
        "conv2d", (8, 6, 6), 8, kernel=(3, 3), padding=1))


@pytest.mark.skipif(NO_TOOLS is not None, reason=NO_TOOLS or "")
@pytest.mark.slow
def test_prediction_of_a_fresh_measurement_within_10_percent() -> None:
    """A layer shape that is in no shipped row, measured now, predicted by the shipped model."""
    model = M.default_model()
    rng = np.random.default_rng(123)
    cases = [("conv2d", (40, 20, 3, 3), (20, 11, 11), {"padding": 1}, "csr", 0.2),
             ("linear", (72, 136), (136,), {}, "block", 0.5),
             ("dwconv2d", (40, 1, 3, 3), (40, 13, 13), {"padding": 1, "stride": 2}, "dense", 1.0)]
    for op, ws, xs, kw, fmt, dens in cases:
        w = mcu.prune_to_format(op, rng.standard_normal(ws), fmt, dens)
        m = mcu.measure_layer(op, w, rng.standard_normal(xs), fmt=fmt, cpu="cortex-m7", **kw)
        assert m.error is None
        pred = model.predict(op, fmt, "int8", m.shape, m.density, cpu="cortex-m7")
        assert abs(pred - m.instructions) / m.instructions <= 0.10, (op, fmt, pred, m.instructions)


def _reference_layer_cases():
    """(model, ratio, layer, op, fmt, shape, density) for every conv/linear layer of both reference
    models (MNIST1DNet widths 32 and 8: the architecture of ``mnist1d_cnn`` and ``mnist1d_cnn_small``)
    at channel-pruning ratios 0 / 0.25 / 0.5 / 0.75, in every format its kernel op can hold."""
    import torch

    from costmodels.mcu_cost import layer_shape
    from targets.mcu.ops import mcu_op
    from hwsearch.graph import analyze
    from hwsearch.core.plan import LayerChoice, Plan
    from hwsearch.core.resolve import resolve
    from hwsearch.zoo import MNIST1DNet
    from targets.mcu._layers import geometry, pack_layer

    for width in (32, 8):
        g = analyze(MNIST1DNet(width).eval(), torch.zeros(1, 1, 40))
        leaders = [n for n in g.table.index if g.table.at[n, "group_leader"] and g.table.at[n, "channel_prunable"]]
        for ratio in (0.0, 0.25, 0.5, 0.75):
            res = resolve(g.table, g.groups, Plan({n: LayerChoice("channel", ratio) for n in leaders} if ratio else {}))
            for name, r in res.iterrows():
                op = mcu_op(r)
                shape = layer_shape(r, int(r["kept_in"]), int(r["kept_out"]))
                if op == "linear":
                    w_shape, x_shape = (shape["out_features"], shape["in_features"]), (shape["in_features"],)
                else:
                    w_shape = (shape["out_channels"], shape["in_channels"] // shape["groups"], shape["kernel"])
                    x_shape = (shape["in_channels"], shape["in_len"])
                geom = geometry(op, w_shape, x_shape, stride=shape.get("stride", 1), padding=shape.get("padding", 0),
                                groups=shape.get("groups", 1))
                w = mcu.prune_to_format(op, np.ones(w_shape, np.float32), "dense")
                for fmt, dens, extra in (("dense", 1.0, {}), ("csr", 0.3, {}), ("bitmask", 0.3, {}),
                                         ("nm", 0.5, {"n": 2, "m": 4}), ("block", 0.5, {"block_h": 4, "block_w": 4})):
                    try:  # the formats the kernels can hold for this shape
                        pack_layer(geom, mcu.prune_to_format(op, w, fmt, dens, groups=shape.get("groups", 1)), fmt)
                    except ValueError:
                        continue
                    yield width, ratio, name, op, fmt, {**shape, **extra}, dens
                if r["kind"] == "depthwise":  # also as the height-1 depthwise kernel it can run on
                    s2 = M.shape_from_layer("dwconv2d", (shape["in_channels"], 1, shape["in_len"]), shape["out_channels"],
                                            kernel=(1, shape["kernel"]), stride=(1, shape["stride"]),
                                            padding=(0, shape["padding"]))
                    for fmt, dens in (("dense", 1.0), ("csr", 0.3), ("bitmask", 0.3)):
                        yield width, ratio, name, "dwconv2d", fmt, s2, dens


def test_every_reference_model_layer_is_covered_in_every_format() -> None:
    """No layer of either reference model, channel-pruned or not, is a coverage gap of the shipped
    model on either core, in any format its op supports, int8 or fp32."""
    model = M.default_model()
    cases = list(_reference_layer_cases())
    assert {c[4] for c in cases} == {"dense", "csr", "bitmask", "nm", "block"}
    assert {(c[2], c[4]) for c in cases} >= {("stem", "csr"), ("dw", "bitmask"), ("head", "nm"), ("res1", "block")}
    for width, ratio, name, op, fmt, shape, dens in cases:
        for cpu in ("cortex-m4", "cortex-m7"):
            for dtype in ("int8", "fp32"):
                pred = model.predict(op, fmt, dtype, shape, dens, cpu=cpu)   # raises McuModelError on a gap
                assert pred > 0, (width, ratio, name, fmt, cpu, dtype)


def test_plan_cost_model_prices_both_reference_models_on_both_cores() -> None:
    import torch

    import costmodels
    from hwsearch.graph import analyze
    from hwsearch.core.plan import LayerChoice, Plan
    from hwsearch.zoo import MNIST1DNet
    from targets.spec import get_target

    for width in (32, 8):
        g = analyze(MNIST1DNet(width).eval(), torch.zeros(1, 1, 40))
        plans = [Plan(), Plan({n: LayerChoice("unstructured", 0.7) for n in g.table.index}),
                 Plan({"down": LayerChoice("channel", 0.5), "pw": LayerChoice("nm", n=2, m=4),
                       "res1": LayerChoice("block", 0.5, block=(4, 4)), "stem": LayerChoice("unstructured", 0.9)})]
        for target in ("cortex-m4", "cortex-m7"):
            cm = costmodels.default_for(get_target(target))
            for plan in plans:
                cost = cm.predict(g, plan)   # CoverageError on any gap
                assert not cost.coverage_gaps and cost.latency_s > 0
