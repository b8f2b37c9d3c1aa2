"""Model analysis: ``torch.export`` a model and describe every prunable layer.

:func:`analyze` is the first stage of the loop. It returns a :class:`ModelGraph` holding

* ``table`` — a pandas DataFrame, one row per prunable layer (conv / linear), indexed by
  the module's qualified name, in execution order;
* ``activations`` — one row per intermediate tensor of the exported graph with its size and
  live range (for peak-SRAM models);
* ``groups`` — the channel dependency groups found by Torch-Pruning's dependency graph
  (residual adds, BatchNorm, depthwise convs and flatten→linear are coupled there).

Channel columns of the table: ``out_group`` (group of the layer's output channels, -1 when
untraceable), ``in_group`` (the group feeding the layer's first input columns, -1 if none),
``in_expand`` (input columns per channel of ``in_group``: >1 after a flatten) and ``in_slices``
— every group feeding the layer as ``(gid, offset, expand)``: channel ``c`` of group ``gid``
occupies input columns ``offset + c·expand … offset + (c+1)·expand - 1``. A layer fed by a
``torch.cat`` of two branches has two slices; columns no slice covers come from tensors no
prunable layer produces (e.g. the model input) and are never pruned.

All byte counts assume the dtype of the example input (float32 → 4 bytes) unless a cost
model re-prices them for another dtype.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn as nn
import torch_pruning as tp

from hwsearch.core.errors import ModelError
from hwsearch.graph_heads import HEAD_COLUMNS, HeadGroup, find_head_groups
from hwsearch.graph_ops import glue_row, op_kind, op_row

__all__ = ["ChannelGroup", "ModelGraph", "analyze", "PRUNABLE_TYPES"]

log = logging.getLogger(__name__)

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
_LAYER_OPS = {
    "aten.conv1d.default": "conv1d",
    "aten.conv2d.default": "conv2d",
    "aten.linear.default": "linear",
}
# Compute-heavy ops hwsearch does not price or prune: reported as coverage gaps, never ignored
# (those :mod:`hwsearch.graph_ops` counts go to ``ModelGraph.ops`` instead).
_UNCOVERED_OPS = ("conv3d", "conv_transpose", "convolution", "matmul", "bmm", ".mm.", "addmm", "baddbmm",
                  "einsum", "scaled_dot_product_attention", "embedding")
_UNKNOWN_GROUP = -1
# Elementwise ops a compiler fuses into the kernel of the layer before them (TVM's FuseOps, an
# epilogue): two layers of one shape with different epilogues are different kernels.
_EPILOGUE_OPS = frozenset({
    "batch_norm", "_native_batch_norm_legit_no_training", "relu", "relu_", "relu6", "hardtanh", "hardtanh_",
    "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "elu", "clamp", "add", "add_",
    "sub", "mul", "div", "dropout"})


def _epilogue(node: torch.fx.Node) -> str:
    """The chain of elementwise ops that follows ``node`` alone ("batch_norm+add+relu"), as a
    compiler fuses it into the layer's kernel; "" when none does."""
    return "+".join(op for op, _ in _epilogue_chain(node))


def _epilogue_chain(node: torch.fx.Node) -> list[tuple[str, str]]:
    """``(op, node name)`` of each op of :func:`_epilogue`'s chain."""
    ops: list[tuple[str, str]] = []
    cur = node
    while len(cur.users) == 1:
        (user,) = cur.users
        if user.op != "call_function":
            break
        name = str(user.target).split(".")[1] if str(user.target).startswith("aten.") else str(user.target)
        if name == "getitem" or "getitem" in name:
            cur = user
            continue
        if name not in _EPILOGUE_OPS:
            break
        ops.append((name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name, user.name))
        cur = user
    return ops


def _not_a_layer(node: torch.fx.Node, may_be_glue: bool, op_rows: list[dict], glue_rows: list[dict],
                 uncovered: list[str]) -> None:
    """File a node that is not a prunable layer: a counted op (attention, matmul, embedding, norm,
    softmax: priced from ``ops``), an uncovered compute op, or glue (``may_be_glue``: it depends
    on the model's input and no layer's epilogue holds it)."""
    counted = op_row(node)
    first = next((a for a in node.args if isinstance(a, torch.fx.Node)), None)
    if counted is not None:
        op_rows.append({**counted, "input": first.name if first is not None else None})
    elif any(k in str(node.target) for k in _UNCOVERED_OPS):
        uncovered.append(f"{node.name} ({node.target})")
    elif may_be_glue and (g := glue_row(node)) is not None:
        glue_rows.append({**g, "input": first.name if first is not None else None})


