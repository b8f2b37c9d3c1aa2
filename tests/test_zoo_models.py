"""The zoo of real architectures (issue #13): each builds untrained, runs forward with the right
output shape and is analysed with the layer count found by hand; the synthetic token task is
deterministic and balanced; a few training steps lower the loss. Training to the cached
accuracy is not run here (about a minute per model)."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwsearch.graph import analyze
from hwsearch.zoo import load_callable, train
from hwsearch.zoo2d import ResNetDigits, digits_data, resnet_digits
from hwsearch.zoo_vit import vit_digits

_NEEDS_TRANSFORMERS = 'needs Hugging Face transformers: pip install -e ".[transformers]"'


def _zoo_text():
    try:
        return importlib.import_module("hwsearch.zoo_text")
    except ImportError:
        pytest.skip(_NEEDS_TRANSFORMERS)


def _build(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(untrained model, example input, a batch of 5 inputs) for a zoo model."""
    if name == "resnet":
        m, ex = resnet_digits(trained=False)
        return m, ex, digits_data().x_val[:5]
    if name == "vit":
        m, ex = vit_digits(trained=False)
        return m, ex, digits_data().x_val[:5]
    zt = _zoo_text()
    m, ex = getattr(zt, f"{name}_tokens")(trained=False)
    return m, ex, zt.token_data().x_val[:5]


# (model, classes, prunable conv/linear layers that analyze finds, counted from the definitions)
ZOO = [("resnet", 10, 1 + 4 * 2 * 2 + 3 + 1),   # stem, 16 block convs, 3 projections, fc
       ("vit", 10, 1 + 3 * 6 + 1),              # patch embedding, q/k/v/out/fc1/fc2 per block, head
       ("bert", 2, 2 * 6 + 2),                  # q/k/v/attn-out/intermediate/out per layer, pooler, classifier
       ("llama", 2, 2 * 7 + 1)]                 # q/k/v/o/gate/up/down per layer, score


@pytest.mark.parametrize("name,classes,layers", ZOO, ids=[z[0] for z in ZOO])
def test_builds_untrained_with_right_output(name: str, classes: int, layers: int) -> None:
    model, ex, batch = _build(name)
    assert not model.training
    with torch.no_grad():
        out = model(batch)
        assert tuple(model(ex).shape) == (1, classes)
    assert tuple(out.shape) == (5, classes) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()) == layers


@pytest.mark.parametrize("name,classes,layers", ZOO, ids=[z[0] for z in ZOO])
def test_analyze_finds_every_prunable_layer(name: str, classes: int, layers: int) -> None:
    model, ex, _ = _build(name)
    g = analyze(model, ex)
    assert len(g.table) == layers
    assert set(g.table["op"]) <= {"conv2d", "linear"}
    assert g.groups, "a zoo model must offer at least one channel group"


# the structural unit each model offers channel pruning on, and the groups refused with a reason
CHANNEL = {"resnet": ("layer1.0.conv1", None),
           "vit": ("blocks.0.fc1", "blocks.0.attn.q"),
           "bert": ("hf.bert.encoder.layer.0.intermediate.dense", "hf.bert.encoder.layer.0.attention.self.query"),
           "llama": ("hf.model.layers.0.mlp.gate_proj", "hf.model.layers.0.self_attn.o_proj")}


@pytest.mark.parametrize("name", [z[0] for z in ZOO])
def test_channel_pruning_folds_to_the_masked_outputs_and_attention_widths_are_refused(name: str) -> None:
    """Every prunable channel group of every zoo model, pruned by half at once, folds to the
    masked model's outputs (1e-5); a layer whose channels feed attention heads or a residual
    stream is refused with the reason instead of crashing or silently changing the outputs. The
    Llama decoder's attention groups do not close in Torch-Pruning (a runaway): analysis bounds
    them and leaves those layers to weight patterns, and still finishes."""
    from hwsearch import prune
    from hwsearch.core.errors import PlanError
    from hwsearch.core.plan import LayerChoice, Plan

    model, ex, batch = _build(name)
    g = analyze(model, ex)
    prunable, refused = CHANNEL[name]
    leaders = [gr.leader for gr in g.groups.values() if gr.prunable]
    assert prunable in leaders
    dec = prune.decide(g, Plan({leader: LayerChoice("channel", 0.5) for leader in leaders}))
    masked, folded = prune.apply(g, dec, mode="mask"), prune.apply(g, dec, mode="fold")
    with torch.no_grad():
        torch.testing.assert_close(folded(batch), masked(batch), atol=1e-5, rtol=1e-5)
    if refused is not None:
        with pytest.raises(PlanError, match=f"{refused!r} cannot take channel pruning"):
            prune.decide(g, Plan({refused: LayerChoice("channel", 0.5)}))


def test_token_task_deterministic_and_balanced() -> None:
    zt = _zoo_text()
    a, b, c = zt.token_data(seed=0), zt.token_data(seed=0), zt.token_data(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.x_train.dtype == torch.int64 and tuple(a.x_train.shape) == (4000, zt.SEQ_LEN)
    assert tuple(a.x_val.shape) == (1000, zt.SEQ_LEN)
    for x, y in ((a.x_train, a.y_train), (a.x_val, a.y_val)):
        assert 0.45 < y.float().mean().item() < 0.55
        assert ((x == zt.FIRST).sum(1) == 1).all() and ((x == zt.SECOND).sum(1) == 1).all()
        assert (x[:, 0] == zt.CLS).all() and int(x.min()) >= zt.CLS and int(x.max()) < zt.VOCAB
        first, second = (x == zt.FIRST).float().argmax(1), (x == zt.SECOND).float().argmax(1)
        assert torch.equal((first < second).long(), y)


def test_zoo_text_without_transformers_names_the_extra() -> None:
    # a subprocess with transformers made unimportable (sys.modules entry None): the real
    # import path of hwsearch.zoo_text, only the package is absent
    code = ("import sys; sys.modules['transformers'] = None\n"
            "try:\n    import hwsearch.zoo_text\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "IMPORTERROR" in out and 'pip install -e ".[transformers]"' in out


@pytest.mark.parametrize("spec", ["hwsearch.zoo2d:resnet_digits", "hwsearch.zoo_vit:vit_digits",
                                  "hwsearch.zoo2d:digits_data"])
def test_model_specs_resolve(spec: str) -> None:
    assert callable(load_callable(spec, "model"))


def test_a_few_training_steps_lower_the_loss() -> None:
    data = digits_data()
    torch.manual_seed(0)
    model = ResNetDigits(width=4).eval()  # the smallest: about 6 s for 30 steps
    x, y = data.x_train[:256], data.y_train[:256]
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    train(model, data, steps=30, lr=1e-2, batch_size=64)
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert after < 0.7 * before


def test_resnet_width_scales_channels() -> None:
    m = ResNetDigits(width=8)
    assert m.stem.out_channels == 8 and m.layer4[1].conv2.out_channels == 64 and m.fc.in_features == 64
    assert m.layer1[0].downsample is None and m.layer2[0].downsample is not None
