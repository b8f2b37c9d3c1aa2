"""Pruning in mask and fold modes: same outputs for every pattern on models with residual adds,
depthwise and grouped convs, concatenation and flatten→linear (2-D and 1-D)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from hwsearch import collapse, prune
from hwsearch.core import patterns
from hwsearch.core.errors import PlanError
from hwsearch.graph import ModelGraph, analyze
from hwsearch.core.plan import LayerChoice, Plan
from hwsearch.core.resolve import resolve


class Net(nn.Module):
    """stem+BN → residual add → depthwise → pointwise → cat(b1, b2) → grouped conv+BN →
    cat(grouped, pointwise) → 1x1 conv → pool → flatten → linear → linear."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dim == 2 else nn.Conv1d
        bn = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        self.dim = dim
        self.stem, self.bn0 = conv(3, 16, 3, padding=1), bn(16)
        self.a1, self.a2 = conv(16, 16, 3, padding=1), conv(16, 16, 3, padding=1)
        self.dw, self.pw = conv(16, 16, 3, padding=1, groups=16), conv(16, 24, 1)
        self.b1, self.b2 = conv(24, 8, 1), conv(24, 8, 3, padding=1)
        self.gc, self.bn1 = conv(16, 32, 3, padding=1, groups=4), bn(32)
        self.m1 = conv(56, 16, 1)
        self.fc1, self.fc2 = nn.Linear(16 * 4 ** dim, 24), nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = nn.functional.adaptive_avg_pool2d if self.dim == 2 else nn.functional.adaptive_avg_pool1d
        x = torch.relu(self.bn0(self.stem(x)))
        x = x + self.a2(torch.relu(self.a1(x)))
        p = torch.relu(self.pw(torch.relu(self.dw(x))))
        c = torch.cat([torch.relu(self.b1(p)), torch.relu(self.b2(p))], 1)
        c = torch.relu(self.bn1(self.gc(c)))
        x = torch.relu(self.m1(torch.cat([c, p], 1)))
        return self.fc2(torch.relu(self.fc1(pool(x, 4).flatten(1))))


def _randomise_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()


_GRAPHS: dict[int, tuple[ModelGraph, torch.Tensor]] = {}


def _graph(dim: int) -> tuple[ModelGraph, torch.Tensor]:
    if dim not in _GRAPHS:
        torch.manual_seed(dim)
        model = Net(dim)
        _randomise_bn(model)
        x = torch.randn(2, 3, *([12] * dim))
        _GRAPHS[dim] = (analyze(model, x), x)
    return _GRAPHS[dim]


def _leaders(g: ModelGraph) -> list[str]:
    t = g.table
    return [n for n in t.index if bool(t.at[n, "group_leader"]) and bool(t.at[n, "channel_prunable"])]