@dataclass(frozen=True)
class ChannelGroup:
    """Layers whose output channels must be pruned together.

    ``leader`` is the first member in execution order; a plan gives the group's channel ratio
    on the leader. ``consumers`` are layers whose *input* channels shrink when the group is
    pruned (``in_expand`` > 1 when a flatten maps one channel to several linear inputs).
    """

    gid: int
    leader: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    channels: int
    prunable: bool
    reason: str = ""  # why the group cannot be pruned, when it cannot


@dataclass
class ModelGraph:
    """Result of :func:`analyze`. ``model`` is the analysed module (not copied)."""

    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    table: pd.DataFrame
    activations: pd.DataFrame
    groups: dict[int, ChannelGroup] = field(default_factory=dict)
    uncovered: tuple[str, ...] = ()  # "node (aten op)" for compute ops with no layer row
    ops: pd.DataFrame | None = None  # attention, matmul, embedding, norm, softmax: see hwsearch.graph_ops
    heads: dict[str, HeadGroup] = field(default_factory=dict)  # attention blocks by query projection
    glue: pd.DataFrame | None = None  # elementwise nodes outside layers, epilogues and ops: hwsearch.graph_ops

    @property
    def layers(self) -> list[str]:
        return list(self.table.index)

    def group_of(self, layer: str) -> ChannelGroup | None:
        gid = int(self.table.at[layer, "out_group"])
        return self.groups.get(gid) if gid >= 0 else None


def _export(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    import contextlib
    import io

    # torch.export prints the partial graph of a failed export to stderr; keep it for --verbose
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return torch.export.export(model, example_inputs)
    except Exception as exc:  # torch raises many types here; all mean "not exportable"
        log.debug("torch.export output:\n%s", captured.getvalue())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"torch.export failed for {type(model).__name__}: {first[:300]} — make the forward "
            "free of data-dependent Python control flow, or pass an example input of the right shape"
        ) from exc


def _nbytes(val: object) -> int:
    if isinstance(val, torch.Tensor):
        return int(val.numel() * val.element_size())
    if isinstance(val, (tuple, list)):
        return sum(_nbytes(v) for v in val)
    return 0


