"""Lookup-table cost model: interpolation, weight-pattern factors, refit adds points, files.
The profile table here is SYNTHETIC (a planted law), to check the arithmetic; the real
profile path is tested in tests/test_profile.py."""
from __future__ import annotations

import pandas as pd
import pytest

import costmodels
from costmodels import CoverageError
from costmodels.base import Sample
from costmodels.lut import LUTModel
from hwsearch.graph import analyze
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import resolve
from targets.spec import get_target


def _synthetic_profile(g) -> pd.DataFrame:
    rows = []
    for layer in g.table.index:
        for fi in (0.25, 0.5, 1.0):
            for fo in (0.25, 0.5, 1.0):
                rows.append({"layer": layer, "pattern": "dense" if fi == fo == 1.0 else "channel", "ratio": 0.0,
                             "in_frac": fi, "out_frac": fo, "latency_s": 1e-6 * (1 + 4 * fi * fo)})
        rows.append({"layer": layer, "pattern": "unstructured", "ratio": 0.5, "in_frac": 1.0, "out_frac": 1.0,
                     "latency_s": 5e-6})
    df = pd.DataFrame(rows)
    df.attrs["overhead_s"] = 3e-6
    return df


def test_lut_interpolates_and_round_trips(resdw, tmp_path):
    g = analyze(*resdw)
    t = get_target("host-x86")
    m = LUTModel.from_profile(t, _synthetic_profile(g))
    dense = m.predict(g, Plan())
    assert dense.latency_s == pytest.approx(5 * 5e-6 + 3e-6)
    res = resolve(g.table, g.groups, Plan({"pw": LayerChoice("channel", 0.5)}))
    lat, gaps = m.layer_latency(res)
    assert not gaps
    assert lat[list(res.index).index("pw")] == pytest.approx(1e-6 * (1 + 4 * 0.5))   # grid point
    assert lat[list(res.index).index("fc")] == pytest.approx(1e-6 * (1 + 4 * 0.5))   # its input halves
    un = m.predict(g, Plan({"c2": LayerChoice("unstructured", 0.5)}))
    assert un.latency_s == pytest.approx(dense.latency_s)                             # factor 1.0 measured
    back = costmodels.load(m.save(tmp_path / "lut.json"), t)
    assert back.predict(g, Plan({"pw": LayerChoice("channel", 0.5)})).latency_s == \
        pytest.approx(m.predict(g, Plan({"pw": LayerChoice("channel", 0.5)})).latency_s)


def test_lut_gap_and_refit(resdw):
    g = analyze(*resdw)
    t = get_target("host-x86")
    df = _synthetic_profile(g)
    m = LUTModel.from_profile(t, df[df["layer"] != "dw"])
    with pytest.raises(CoverageError, match="dw"):
        m.predict(g, Plan())
    m = LUTModel.from_profile(t, df)
    res = resolve(g.table, g.groups, Plan({"pw": LayerChoice("channel", 0.25)}))
    n_before = len(m.points["pw"])
    rep = m.refit([Sample(res, 40e-6, {"pw": 2e-6})])
    assert len(m.points["pw"]) == n_before + 1 and rep.mape_after < rep.mape_before
