"""Layer table and dependency groups against hand counts (ResDWNet in conftest)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from hwsearch.core.errors import ModelError
from hwsearch.graph import analyze


def test_layer_table_hand_counts(resdw):
    model, x = resdw
    t = analyze(model, x).table
    assert list(t.index) == ["c1", "c2", "dw", "pw", "fc"]
    # MACs = output elements x (in_channels/groups) x kernel
    assert t["macs"].to_dict() == {"c1": 8 * 16 * 3, "c2": 8 * 16 * 8 * 3, "dw": 8 * 16 * 3,
                                   "pw": 16 * 16 * 8, "fc": 4 * 16}
    assert t["params"].to_dict() == {"c1": 8 * 3 + 8, "c2": 8 * 8 * 3, "dw": 8 * 3 + 8, "pw": 16 * 8 + 16,
                                     "fc": 16 * 4 + 4}
    assert t.at["c1", "act_in_bytes"] == 16 * 4 and t.at["c1", "act_out_bytes"] == 8 * 16 * 4
    assert t.at["pw", "out_shape"] == (1, 16, 16)
    assert t.at["dw", "kind"] == "depthwise" and t.at["c2", "kind"] == "conv" and t.at["fc", "kind"] == "linear"


def test_dependency_groups_residual_and_depthwise(resdw):
    model, x = resdw
    g = analyze(model, x)
    t = g.table
    # the residual add couples c1 and c2; the depthwise conv follows them
    assert t.at["c1", "out_group"] == t.at["c2", "out_group"] == t.at["dw", "out_group"]
    assert t.at["pw", "out_group"] != t.at["c1", "out_group"]
    grp = g.groups[int(t.at["c1", "out_group"])]
    assert grp.leader == "c1" and set(grp.producers) == {"c1", "c2", "dw"}
    assert "pw" in grp.consumers and "c2" in grp.consumers
    assert t.at["c1", "group_leader"] and not t.at["c2", "group_leader"]
    # the output layer's channels are the classes: never prunable
    assert not t.at["fc", "channel_prunable"] and t.at["pw", "channel_prunable"]


def test_activation_liveness_hand_count(resdw):
    from costmodels.memory import peak_sram_bytes

    model, x = resdw
    g = analyze(model, x)
    # Peak at the last ReLU: pw output (16x16 fp32) and its ReLU output live together.
    assert peak_sram_bytes(g.activations, {}) == 2 * 16 * 16 * 4
    pw_group = int(g.table.at["pw", "out_group"])
    # Halving pw's channels: that step drops to 1024; the residual block (3 x 512 B) sets the peak.
    assert peak_sram_bytes(g.activations, {pw_group: 0.5}) == 3 * 8 * 16 * 4


def test_unexportable_model_is_a_model_error():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(ModelError, match="torch.export failed"):
        analyze(Branchy(), torch.randn(1, 4))


def test_uncovered_compute_ops_are_reported():
    class WithMatmul(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return self.fc(x) @ self.w

    g = analyze(WithMatmul(), torch.randn(2, 4))
    # a matmul is counted (priced from graph.ops, never as zero), not left uncovered
    assert (g.ops["kind"] == "matmul").sum() == 1 and int(g.ops["macs"].iloc[0]) == 2 * 4 * 4
    assert not g.uncovered

    class WithConvTranspose(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose1d(4, 4, 2, stride=2)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.up(x).flatten(1))

    g = analyze(WithConvTranspose(), torch.randn(2, 4, 2))
    assert any("conv_transpose" in u or "convolution" in u for u in g.uncovered)