def analyze(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    *,
    ignored: tuple[str, ...] | None = None,
) -> ModelGraph:
    """Export ``model`` on ``example_inputs`` and build its layer table and channel groups.

    ``ignored`` names layers whose output channels must never be pruned; the layer producing
    the model's output is always ignored (its channels are the model's classes).
    Raises :class:`~hwsearch.core.errors.ModelError` with a one-line remedy when the model cannot
    be exported or has no prunable layer.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    model = model.eval()
    ep = _export(model, example_inputs)
    param_of = dict(ep.graph_signature.inputs_to_parameters)
    modules = dict(model.named_modules())

    rows: dict[str, dict] = {}
    nodes = list(ep.graph.nodes)
    index_of = {n: i for i, n in enumerate(nodes)}
    act_rows = []
    op_rows: list[dict] = []
    glue_rows: list[dict] = []
    epilogue_nodes: set[str] = set()  # fused into a layer's kernel: not glue
    on_input = set(ep.graph_signature.user_inputs)  # nodes that depend on the model's input
    uncovered: list[str] = []
    for i, node in enumerate(nodes):
        val = node.meta.get("val")
        if node.op in ("call_function", "placeholder") and isinstance(val, torch.Tensor):
            is_user_input = node.op == "placeholder" and node.name in ep.graph_signature.user_inputs
            if node.op == "call_function" or is_user_input:
                last = max((index_of[u] for u in node.users), default=i)
                if any(u.op == "output" for u in node.users):
                    last = len(nodes)
                act_rows.append({"tensor": node.name, "bytes": _nbytes(val), "shape": tuple(val.shape),
                                 "produced": i, "last_use": last, "layer": None,
                                 "src": [a.name for a in node.args if isinstance(a, torch.fx.Node)]})
        if node.op != "call_function":
            continue
        on_input.update([node.name] if any(a.name in on_input for a in node.all_input_nodes) else [])
        op = _LAYER_OPS.get(str(node.target))
        if op is None:
            _not_a_layer(node, node.name in on_input and node.name not in epilogue_nodes, op_rows, glue_rows,
                         uncovered)
            continue
        epilogue_nodes.update(n for _, n in _epilogue_chain(node))
        wnode = node.args[1]
        pname = param_of.get(getattr(wnode, "name", ""), "")
        mname = pname.rsplit(".", 1)[0] if pname.endswith(".weight") else ""
        mod = modules.get(mname)
        if not isinstance(mod, PRUNABLE_TYPES):
            uncovered.append(f"{node.name} ({node.target}, weight {pname or 'not a parameter'})")
            continue
        act_rows[-1]["layer"] = mname
        x_val = node.args[0].meta["val"]
        y_val = val
        w = mod.weight
        groups = int(getattr(mod, "groups", 1))
        if op == "linear":
            in_c, out_c = mod.in_features, mod.out_features
            macs = y_val.numel() * in_c
            kind = "linear"
            kernel: tuple[int, ...] = ()
        else:
            in_c, out_c = mod.in_channels, mod.out_channels
            kernel = tuple(mod.kernel_size)
            macs = y_val.numel() * (in_c // groups) * math.prod(kernel)
            kind = "depthwise" if groups == in_c and groups > 1 else ("grouped" if groups > 1 else "conv")
        params = w.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        if mname in rows:  # a module called twice: one row, summed work
            rows[mname]["macs"] += macs
            rows[mname]["calls"] += 1
            continue
        rows[mname] = {
            "order": len(rows), "op": op, "kind": kind, "node": node.name,
            "in_shape": tuple(x_val.shape), "out_shape": tuple(y_val.shape),
            "weight_shape": tuple(w.shape), "in_channels": in_c, "out_channels": out_c,
            "groups": groups, "kernel": kernel, "kernel_elems": math.prod(kernel) if kernel else 1,
            "stride": tuple(getattr(mod, "stride", ())), "padding": tuple(getattr(mod, "padding", ()))
            if not isinstance(getattr(mod, "padding", ()), str) else (mod.padding,),
            "has_bias": mod.bias is not None, "macs": int(macs), "params": int(params),
            "weight_params": int(w.numel()),
            "act_in_bytes": _nbytes(x_val), "act_out_bytes": _nbytes(y_val),
            "dtype_bytes": w.element_size(), "calls": 1, "epilogue": _epilogue(node),
        }
    if not rows:
        raise ModelError(
            f"{type(model).__name__} has no Conv1d/Conv2d/Linear layer that torch.export exposes — "
            "hwsearch prunes conv and linear layers only")
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "layer"

    last_layer = table.index[-1]
    ignored_names = set(ignored or ()) | {last_layer}
    groups, out_group, in_slices = _channel_groups(model, example_inputs, table, ignored_names)
    table["out_group"] = [out_group.get(n, _UNKNOWN_GROUP) for n in table.index]
    table["in_group"] = [in_slices[n][0][0] if in_slices.get(n) else _UNKNOWN_GROUP for n in table.index]
    table["in_expand"] = [in_slices[n][0][2] if in_slices.get(n) else 1 for n in table.index]
    table["in_slices"] = [tuple(in_slices.get(n, ())) for n in table.index]
    table["group_leader"] = [g >= 0 and groups[g].leader == n for n, g in zip(table.index, table["out_group"])]
    table["channel_prunable"] = [g >= 0 and groups[g].prunable for g in table["out_group"]]

    activations = pd.DataFrame(act_rows)
    activations["group"] = _activation_groups(activations, out_group)
    group_of = dict(zip(activations["tensor"], activations["group"]))  # tensor name -> channel group
    refused = {**_attention_operands(nodes, group_of, groups), **_foreign_operands(nodes, group_of, groups)}
    for gid, reason in refused.items():
        groups[gid] = dataclasses.replace(groups[gid], prunable=False, reason=reason)
    table["channel_prunable"] = [g >= 0 and groups[g].prunable for g in table["out_group"]]
    heads = {h.leader: h for h in find_head_groups(nodes, table)}
    _add_head_columns(table, heads)
    ops = _op_table(op_rows, group_of)
    ops["head_leader"] = [next((h.leader for h in heads.values() if h.node == n and not h.reason), "")
                          for n in ops.index]
    return ModelGraph(model=model, example_inputs=tuple(example_inputs), table=table,
                      activations=activations.drop(columns=["src"]), groups=groups, uncovered=tuple(uncovered),
                      ops=ops, heads=heads, glue=_op_table(glue_rows, group_of).assign(head_leader=""))


def _add_head_columns(table: pd.DataFrame, heads: dict[str, HeadGroup]) -> None:
    """The head geometry of every projection of a prunable attention block as table columns
    (:data:`hwsearch.graph_heads.HEAD_COLUMNS`; "" / 0 for other layers), so that
    :func:`hwsearch.core.resolve.resolve` and the batch pricer read heads from the table alone."""
    cols: dict[str, list] = {c: [] for c in HEAD_COLUMNS}
    role_of = {layer: (h, role) for h in heads.values() if not h.reason for layer, role in h.roles.items()}
    for layer in table.index:
        h, role = role_of.get(layer, (None, ""))
        cols["head_leader"].append(h.leader if h else "")
        cols["head_role"].append(role)
        for c in ("heads", "kv_heads", "head_dim", "v_head_dim"):
            cols[c].append(int(getattr(h, c)) if h else 0)
    for c, v in cols.items():
        table[c] = v


def _channel_groups(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    table: pd.DataFrame,
    ignored: set[str],
) -> tuple[dict[int, ChannelGroup], dict[str, int], dict[str, list[tuple[int, int, int]]]]:
    """Torch-Pruning's dependency groups, re-keyed by layer name.

    Returns the groups, the output group of each producer and, for each consumer, its input
    slices ``(gid, offset, expand)`` sorted by offset (see the module docstring). A group whose
    consumer columns are not one contiguous run (a permuting reshape) is marked not prunable.
    """
    name_of = {m: n for n, m in model.named_modules()}
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    except Exception as exc:
        raise ModelError(f"Torch-Pruning could not trace {type(model).__name__}: {exc}") from exc
    groups: dict[int, ChannelGroup] = {}
    out_group: dict[str, int] = {}
    in_slices: dict[str, list[tuple[int, int, int]]] = {}
    for g in _bounded_groups(dg, name_of):
        producers: list[str] = []
        consumer_idxs: dict[str, list[list[int]]] = {}
        for dep, idxs in g:
            name = name_of.get(dep.target.module)
            if name not in table.index:
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                if name not in producers:
                    producers.append(name)
            else:
                cols = sorted(int(i) for i in idxs)
                if cols not in consumer_idxs.setdefault(name, []):
                    consumer_idxs[name].append(cols)
        if not producers:
            continue
        producers.sort(key=lambda n: table.at[n, "order"])
        gid = len(groups)
        channels = int(table.at[producers[0], "out_channels"])
        prunable = not (set(producers) & ignored)
        slices: list[tuple[str, int, int]] = []
        for c, runs in consumer_idxs.items():
            for cols in runs:
                expand = len(cols) // channels
                if expand < 1 or len(cols) % channels or cols != list(range(cols[0], cols[0] + len(cols))):
                    log.warning("channel group of %s feeds %s through a non-contiguous index map; "
                                "its channels will not be pruned", producers[0], c)
                    prunable = False
                    continue
                slices.append((c, cols[0], expand))
        groups[gid] = ChannelGroup(gid, producers[0], tuple(producers), tuple(consumer_idxs), channels, prunable)
        for p in producers:
            out_group[p] = gid
        for c, offset, expand in slices:
            in_slices.setdefault(c, []).append((gid, offset, expand))
    for c in in_slices:
        in_slices[c].sort(key=lambda t: t[1])
    return groups, out_group, in_slices


_ELEMENTWISE = ("aten.add.Tensor", "aten.add_.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.div.Tensor")


def _foreign_operands(nodes: list[torch.fx.Node], group_of: dict[str, int],
                      groups: dict[int, ChannelGroup]) -> dict[int, str]:
    """Channel groups combined elementwise (a residual add, a gate) with a tensor of the same
    shape that no layer of the group produces — the model's input, an embedding, another group
    Torch-Pruning did not couple. Removing channels of such a group would leave the two operands
    of different widths, so it is refused at analysis (with this reason) rather than crashing
    when the plan is folded."""
    out: dict[int, str] = {}
    for node in nodes:
        if node.op != "call_function" or str(node.target) not in _ELEMENTWISE:
            continue
        args = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
        vals = [a.meta.get("val") for a in args]
        if len(args) != 2 or not all(isinstance(v, torch.Tensor) for v in vals) or vals[0].shape != vals[1].shape:
            continue  # a scalar or a broadcast operand (a per-channel scale keeps the channel dim)
        g = [int(group_of.get(a.name, _UNKNOWN_GROUP)) for a in args]
        if g[0] == g[1]:
            continue
        for mine, other, arg in ((g[0], g[1], args[1]), (g[1], g[0], args[0])):
            if mine >= 0 and groups[mine].prunable and mine not in out:
                what = (f"the output of channel group {groups[other].leader!r}" if other >= 0
                        else f"{arg.name!r}, which no prunable layer produces (the model input, an embedding)")
                out[mine] = (f"its channels are combined in {node.name!r} ({node.target}) with {what}; pruning them "
                             "would change the width of that tensor too (a residual stream)")
    return out


def _attention_operands(nodes: list[torch.fx.Node], group_of: dict[str, int],
                        groups: dict[int, ChannelGroup]) -> dict[int, str]:
    """Channel groups that reach an operand of an attention or matmul op (q, k, v, scores):
    their channels are split into heads by reshapes written in the model (``view(B, L, heads,
    head_dim)``) and contracted against each other, so removing single channels either breaks the
    model or silently changes what it computes. Refused at analysis with this reason (head
    pruning, :mod:`hwsearch.graph_heads`, removes whole heads consistently: the structured unit there)."""
    out: dict[int, str] = {}
    for node in nodes:
        if node.op != "call_function" or op_kind(node.target) not in ("attention", "matmul"):
            continue
        for arg in node.args[:3]:
            if not isinstance(arg, torch.fx.Node):
                continue
            g = int(group_of.get(arg.name, _UNKNOWN_GROUP))
            if g >= 0 and groups[g].prunable and g not in out:
                out[g] = (f"its channels feed {node.name!r} ({node.target}), an attention or matmul operand split "
                          "into heads; single channels cannot be removed there (remove whole heads: pattern 'head' on the "
                          "block's query projection)")
    return out


def _op_table(rows: list[dict], group_of: dict[str, int]) -> pd.DataFrame:
    """The counted non-layer ops, each with the channel group of its first input (-1: none)."""
    cols = ["node", "kind", "aten", "out_shape", "macs", "flops_other", "bytes_in", "bytes_out", "weight_bytes",
            "batch", "heads", "kv_heads", "seq_q", "seq_k", "head_dim", "input", "group"]
    df = pd.DataFrame([{**r, "group": int(group_of.get(r["input"], _UNKNOWN_GROUP))} for r in rows], columns=cols)
    return df.set_index("node")


# A dependency group larger than this is a runaway: Torch-Pruning's index mappings can cycle
# without end on some graphs (a Llama decoder's rotary embeddings in transformers 5: the group of
# q_proj never closes). Real groups hold tens to hundreds of dependencies.
_MAX_GROUP_DEPS = 1000


class _RunawayGroup(Exception):
    pass


def _bounded_groups(dg: tp.DependencyGraph, name_of: dict[nn.Module, str]):
    """Torch-Pruning's ``get_all_groups`` (same roots, same order, same de-duplication), with
    each group's growth bounded: a root whose group runs away is skipped — its layer keeps no
    channel group (weight patterns only), and a warning names it."""
    from torch_pruning.dependency import group as tp_group

    original = tp_group.Group.add_dep

    def add_dep(self, dep, idxs):  # noqa: ANN001  (Torch-Pruning's signature)
        if len(self._group) >= _MAX_GROUP_DEPS:
            raise _RunawayGroup
        return original(self, dep, idxs)

    visited: set[nn.Module] = set()
    for m in list(dg.module2node):
        if not isinstance(m, PRUNABLE_TYPES) or m in visited:
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        tp_group.Group.add_dep = add_dep
        try:
            group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except _RunawayGroup:
            log.warning("Torch-Pruning's dependency group of %s does not close (over %d dependencies); its "
                        "output channels will not be pruned", name_of.get(m, m), _MAX_GROUP_DEPS)
            continue
        finally:
            tp_group.Group.add_dep = original
        for dep, _ in group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
        yield group


def _activation_groups(acts: pd.DataFrame, out_group: dict[str, int]) -> list[int]:
    """Channel group of each tensor: a layer output takes its layer's group, any other op
    inherits its first input's group (BN, ReLU, add, pooling, flatten keep the channel dim)."""
    by_name: dict[str, int] = {}
    result = []
    for row in acts.itertuples():
        if isinstance(row.layer, str):
            g = out_group.get(row.layer, _UNKNOWN_GROUP)
        else:
            g = next((by_name[s] for s in row.src if s in by_name), _UNKNOWN_GROUP)
        by_name[row.tensor] = g
        result.append(g)
    return result
