"""Transformer graphs at analysis: attention, matmuls, embeddings and norms are counted from
the exported shapes (against hand counts), and a residual stream's width is refused as a
channel-pruning target with the reason, instead of crashing when the plan is folded."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwsearch import prune
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.graph import analyze

B, L, V, E, H, HKV, D = 2, 16, 64, 32, 4, 2, 8


class _GQABlock(nn.Module):
    """Embedding → q/k/v projections (4 query heads, 2 KV heads) → SDPA → output projection
    added back to the residual stream → LayerNorm → mean pool → classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.q, self.k, self.v = nn.Linear(E, H * D), nn.Linear(E, HKV * D), nn.Linear(E, HKV * D)
        self.o = nn.Linear(H * D, E)
        self.ln = nn.LayerNorm(E)
        self.head = nn.Linear(E, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        q = self.q(h).view(B, L, H, D).transpose(1, 2)
        k = self.k(h).view(B, L, HKV, D).transpose(1, 2)
        v = self.v(h).view(B, L, HKV, D).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        h = self.ln(h + self.o(a.transpose(1, 2).reshape(B, L, H * D)))
        return self.head(h.mean(1))


class _MatmulAttention(nn.Module):
    """Attention written with matmul and softmax, as many models do."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(E, E), nn.Linear(E, E), nn.Linear(E, E)
        self.head = nn.Linear(E, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(x).view(B, L, H, D).transpose(1, 2)
        k = self.k(x).view(B, L, H, D).transpose(1, 2)
        v = self.v(x).view(B, L, H, D).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / D ** 0.5, dim=-1)
        return self.head((att @ v).transpose(1, 2).reshape(B, L, E).mean(1))


class _ResidualMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(E, 4 * E), nn.Linear(4 * E, E), nn.Linear(E, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.fc2(torch.relu(self.fc1(x))))  # pre-norm residual, as in every transformer


def test_attention_embedding_and_norm_counted_against_hand_counts():
    g = analyze(_GQABlock(), torch.randint(0, V, (B, L)))
    ops = g.ops
    att = ops[ops["kind"] == "attention"].iloc[0]
    assert (att["batch"], att["heads"], att["kv_heads"], att["seq_q"], att["seq_k"], att["head_dim"]) == (B, H, HKV, L, L, D)
    assert att["macs"] == B * H * L * L * (D + D)                      # QKᵀ and the weighted sum of V
    assert att["bytes_in"] == 4 * (B * H * L * D + 2 * B * HKV * L * D)  # Q, K, V (fp32)
    assert att["bytes_out"] == 4 * B * H * L * D
    emb = ops[ops["kind"] == "embedding"].iloc[0]
    assert emb["weight_bytes"] == 4 * V * E and emb["macs"] == 0
    assert emb["bytes_in"] == 4 * B * L * E + 8 * B * L                 # rows gathered + int64 indices
    norm = ops[ops["kind"] == "norm"].iloc[0]
    assert norm["bytes_in"] == norm["bytes_out"] == 4 * B * L * E
    # attention shrinks with the heads of q: its input's channel group is the q projection's
    assert att["group"] == g.table.at["q", "out_group"] >= 0


def test_matmul_attention_counted_from_shapes():
    g = analyze(_MatmulAttention(), torch.randn(B, L, E))
    mm = g.ops[g.ops["kind"] == "matmul"]
    assert sorted(mm["macs"].tolist()) == [B * H * L * L * D] * 2       # QKᵀ and att @ V
    assert (g.ops["kind"] == "softmax").sum() == 1


def test_residual_stream_refuses_channel_pruning_with_the_reason_and_the_inner_width_folds():
    torch.manual_seed(0)
    model = _ResidualMLP().eval()
    x = torch.randn(4, E)
    g = analyze(model, x)
    with pytest.raises(PlanError, match=r"'fc2' cannot take channel pruning \(.*residual stream"):
        prune.decide(g, Plan({"fc2": LayerChoice("channel", 0.5)}))
    plan = Plan({"fc1": LayerChoice("channel", 0.5)})  # the MLP's inner width: allowed
    dec = prune.decide(g, plan)
    masked = prune.apply(g, dec, mode="mask")
    folded = prune.apply(g, dec, mode="fold")
    assert folded.fc1.out_features == 2 * E and folded.fc2.in_features == 2 * E
    torch.testing.assert_close(folded(x), masked(x), atol=1e-5, rtol=1e-5)
