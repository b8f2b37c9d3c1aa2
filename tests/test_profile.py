"""hwsearch profile on the real TVM backend: every grid cell timed, LUT fitted from it."""
from __future__ import annotations

import numpy as np
import pytest

from costmodels.lut import LUTModel
from hwsearch.graph import analyze
from hwsearch.core.plan import Plan
from hwsearch.profiling import profile
from targets.spec import get_target

pytestmark = pytest.mark.slow


def test_profile_times_every_cell_and_fits_a_lut(resdw, tmp_path):
    g = analyze(*resdw)
    t = get_target("host-x86")
    df = profile(g, t, work_dir=tmp_path / "tvm", ratios=(0.0, 0.5), samples=2, repeats=3, channel_multiple=4)
    assert set(df["layer"]) == set(g.table.index)
    assert df["latency_s"].notna().all() and (df["latency_s"] > 0).all()
    # channel cells shrink MACs; unstructured cells keep the dense shape
    pw = df[df["layer"] == "pw"]
    assert pw[pw["pattern"] == "channel"]["macs"].max() < pw[pw["pattern"] == "dense"]["macs"].iloc[0]
    assert (df[df["pattern"] == "unstructured"]["kept_out"] == df[df["pattern"] == "unstructured"]["layer"].map(
        g.table["out_channels"])).all()
    assert df.attrs["dense_latency_s"] > 0 and df.attrs["provenance"]["backend"] == "tvm-local"
    lut = LUTModel.from_profile(t, df)
    c = lut.predict(g, Plan())
    assert np.isfinite(c.latency_s) and c.latency_s > 0
