"""Layer collapse: the report finds the layer SNIP empties at extreme sparsity, iterative SynFlow
keeps every layer connected there, connectivity is exact on hand-made masks, bisection brackets
the collapse point."""
from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from hwsearch import collapse, importance
from hwsearch.core.errors import PlanError


def _digits() -> importance.DataBatches:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)

    def data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(2):
            yield x[i * 64:(i + 1) * 64], y[i * 64:(i + 1) * 64]
    return data


def _bigmid() -> nn.Sequential:
    """Layer '5' (64→64 3x3, 36 864 weights) holds 87% of the weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 64, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


def test_report_finds_the_layer_snip_empties() -> None:
    model, data = _bigmid(), _digits()
    r = collapse.report(model, "snip", [0.9, 0.999], data)
    assert list(r.columns[:3]) == ["criterion", "sparsity", "layer"]
    assert len(r) == 2 * 4
    low, high = r[r.sparsity == 0.9], r[r.sparsity == 0.999]
    assert not low.any_collapsed.any() and not low.collapsed.any()
    assert bool((low.density > 0).all()) and bool((low.connected_density > 0).all())
    assert high.any_collapsed.all()
    assert list(high[high.emptied].layer) == ["5"]
    assert int(high.set_index("layer").at["5", "kept"]) == 0
    largest = high.sort_values("weights").layer.iloc[-1]
    assert largest == "5"  # SNIP empties the largest layer first
    # kept counts add up to the global density
    assert int(high.kept.sum()) == round(0.001 * int(high.weights.sum()))


def test_iterative_synflow_does_not_collapse_where_snip_does() -> None:
    model = _bigmid()
    r = collapse.report(model, importance.get("synflow", iterations=20), [0.999],
                        example_inputs=torch.zeros(1, 1, 8, 8))
    assert not r.collapsed.any()
    assert bool((r.connected_density > 0).all())


def test_connected_weights_on_hand_made_masks() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    x = (torch.zeros(1, 3),)
    m0 = torch.tensor([[True, False, False], [False, False, False]])  # only hidden unit 0 is fed
    m2 = torch.tensor([[False, True], [False, False]])  # output reads only hidden unit 1
    conn = collapse.connected_weights(model, {"0": m0, "2": m2}, x)
    assert not conn["0"].any() and not conn["2"].any()
    m2b = torch.tensor([[True, True], [False, False]])
    conn = collapse.connected_weights(model, {"0": m0, "2": m2b}, x)
    assert conn["0"].tolist() == m0.tolist()
    assert conn["2"].tolist() == [[True, False], [False, False]]  # the weight from unit 1 leads nowhere
    r = collapse.report(model, "magnitude", [0.0], example_inputs=x)
    assert not r.collapsed.any() and bool((r.connected_density == 1).all())


def test_disconnected_layer_is_reported_even_when_not_empty() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))

    class Planted(importance.Criterion):
        name = "planted"

        def scores(self, model, layers, data=None, *, example_inputs=None, sparsity=None):  # noqa: ANN001, ANN201
            s0 = torch.tensor([[5.0, 0, 0], [0, 0, 0]])
            s2 = torch.tensor([[0, 5.0], [0, 0]])
            return {"0": s0, "2": s2}

    r = collapse.report(model, Planted(), [0.8], example_inputs=torch.zeros(1, 3))
    by = r.set_index("layer")
    assert by.at["0", "kept"] == 1 and by.at["2", "kept"] == 1
    assert bool(by.at["0", "disconnected"]) and not bool(by.at["0", "emptied"])
    assert r.any_collapsed.all()
    # the flow passes layer '0' (unit 0 is fed) and dies at layer '2' (it reads only unit 1)
    assert bool(by.at["0", "flow_out"]) and not bool(by.at["2", "flow_out"])


def test_max_sparsity_before_collapse_brackets_the_collapse() -> None:
    model, data = _bigmid(), _digits()
    tol = 0.05
    s = collapse.max_sparsity_before_collapse(model, torch.zeros(1, 1, 8, 8), "snip", data=data, tol=tol)
    assert 0.99 < s < 0.999
    dens_bad = (1 - s) / (1 + tol) ** 1.01
    r = collapse.report(model, "snip", [s, 1 - dens_bad], data)
    assert not r[r.sparsity == s].any_collapsed.any()
    assert r[r.sparsity == 1 - dens_bad].any_collapsed.all()
    # random scores thin every layer alike: the 72-weight first layer empties first
    s_rand = collapse.max_sparsity_before_collapse(model, torch.zeros(1, 1, 8, 8), "random", tol=tol)
    total = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    assert (1 - s_rand) * total == pytest.approx(total / 72, rel=0.6)
    assert math.isfinite(s_rand)


def test_errors_name_the_remedy() -> None:
    model = _bigmid()
    with pytest.raises(PlanError, match="needs data"):
        collapse.report(model, "grasp", [0.5], example_inputs=torch.zeros(1, 1, 8, 8))
    with pytest.raises(PlanError, match="input shape"):
        collapse.report(model, "magnitude", [0.5])
    with pytest.raises(PlanError, match="out of range"):
        collapse.report(model, "magnitude", [1.0], example_inputs=torch.zeros(1, 1, 8, 8))
    with pytest.raises(PlanError, match="resolve"):
        collapse.floored_layers(object())