def _plan(g: ModelGraph, kind: str) -> Plan:
    t = g.table
    if kind == "channel":
        return Plan({n: LayerChoice("channel", 0.5) for n in _leaders(g)})
    if kind == "unstructured":
        return Plan({n: LayerChoice("unstructured", 0.7) for n in t.index})
    if kind == "nm":
        return Plan({n: LayerChoice("nm", n=2, m=4) for n in t.index
                     if (int(t.at[n, "weight_params"]) // int(t.at[n, "out_channels"])) % 4 == 0})
    if kind == "block":
        return Plan({n: LayerChoice("block", 0.5, block=(2, 2)) for n in t.index
                     if int(t.at[n, "out_channels"]) % 2 == 0
                     and (int(t.at[n, "weight_params"]) // int(t.at[n, "out_channels"])) % 2 == 0})
    if kind == "dense":
        return Plan({})
    # mixed: channel groups pruned and weight patterns on the remaining weights
    choices = {n: LayerChoice("channel", 0.5) for n in _leaders(g)}
    choices.update({"a2": LayerChoice("unstructured", 0.6), "dw": LayerChoice("unstructured", 0.3),
                    "m1": LayerChoice("nm", n=2, m=4), "fc2": LayerChoice("block", 0.5, block=(2, 4))})
    return Plan(choices)


@pytest.mark.parametrize("dim", [2, 1])
@pytest.mark.parametrize("kind", ["dense", "channel", "unstructured", "nm", "block", "mixed"])
def test_fold_and_mask_agree(dim: int, kind: str) -> None:
    g, x = _graph(dim)
    plan = _plan(g, kind)
    before = {k: v.clone() for k, v in g.model.state_dict().items()}
    dec = prune.decide(g, plan)
    masked = prune.apply(g, dec, mode="mask")
    folded = prune.apply(g, dec, mode="fold")
    with torch.no_grad():
        ref = g.model(x)
        ym, yf = masked(x), folded(x)
        yfun = torch.func.functional_call(g.model, prune.masked_state(g, dec), (x,))
    assert torch.allclose(ym, yf, atol=1e-5), (ym - yf).abs().max()
    assert torch.allclose(ym, yfun, atol=1e-6)
    for k, v in g.model.state_dict().items():
        assert torch.equal(v, before[k]), f"original model changed at {k}"
    n_orig = sum(p.numel() for p in g.model.parameters())
    n_fold = sum(p.numel() for p in folded.parameters())
    if kind in ("channel", "mixed"):
        assert n_fold < 0.6 * n_orig
        assert not torch.allclose(ym, ref, atol=1e-3)
    elif kind == "dense":
        assert n_fold == n_orig and torch.allclose(yf, ref, atol=1e-6)
    else:
        assert n_fold == n_orig
        assert not torch.allclose(ym, ref, atol=1e-3)
    # folded weights have exactly the resolved number of nonzeros (channels removed, zeros baked)
    mods = dict(folded.named_modules())
    for layer in plan:
        res = dec.resolved.loc[layer]
        w = mods[layer].weight
        if res["pattern"] in ("unstructured", "nm", "block"):
            assert int((w != 0).sum()) == int(res["nnz"]), layer
        assert w.numel() == int(res["dense_weights"]), layer


@pytest.mark.parametrize("dim", [2, 1])
def test_nm_compressed_runs_the_same(dim: int) -> None:
    g, x = _graph(dim)
    plan = _plan(g, "mixed")
    dec = prune.decide(g, plan)
    folded = prune.apply(g, dec, mode="fold")
    packed = prune.nm_compressed(folded, dec)
    assert set(packed) == {n for n in plan if plan[n].pattern == "nm"} and packed
    rebuilt = prune.apply(g, dec, mode="fold")
    mods = dict(rebuilt.named_modules())
    with torch.no_grad():
        for layer, c in packed.items():
            w = mods[layer].weight
            assert c.values.shape == (w.shape[0], w[0].numel() // 2)
            w.copy_(patterns.nm_decompress(c).reshape(w.shape))
        assert torch.allclose(rebuilt(x), folded(x), atol=1e-6)
    with pytest.raises(PlanError, match="folded"):
        prune.nm_compressed(g.model, dec)


def test_mask_mode_trains_and_masked_weights_stay_zero() -> None:
    g, x = _graph(2)
    plan = _plan(g, "mixed")
    dec = prune.decide(g, plan)
    model = prune.apply(g, dec, mode="mask").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    y = torch.randint(0, 10, (x.shape[0],))
    mods = dict(model.named_modules())
    start = {n: mods[n].weight.detach().clone() for n in dec.masks}
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    changed = 0
    for layer, mask in dec.masks.items():
        w = mods[layer].weight.detach()
        assert bool((w[~mask] == 0).all()), f"masked weights of {layer} moved"
        changed += int((w[mask] != start[layer][mask]).sum())
    assert changed > 0  # training did update the kept weights


def test_concat_slices_and_grouped_conv_rules() -> None:
    g, x = _graph(2)
    t = g.table
    gid = {n: int(t.at[n, "out_group"]) for n in t.index}
    assert t.at["gc", "in_slices"] == ((gid["b1"], 0, 1), (gid["b2"], 8, 1))
    assert t.at["m1", "in_slices"] == ((gid["gc"], 0, 1), (gid["pw"], 32, 1))
    assert t.at["fc1", "in_slices"] == ((gid["m1"], 0, 16),)
    # pruning only one concat branch would leave the grouped conv unbalanced
    with pytest.raises(PlanError, match="grouped conv 'gc'"):
        resolve(t, g.groups, Plan({"b1": LayerChoice("channel", 0.5)}))
    plan = Plan({"b1": LayerChoice("channel", 0.5), "b2": LayerChoice("channel", 0.5),
                 "pw": LayerChoice("channel", 0.5)})
    res = resolve(t, g.groups, plan)
    assert res.at["gc", "kept_in"] == 8 and res.at["m1", "kept_in"] == 32 + 16  # 24 · 0.5 rounds to a multiple of 8
    folded = prune.apply(g, plan, mode="fold")
    assert (folded.gc.in_channels, folded.gc.groups, folded.gc.weight.shape[1]) == (8, 4, 2)
    assert folded.m1.in_channels == 48
    assert torch.allclose(folded(x), prune.apply(g, plan, mode="mask")(x), atol=1e-5)
    # the grouped conv as producer keeps the same number of channels in each of its 4 groups
    dec = prune.decide(g, Plan({"gc": LayerChoice("channel", 0.5)}))
    per_group = torch.bincount(dec.keep_out["gc"] // 8, minlength=4)
    assert per_group.tolist() == [4, 4, 4, 4]


def test_depthwise_follows_its_group() -> None:
    g, _ = _graph(2)
    res = resolve(g.table, g.groups, Plan({"stem": LayerChoice("channel", 0.5)}))
    assert res.at["dw", "kept_out"] == res.at["dw", "kept_in"] == 8
    assert res.at["dw", "dense_weights"] == 8 * 9
    assert res.at["a1", "kept_in"] == 8 and res.at["pw", "kept_in"] == 8


def test_global_plan_threshold_and_min_density() -> None:
    g, _ = _graph(2)
    t = g.table
    total = int(t["weight_params"].sum())
    plan = prune.global_plan(g, 0.9)
    dec = prune.decide(g, plan)
    kept = sum(int(dec.masks[n].sum()) if n in dec.masks else int(t.at[n, "weight_params"]) for n in t.index)
    assert abs(kept - round(0.1 * total)) <= len(t)
    # the global rule: every kept weight scores at least as high as every pruned one
    # (a layer the threshold empties keeps its single best weight: a plan cannot empty a layer)
    mods = dict(g.model.named_modules())
    w = {n: mods[n].weight.detach().abs() for n in dec.masks}
    emptied = [n for n in dec.masks if int(dec.masks[n].sum()) == 1]
    kept_min = min(float(w[n][dec.masks[n]].min()) for n in dec.masks if n not in emptied)
    pruned_max = max(float(w[n][~dec.masks[n]].max()) for n in dec.masks if (~dec.masks[n]).any())
    assert kept_min >= pruned_max
    assert all(float(w[n].max()) <= kept_min for n in emptied)
    # the floor binds on the layers the threshold leaves below it, and the total is still met
    floored = prune.global_plan(g, 0.9, min_density=0.08)
    res = resolve(t, g.groups, floored, min_density=0.08)
    names = collapse.floored_layers(res)
    assert names and set(names) <= set(t.index)
    assert all(res.at[n, "weight_density"] >= 0.08 - 1e-9 for n in t.index)
    dec_f = prune.decide(g, floored, min_density=0.08)
    assert collapse.floored_layers(dec_f) == names
    kept_f = sum(int(dec_f.masks[n].sum()) for n in dec_f.masks)
    assert abs(kept_f - round(0.1 * total)) <= len(t)
    with pytest.raises(PlanError, match="min_density"):
        prune.global_plan(g, 0.99, min_density=0.5)


def test_channel_floor_binds_and_errors() -> None:
    g, _ = _graph(2)
    res = resolve(g.table, g.groups, Plan({"pw": LayerChoice("channel", 0.9)}), min_density=0.5)
    assert res.at["pw", "kept_out"] == 16 and bool(res.at["pw", "min_density_binds"])
    assert collapse.floored_layers(res) == ["pw"]
    with pytest.raises(PlanError, match="needs data"):
        prune.decide(g, Plan({"pw": LayerChoice("unstructured", 0.5)}), criterion="snip")
    with pytest.raises(PlanError, match="unknown mode"):
        prune.apply(g, Plan({}), mode="inplace")
    with pytest.raises(PlanError, match="give the channel ratio on"):
        resolve(g.table, g.groups, Plan({"a2": LayerChoice("channel", 0.5)}))
