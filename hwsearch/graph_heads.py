"""Attention heads at analysis: which linear layers are an attention block's q, k, v and output
projections, and how many heads (query and key/value) of what width they hold.

Heads are found on the exported graph, not from module names: for every
``scaled_dot_product_attention`` node, its query, key and value operands are followed back
through the shape and elementwise ops a model writes between a projection and the attention
(``view``/``reshape``/``transpose``, rotary embeddings' ``mul``/``add``/``cat``/``neg``/``slice``,
``repeat_kv``'s ``expand``) to the one linear layer each comes from, and its output forward through
the inverse reshapes to the linear layer that reads it (the output projection). A block where any
of the four is not exactly one linear layer, or whose widths do not split into whole heads, is
listed with the reason and its heads are not offered.

``heads`` (query heads ``H``), ``kv_heads`` (``Hkv``; ``H`` for multi-head attention) and
``head_dim`` (``D``) come from the projections' widths and the attention operands' last
dimension: ``q`` has ``H·D`` outputs, ``k`` ``Hkv·D``, ``v`` ``Hkv·Dv`` and the output projection
``H·Dv`` inputs. Two structured units follow (see :mod:`hwsearch.core.resolve`):

* pattern ``head`` removes whole key/value groups — a KV head with the ``H/Hkv`` query heads that
  read it (for multi-head attention: single heads);
* pattern ``qhead`` (grouped-query attention only) removes the same number of query heads from
  every KV group, keeping every KV head.

The plan gives either on the query projection, the block's leader.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["HeadGroup", "find_head_groups", "HEAD_COLUMNS"]

#: Columns :func:`hwsearch.graph.analyze` adds to the layer table from the head groups.
HEAD_COLUMNS = ("head_leader", "head_role", "heads", "kv_heads", "head_dim", "v_head_dim")

# Ops a projection's output passes through on its way into the attention (and back out of it):
# reshapes, layout changes and the elementwise arithmetic of rotary embeddings. Anything else
# (another layer, a matmul, a reduction) ends the walk.
_PASS_THROUGH = frozenset({
    "view", "_unsafe_view", "reshape", "transpose", "permute", "contiguous", "clone", "expand", "unsqueeze",
    "squeeze", "flatten", "unflatten", "slice", "narrow", "cat", "neg", "mul", "add", "sub", "div", "to",
    "_to_copy", "alias", "split", "split_with_sizes", "getitem", "chunk", "detach", "dropout", "type_as",
    "repeat_interleave", "repeat"})
_MAX_WALK = 64  # nodes visited per operand: rotary embeddings take about a dozen


@dataclass(frozen=True)
class HeadGroup:
    """One attention block's projections and head geometry; ``reason`` says why its heads cannot
    be pruned ("" when they can)."""

    leader: str          # the query projection: the layer a plan names
    q: str
    k: str
    v: str
    o: str
    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int
    node: str            # the attention op's graph node
    reason: str = ""

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1: multi-head attention)."""
        return self.heads // self.kv_heads if self.kv_heads else 0

    @property
    def roles(self) -> dict[str, str]:
        return {self.q: "q", self.k: "k", self.v: "v", self.o: "o"}


def _aten_name(node: torch.fx.Node) -> str:
    t = str(node.target)
    if t.startswith("aten."):
        return t.split(".")[1]
    return "getitem" if "getitem" in t else t


def _back_to_layers(start: object, layer_of: dict[str, str]) -> set[str]:
    """Linear layers reached walking back from ``start`` through pass-through ops."""
    found: set[str] = set()
    stack, seen = [start], set()
    while stack and len(seen) < _MAX_WALK:
        n = stack.pop()
        if not isinstance(n, torch.fx.Node) or n.name in seen:
            continue
        seen.add(n.name)
        if n.name in layer_of:
            found.add(layer_of[n.name])
            continue
        if n.op != "call_function" or _aten_name(n) not in _PASS_THROUGH:
            continue
        for a in list(n.args) + list(n.kwargs.values()):
            if isinstance(a, (list, tuple)):
                stack.extend(a)
            else:
                stack.append(a)
    return found


def _forward_to_layers(start: torch.fx.Node, layer_of: dict[str, str]) -> tuple[set[str], bool]:
    """Linear layers that read ``start`` (through pass-through ops) as their input, and whether
    the output also reaches something else (a residual add, the model output)."""
    found: set[str] = set()
    leaks = False
    stack, seen = [start], set()
    while stack and len(seen) < _MAX_WALK:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        for u in n.users:
            if u.name in layer_of and u.args and u.args[0] is n:
                found.add(layer_of[u.name])
            elif u.op == "call_function" and _aten_name(u) in _PASS_THROUGH - {"add", "sub", "mul", "div", "cat"}:
                stack.append(u)
            else:
                leaks = True
    return found, leaks


def _out_features(table, layer: str) -> int:
    return int(table.at[layer, "out_channels"])


def find_head_groups(nodes: list[torch.fx.Node], table) -> list[HeadGroup]:
    """The attention blocks of an exported graph (``nodes``) over its layer table (``table``:
    linear rows with ``node``, ``op``, ``in_channels``, ``out_channels``), in graph order."""
    layer_of = {str(r.node): name for name, r in table.iterrows() if r.op == "linear"}
    out: list[HeadGroup] = []
    for node in nodes:
        if node.op != "call_function" or "scaled_dot_product_attention" not in str(node.target):
            continue
        qkv = [_back_to_layers(a, layer_of) for a in node.args[:3]]
        outs, leaks = _forward_to_layers(node, layer_of)
        val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        vval = node.args[2].meta.get("val") if isinstance(node.args[2], torch.fx.Node) else None
        names = [next(iter(s)) if len(s) == 1 else "" for s in qkv] + [next(iter(outs)) if len(outs) == 1 else ""]
        d = int(val.shape[-1]) if isinstance(val, torch.Tensor) else 0
        dv = int(vval.shape[-1]) if isinstance(vval, torch.Tensor) else 0
        reason = ""
        if not all(names):
            what = ", ".join(f"{r}: {sorted(s) or 'none'}" for r, s in zip(("q", "k", "v", "o"), qkv + [outs])
                             if len(s) != 1)
            reason = f"its projections are not one linear layer each ({what})"
        elif len(set(names)) < 4:
            reason = "q, k, v and the output projection are not four distinct linear layers (a fused qkv projection)"
        elif leaks:
            reason = "the attention output reaches more than the output projection"
        q, k, v, o = names
        heads = kv = 0
        if not reason:
            qo, ko, vo, oi = (_out_features(table, q), _out_features(table, k), _out_features(table, v),
                              int(table.at[o, "in_channels"]))
            if d <= 0 or dv <= 0 or qo % d or ko % d or vo % dv or oi % dv:
                reason = f"projection widths (q {qo}, k {ko}, v {vo}, out {oi}) do not split into heads of {d}"
            else:
                heads, kv = qo // d, ko // d
                if vo // dv != kv or oi // dv != heads or heads % kv:
                    reason = (f"head counts disagree (q {heads} heads, k {kv}, v {vo // dv}, output projection "
                              f"{oi // dv}); cannot remove heads consistently")
        out.append(HeadGroup(leader=q or f"<{node.name}>", q=q, k=k, v=v, o=o, heads=heads, kv_heads=kv,
                             head_dim=d, v_head_dim=dv, node=node.name, reason=reason))
    return out
