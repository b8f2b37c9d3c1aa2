"""Graph export (targets.mcu.codegen.export_graph): the small reference model, pruned and folded,
exported with a residual add, folded BatchNorm, ReLU, a depthwise conv, mean pooling and a linear
head, compiled with arm-none-eabi-gcc and run in QEMU against PyTorch.

Emulator tests skip with the install command when arm-none-eabi-gcc or qemu-system-arm is missing.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from targets import mcu
from targets.mcu.codegen import build, export_graph

NO_TOOLS = mcu.available()
needs_emulator = pytest.mark.skipif(NO_TOOLS is not None, reason=NO_TOOLS or "")


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def pruned_small() -> tuple[nn.Module, torch.Tensor]:
    """The small reference architecture (MNIST1DNet width 8, untrained weights, random BN
    statistics) after channel pruning and unstructured / block / N:M weight sparsity, folded."""
    from hwsearch import prune
    from hwsearch.graph import analyze
    from hwsearch.core.plan import LayerChoice, Plan
    from hwsearch.zoo import MNIST1DNet

    torch.manual_seed(0)
    model = _randomise_bn(MNIST1DNet(8))
    x = torch.randn(1, 1, 40)
    g = analyze(model, x)
    plan = Plan({"stem": LayerChoice("unstructured", 0.5), "down": LayerChoice("channel", 0.5),
                 "res1": LayerChoice("unstructured", 0.7), "res2": LayerChoice("block", 0.5, block=(4, 4)),
                 "pw": LayerChoice("nm", n=2, m=4), "head": LayerChoice("unstructured", 0.6)})
    return prune.apply(g, plan, mode="fold"), x


FORMATS = {"stem": "csr", "res1": "bitmask", "res2": "block", "pw": "nm", "head": "auto"}


def test_export_writes_ops_buffers_and_flash(tmp_path, pruned_small) -> None:
    model, x = pruned_small
    res = export_graph(model, x, tmp_path / "g", formats=FORMATS)
    man = res.manifest
    assert [o["name"] for o in man["ops"]] == ["stem", "down", "res1", "res2", "add", "dw", "pw", "mean", "head"]
    kinds = {o["name"]: o for o in man["ops"]}
    assert kinds["dw"]["op"] == "dwconv2d" and kinds["add"]["kind"] == "add" and kinds["mean"]["kind"] == "mean"
    assert kinds["add"]["relu"] and kinds["stem"]["relu"] and not kinds["res2"]["relu"]  # ReLU after the add
    assert kinds["res2"]["fmt"] == "block" and kinds["pw"]["fmt"] == "nm" and kinds["stem"]["fmt"] == "csr"
    # the residual input (down's output) stays live until the add: its buffer overlaps neither branch
    t = man["tensors"]

    def span(name):
        o = kinds[name]["output_offset"]
        return o, o + kinds[name]["output_bytes"]

    for other in ("res1", "res2"):
        (a0, a1), (b0, b1) = span("down"), span(other)
        assert a1 <= b0 or b1 <= a0, other
    assert t[kinds["down"]["output"]]["live"] == [1, 4]
    assert kinds["add"]["output_offset"] == kinds["down"]["output_offset"]  # the add runs in place
    assert man["peak_sram_bytes"] == man["arena_bytes"] + man["scratch_bytes"]
    # int8 bytes live at once: down [8 x 20] + res1 [16 x 20] + res2 [8 x 20] during res2 (640), and
    # dw [8 x 20] + pw [32 x 20] during pw (800): the peak
    assert man["arena_bytes"] == 8 * 20 + 32 * 20
    assert man["param_bytes"] > man["weight_bytes"] > 0
    assert man["vs_torch"]["argmax_equal"] and man["vs_torch"]["relative_to_max"] < 0.05
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["kind"] == "hwsearch-mcu-c-graph"
    assert man["weight_bytes"] == sum(o.get("weight_bytes", 0) for o in man["ops"])
    names = {p.name for p in res.files}
    assert {"model.h", "model.c", "weights.c", "weights.h", "hw_kernels.h", "hw_kernels_s8.c", "hw_ops.c",
            "test_main.c", "reference_output.npy", "manifest.json"} <= names
    assert "int model_run(" in (tmp_path / "g" / "model.h").read_text()


@needs_emulator
def test_pruned_small_reference_int8_runs_and_matches_pytorch(tmp_path, pruned_small) -> None:
    model, x = pruned_small
    exp = export_graph(model, x, tmp_path / "g8", dtype="int8", formats=FORMATS)
    res = build(tmp_path / "g8", "cortex-m7", run=True)
    assert res.ok, res.error
    assert res.max_abs_err == 0.0                       # bit-exact with the integer reference
    with torch.no_grad():
        y = model(x)[0].numpy()
    scale = exp.manifest["tensors"][exp.manifest["output"]["tensor"]]["scale"]
    assert res.torch_max_abs_err <= max(4 * scale, 0.05 * float(np.abs(y).max()))  # int8 quantisation
    assert set(res.layer_instructions) == {o["name"] for o in exp.manifest["ops"]}
    assert all(v > 0 for v in res.layer_instructions.values())
    glue = res.instructions - sum(res.layer_instructions.values())
    assert 0 <= glue < 100                               # the per-op counts add up to model_run
    man = json.loads((tmp_path / "g8" / "manifest.json").read_text())
    assert man["measured"]["cortex-m7"]["layer_instructions"] == res.layer_instructions
    assert 0 < res.model_flash_bytes < res.text_bytes
    # a layer counted inside the model equals the same layer measured alone (kernel call only)
    from targets.mcu.plan import measure_plan_layers

    head = model.head
    with torch.no_grad():
        feats = torch.relu(model.pw_bn(model.pw(torch.randn(1, model.pw.in_channels, 20)))).mean(-1)[0]
    alone = measure_plan_layers([{"op": "linear", "weight": head.weight.detach().numpy(), "x": feats.numpy(),
                                  "bias": head.bias.detach().numpy(),
                                  "fmt": exp.manifest["ops"][-1]["fmt"]}], cpu="cortex-m7")[0]
    assert alone.ok and abs(alone.instructions - res.layer_instructions["head"]) <= 0.02 * alone.instructions
    only = build(tmp_path / "g8", "cortex-m7")  # compile only
    assert only.ok and only.instructions is None and only.text_bytes > only.weight_bytes > 0


@needs_emulator
def test_pruned_small_reference_fp32_runs_within_1e4(tmp_path, pruned_small) -> None:
    model, x = pruned_small
    export_graph(model, x, tmp_path / "g32", dtype="fp32", formats=FORMATS, depthwise_kernel="grouped")
    res = build(tmp_path / "g32", "cortex-m4", run=True)
    assert res.ok, res.error
    with torch.no_grad():
        y = model(x)[0].numpy()
    assert res.torch_max_abs_err <= 1e-4 * max(1.0, float(np.abs(y).max()))


class _Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.c(x))


class _BnAfterAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x + self.a(x)).mean(-1)


def test_unsupported_nodes_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"node 'sigmoid' \(aten.sigmoid.default\)"):
        export_graph(_Unsupported().eval(), torch.randn(1, 1, 10), tmp_path / "u")
    with pytest.raises(ValueError, match="BatchNorm is folded"):
        export_graph(_BnAfterAdd().eval(), torch.randn(1, 4, 10), tmp_path / "b")
    with pytest.raises(ValueError, match="not a layer"):
        export_graph(_ConvFlattenLinear().eval(), torch.randn(1, 2, 5, 5), tmp_path / "f", formats={"nope": "csr"})
    with pytest.raises(ValueError, match="unknown fmt 'coo'; valid: dense"):
        export_graph(_ConvFlattenLinear().eval(), torch.randn(1, 2, 5, 5), tmp_path / "f", formats={"fc": "coo"})
    with pytest.raises(ValueError, match=r"node 'max_pool2d' \(aten.max_pool2d.default\)"):
        export_graph(nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)).eval(), torch.randn(1, 3, 6, 6), tmp_path / "m")


class _ConvFlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.c(x)), 1))


@needs_emulator
def test_flatten_into_linear_permutes_columns(tmp_path) -> None:
    torch.manual_seed(1)
    model = _ConvFlattenLinear().eval()
    export_graph(model, torch.randn(1, 2, 5, 5), tmp_path / "cfl", dtype="fp32")
    res = build(tmp_path / "cfl", "cortex-m4", run=True)
    assert res.ok, res.error


@needs_emulator
def test_build_of_a_broken_or_foreign_tree_is_an_error(tmp_path) -> None:
    torch.manual_seed(2)
    exp = export_graph(_ConvFlattenLinear().eval(), torch.randn(1, 2, 5, 5), tmp_path / "t", dtype="fp32")
    (exp.out_dir / "model.c").write_text("int model_run(void) { return }\n")
    res = build(exp.out_dir)
    assert not res.ok and "build failed" in (res.error or "")
    man = json.loads((exp.out_dir / "manifest.json").read_text())
    (exp.out_dir / "manifest.json").write_text(json.dumps({**man, "kind": "something-else"}))
    res = build(exp.out_dir)
    assert not res.ok and "not an export_graph tree" in (res.error or "")


def _seq_model() -> tuple[nn.Module, torch.Tensor]:
    """A Sequential CNN: conv + BatchNorm + ReLU, a depthwise conv2d + ReLU (nested), flatten,
    dropout, a linear head with pruned columns."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU()),
                      nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 6 * 6, 10)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 1.5)
        m[6].weight[:, ::3] = 0  # pruned columns
    return m, torch.randn(1, 3, 6, 6)


