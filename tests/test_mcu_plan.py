"""MCU plan measurement: the layers of a folded plan of the small reference model measured in the
emulator, N:M masks grouped along input channels, depthwise conv1d on the depthwise kernel.

Emulator tests skip with the install command when arm-none-eabi-gcc or qemu-system-arm is missing.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from targets import mcu
from targets.mcu.plan import measure_plan_layers

NO_TOOLS = mcu.available()
needs_emulator = pytest.mark.skipif(NO_TOOLS is not None, reason=NO_TOOLS or "")


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics (an untrained model's are identities)."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def nm_mask_along_input_channels(w: np.ndarray, n: int = 2, m: int = 4) -> np.ndarray:
    """Keep-mask of a conv weight ``[co, ci, *k]``: the ``n`` largest of every ``m`` consecutive
    input channels at each (output channel, kernel tap) — NVIDIA ASP's layout."""
    wl = np.moveaxis(np.abs(w), 1, -1)                       # [co, *k, ci]
    g = wl.reshape(*wl.shape[:-1], wl.shape[-1] // m, m)
    order = np.argsort(-g, axis=-1, kind="stable")
    keep = np.zeros_like(g, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(wl.shape), -1, 1)


def _small_reference_folded():
    """The small reference architecture (MNIST1DNet, width 8; weights untrained: the counts do not
    depend on them) pruned by a plan using every pattern, folded."""
    from targets.mcu.ops import mcu_fmt, mcu_op
    from costmodels.memory import layer_storage
    from hwsearch import prune
    from hwsearch.graph import analyze
    from hwsearch.core.plan import LayerChoice, Plan
    from hwsearch.zoo import MNIST1DNet

    torch.manual_seed(0)
    model = randomise_bn(MNIST1DNet(8))
    x = torch.randn(1, 1, 40)
    g = analyze(model, x)
    plan = Plan({"stem": LayerChoice("unstructured", 0.6), "down": LayerChoice("channel", 0.5),
                 "res1": LayerChoice("nm", n=2, m=4), "res2": LayerChoice("block", 0.5, block=(4, 4)),
                 "pw": LayerChoice("nm", n=2, m=4), "head": LayerChoice("unstructured", 0.5)})
    dec = prune.decide(g, plan)
    folded = prune.apply(g, dec, mode="fold")
    res = dec.resolved
    storage = layer_storage(res, "int8")
    mods = dict(folded.named_modules())
    inputs = {}
    hooks = [mods[n].register_forward_hook(lambda mod, i, o, n=n: inputs.__setitem__(n, i[0][0].detach().numpy()))
             for n in res.index]
    with torch.no_grad():
        folded(x)
    for h in hooks:
        h.remove()
    layers = []
    for name, r in res.iterrows():
        mod = mods[name]
        d = {"op": mcu_op(r), "weight": mod.weight.detach().numpy(), "x": inputs[name],
             "bias": None if mod.bias is None else mod.bias.detach().numpy(),
             "fmt": mcu_fmt(str(r["pattern"]), str(storage.at[name, "fmt"])), "n": int(r["n"]), "m": int(r["m"]),
             "block": tuple(r["block"]), "name": name}
        if d["op"] != "linear":
            d.update(stride=mod.stride, padding=mod.padding, groups=mod.groups)
        layers.append(d)
    return layers, res, folded


@needs_emulator
def test_measure_plan_layers_on_the_small_reference_model() -> None:
    from costmodels.mcu import default_model
    from costmodels.mcu_cost import layer_shape

    layers, res, _ = _small_reference_folded()
    t0 = time.perf_counter()
    rows = measure_plan_layers(layers, cpu="cortex-m7")
    elapsed = time.perf_counter() - t0
    assert len(rows) == len(layers)
    for d, m in zip(layers, rows):
        assert m.ok, (d["name"], m.error)
        assert m.op == d["op"] and m.fmt == d["fmt"] and m.cpu == "cortex-m7"
        assert m.max_abs_err == 0.0
    fmts = {d["name"]: m.fmt for d, m in zip(layers, rows)}
    assert fmts["res1"] == "nm" and fmts["res2"] == "block" and fmts["pw"] == "nm" and fmts["down"] == "dense"
    # hwsearch's N:M and block masks of k=3 convs fit the kernels' (k, in_channel) order exactly
    for d, m in zip(layers, rows):
        if m.fmt == "block":
            assert m.stats["kept_blocks"] * 16 == np.count_nonzero(d["weight"]), d["name"]
        if m.fmt == "nm":
            assert m.stats["stored"] == d["weight"].size // 2
    assert elapsed < 0.5 * len(layers) + 1.0, f"{elapsed:.2f} s for {len(layers)} layers"
    # the shipped instruction model prices every one of them within 10 %
    model = default_model()
    for (name, r), m in zip(res.iterrows(), rows):
        shape = layer_shape(r, int(r["kept_in"]), int(r["kept_out"]))
        shape.update({k: v for k, v in m.shape.items() if k in ("n", "m", "block_h", "block_w")})
        pred = model.predict(m.op, m.fmt, "int8", shape, m.density, cpu="cortex-m7", nnz=m.stats["nnz"])
        assert abs(pred - m.instructions) / m.instructions <= 0.10, (name, m.fmt, pred, m.instructions)


@needs_emulator
@pytest.mark.parametrize("op,w_shape,x_shape,kw", [
    ("conv1d", (8, 16, 3), (16, 12), {"padding": 1}),
    ("conv2d", (8, 8, 3, 3), (8, 6, 6), {"padding": 1}),
])
def test_nm_mask_grouped_along_input_channels_is_measured(op, w_shape, x_shape, kw) -> None:
    w = _rand(w_shape)
    wp = w * nm_mask_along_input_channels(w)
    m = mcu.measure_layer(op, wp, _rand(x_shape, 1), fmt="nm", cpu="cortex-m4", **kw)
    assert m.ok, m.error
    assert m.stats["stored"] == w.size // 2 and m.max_abs_err == 0.0
    # a mask grouped along PyTorch's flattened [ci, k] is not N:M in the kernels' order
    flat = np.abs(w).reshape(w.shape[0], -1, 4)
    keep = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(keep, np.argsort(-flat, axis=-1)[..., :2], True, axis=-1)
    bad = mcu.measure_layer(op, w * keep.reshape(w.shape), _rand(x_shape, 1), fmt="nm", cpu="cortex-m4", **kw)
    assert bad.error and "input channels" in bad.error


@needs_emulator
def test_depthwise_conv1d_runs_on_the_depthwise_kernel() -> None:
    w, x = _rand((16, 1, 3)), _rand((16, 20), 1)
    grouped, dw = measure_plan_layers(
        [{"op": "conv1d", "weight": w, "x": x, "padding": 1, "groups": 16},
         {"op": "dwconv2d", "weight": w, "x": x, "padding": 1}], cpu="cortex-m4", jobs=1)
    assert grouped.ok and dw.ok, (grouped.error, dw.error)
    assert dw.shape["in_h"] == 1 and dw.shape["kernel_w"] == 3 and dw.shape["pad_w"] == 1
    assert dw.instructions < grouped.instructions  # one kernel call per pixel, not one per channel


def test_bad_layer_dicts_raise_before_building() -> None:
    with pytest.raises(ValueError, match="lacks"):
        measure_plan_layers([{"op": "linear", "weight": np.ones((2, 4))}], cpu="cortex-m4")
    with pytest.raises(ValueError, match="unknown keys"):
        measure_plan_layers([{"op": "linear", "weight": np.ones((2, 4)), "x": np.ones(4), "sparsity": 1}],
                            cpu="cortex-m4")
    with pytest.raises(ValueError, match="unknown fmt"):
        measure_plan_layers([{"op": "linear", "weight": np.ones((2, 4)), "x": np.ones(4), "fmt": "coo"}],
                            cpu="cortex-m4")
    with pytest.raises(ValueError, match="unknown cpu"):
        measure_plan_layers([], cpu="cortex-m0")


@needs_emulator
def test_a_failing_layer_is_a_record_and_the_rest_are_measured() -> None:
    w = _rand((8, 16))
    rows = measure_plan_layers([{"op": "linear", "weight": w, "x": _rand(16, 1), "fmt": "nm"},   # not 2:4
                                {"op": "linear", "weight": w, "x": _rand(16, 1)}], cpu="cortex-m4")
    assert rows[0].error and "not 2:4" in rows[0].error
    assert rows[1].ok


def test_conv1d_geometry_takes_pytorch_1_tuples() -> None:
    from targets.mcu.ops import geometry, scratch_bytes

    g = geometry("conv1d", (8, 4, 3), (4, 20), stride=(2,), padding=(1,))   # as nn.Conv1d keeps them
    assert (g.stride_w, g.pad_w, g.out_w) == (2, 1, 10)
    assert scratch_bytes(g, "int8") == 3 * 4 + 8


def test_the_backend_builds_the_same_layers_as_the_cost_model_prices() -> None:
    """targets.measure's mcu-qemu backend picks each layer's kernel op and format as the MCU cost
    model does (costmodels.memory storage formats), with the folded layer's weights."""
    from costmodels.memory import layer_storage
    from targets.measure._mcu import plan_layers, storage_formats

    layers, res, folded = _small_reference_folded()
    assert storage_formats(res) == layer_storage(res, "int8")["fmt"].to_dict()
    built = plan_layers(folded, res)
    assert [d["name"] for d in built] == [d["name"] for d in layers]
    for mine, theirs in zip(built, layers):
        assert (mine["op"], mine["fmt"]) == (theirs["op"], theirs["fmt"])
        assert np.array_equal(mine["weight"], theirs["weight"]) and mine["x"].shape == theirs["x"].shape