def test_sequential_cnn_folds_bn_fuses_relu_and_runs_depthwise(tmp_path) -> None:
    m, x = _seq_model()
    exp = export_graph(m, x, tmp_path / "seq", dtype="fp32", formats={"6": "csr"})
    ops = exp.manifest["ops"]
    assert [(o["op"], o["relu"]) for o in ops] == [("conv2d", True), ("dwconv2d", True), ("linear", False)]
    assert [o["fmt"] for o in ops][-1] == "csr" and ops[-1]["nnz"] == 10 * 8 * 6 * 6 * 2 // 3
    if NO_TOOLS is not None:
        pytest.skip(NO_TOOLS)
    res = build(exp.out_dir, "cortex-m7", run=True)  # BN folded, flatten order kept (columns permuted)
    assert res.ok, res.error
    with torch.no_grad():
        y = m(x)[0].numpy()
    assert res.torch_max_abs_err <= 1e-4 * max(1.0, float(np.abs(y).max()))


@needs_emulator
@pytest.mark.slow
def test_sequential_cnn_int8_export_runs_bit_exact(tmp_path) -> None:
    m, x = _seq_model()
    exp = export_graph(m, x, tmp_path / "q", dtype="int8")
    res = build(exp.out_dir, "cortex-m4", run=True)
    assert res.ok and res.max_abs_err == 0.0, res.error
