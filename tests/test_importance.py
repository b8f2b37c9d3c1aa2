"""Importance criteria: one contract suite over every registered criterion, planted rankings,
SynFlow's data-free iteration and IMP's rewinding."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn

from hwsearch import importance, lottery
from hwsearch.core.errors import PlanError

# ------------------------------------------------------------------------------ fixtures


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4, bias=False)
        self.fc2 = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def planted() -> Tiny:
    """fc1[0, 0] = 2 carries input 0, which decides the class, to hidden unit 0, which votes
    for the classes through fc2[:, 0] = (-1, 1): important by every criterion. fc1[1, 3] = 0.05
    reads input 3, which is always 0: no gradient, no curvature, tiny magnitude, and (for the
    data-free SynFlow) a small weight whose unit has small outgoing weights."""
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():
        m.fc1.weight.normal_(0, 0.1)
        m.fc2.weight.normal_(0, 0.1)
        m.fc1.weight[0, 0] = 2.0
        m.fc1.weight[1, 3] = 0.05
        m.fc2.weight[:, 0] = torch.tensor([-1.0, 1.0])
    return m


def _tiny_data() -> importance.DataBatches:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (128,), generator=g)
    x = torch.randn(128, 4, generator=g) * 0.3
    x[:, 0] = y.float() + 0.1 * torch.randn(128, generator=g)
    x[:, 3] = 0.0

    def data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(4):
            yield x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]
    return data


def _sgd_train(epochs: int = 2, lr: float = 0.2, record: dict | None = None) -> lottery.TrainFn:
    """Plain SGD, one step per batch; optionally records fc1/fc2 weights before each step of the
    first call (``record[step] = {...}``)."""
    calls = {"n": 0}

    def train(model: nn.Module, data: importance.DataBatches) -> None:
        calls["n"] += 1
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        step = 0
        for _ in range(epochs):
            for x, y in data():
                if record is not None and calls["n"] == 1:
                    record[step] = {n: dict(model.named_modules())[n].weight.detach().clone() for n in ("fc1", "fc2")}
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                step += 1
        if record is not None and calls["n"] == 1:
            record[step] = {n: dict(model.named_modules())[n].weight.detach().clone() for n in ("fc1", "fc2")}
    return train


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.c1(x))), 2)
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def _cnn_data() -> importance.DataBatches:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(48, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() + (x[:, 0, 4:].mean((1, 2)) > 0).long()

    def data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(3):
            yield x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]
    return data


def _configured(name: str) -> importance.Criterion:
    if name == "imp":
        return importance.get("imp", train=_sgd_train(epochs=1), rounds=2)
    if name == "synflow":
        return importance.get("synflow", iterations=5)
    if name == "obd":
        return importance.get("obd", max_samples=32)
    return importance.get(name)


# ------------------------------------------------------------------------------ contract

@pytest.mark.parametrize("name", importance.names())
def test_contract_shape_sign_untouched_deterministic(name: str) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    layers = ["c1", "c2", "fc"]
    data = _cnn_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    crit = _configured(name)
    kwargs = {"example_inputs": (torch.zeros(1, 1, 8, 8),)}
    if crit.iterative:
        kwargs["sparsity"] = 0.8
    scores = crit.scores(model, layers, data, **kwargs)
    assert list(scores) == layers
    mods = dict(model.named_modules())
    for n in layers:
        s = scores[n]
        assert s.shape == mods[n].weight.shape, n
        assert s.is_floating_point() and s.device.type == "cpu"
        assert bool(torch.isfinite(s).all()) and bool((s >= 0).all()), n
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} modified {k}"
    again = _configured(name).scores(model, layers, data, **kwargs)
    for n in layers:
        assert torch.equal(scores[n], again[n]), f"{name} is not deterministic on {n}"
    if crit.needs_data:
        with pytest.raises(PlanError, match="needs"):
            crit.scores(model, layers, None, **kwargs)


# ------------------------------------------------------------------------------ planted ranking

@pytest.mark.parametrize("name,params", [
    ("magnitude", {}), ("taylor", {}), ("snip", {}), ("grasp", {}), ("obd", {}),
    ("obd", {"hessian": "hutchinson", "probes": 64}), ("synflow", {"iterations": 20}),
    ("imp", {"rounds": 2}),
])  # 'random' ranks nothing by design
def test_planted_important_weight_outranks_irrelevant_one(name: str, params: dict) -> None:
    model = planted()
    if name == "imp":
        params = {**params, "train": _sgd_train()}
    crit = importance.get(name, **params)
    kwargs: dict = {"example_inputs": (torch.zeros(1, 4),)}
    if crit.iterative:
        kwargs["sparsity"] = 0.75
    s = crit.scores(model, ["fc1", "fc2"], _tiny_data() if crit.needs_data else None, **kwargs)
    important, irrelevant = float(s["fc1"][0, 0]), float(s["fc1"][1, 3])
    assert important > irrelevant, (name, important, irrelevant)
    if name not in ("magnitude", "synflow", "imp", "grasp"):
        assert irrelevant == 0.0  # no gradient reaches a weight whose input is always 0


def test_grasp_keeps_the_papers_order() -> None:
    """Paper: remove the largest S = -w·Hg. Returned keep-scores are -S shifted, so the
    ranking is reversed w.r.t. S: check against a direct computation."""
    model = planted()
    data = _tiny_data()
    s = importance.get("grasp").scores(model, ["fc1", "fc2"], data)
    ws = [model.fc1.weight, model.fc2.weight]
    g = [torch.zeros_like(w) for w in ws]
    for x, y in data():
        for a, b in zip(g, torch.autograd.grad(nn.functional.cross_entropy(model(x) / 200, y), ws)):
            a += b
    hg = [torch.zeros_like(w) for w in ws]
    for x, y in data():
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(x) / 200, y), ws, create_graph=True)
        z = sum((a * b).sum() for a, b in zip(grads, g))
        for a, b in zip(hg, torch.autograd.grad(z, ws)):
            a += b
    paper_s = torch.cat([(-w.detach() * h).flatten() for w, h in zip(ws, hg)])
    ours = torch.cat([s["fc1"].flatten(), s["fc2"].flatten()])
    assert torch.equal(torch.argsort(ours, descending=True, stable=True)[:6],
                       torch.argsort(paper_s, descending=False, stable=True)[:6])


# ------------------------------------------------------------------------------ SynFlow

def test_synflow_is_data_free_and_iterative() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    layers = ["c1", "c2", "fc"]
    crit = importance.get("synflow", iterations=10)
    scores = crit.scores(model, layers, None, example_inputs=(torch.zeros(1, 1, 8, 8),), sparsity=0.9)
    total = sum(s.numel() for s in scores.values())
    survivors = sum(int((s >= 10).sum()) for s in scores.values())
    assert survivors == round(0.1 * total)  # tier 10 = survived all 10 rounds
    keep = importance.global_keep(scores, 0.1)
    assert all(torch.equal(keep[n], scores[n] >= 10) for n in layers)
    # single-shot without a target sparsity: |w · dR/dw| of the linearised network
    one = crit.scores(model, layers, None, example_inputs=(torch.zeros(1, 1, 8, 8),))
    assert bool((one["c1"] > 0).all())
    with pytest.raises(PlanError, match="input shape"):
        crit.scores(model, layers, None)


def test_synflow_single_round_matches_closed_form_on_linear_chain() -> None:
    model = planted()
    s = importance.get("synflow").scores(model, ["fc1", "fc2"], None, example_inputs=(torch.zeros(1, 4),))
    w1, w2 = model.fc1.weight.detach().abs().double(), model.fc2.weight.detach().abs().double()
    # R = 1ᵀ|W2||W1|1: dR/dW1[i, j] = Σ_k |W2[k, i]|, dR/dW2[k, i] = Σ_j |W1[i, j]|
    expect1 = w1 * w2.sum(0)[:, None]
    expect2 = w2 * w1.sum(1)[None, :]
    assert torch.allclose(s["fc1"].double(), expect1, rtol=1e-5)
    assert torch.allclose(s["fc2"].double(), expect2, rtol=1e-5)


def test_synflow_ignores_biases_and_batchnorm_shifts() -> None:
    """R sums |weight| products over paths: biases and BN shifts must not add flow (with them,
    iterative SynFlow empties early layers of default-initialised networks)."""
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.bias.normal_()
    plain = SmallCNN()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in (plain.c1, plain.c2, plain.fc):
            m.bias.zero_()
        plain.bn.running_mean.zero_()
        plain.bn.bias.zero_()
    crit = importance.get("synflow", iterations=3)
    ex = (torch.zeros(1, 1, 8, 8),)
    a = crit.scores(model, ["c1", "c2", "fc"], None, example_inputs=ex, sparsity=0.9)
    b = crit.scores(plain, ["c1", "c2", "fc"], None, example_inputs=ex, sparsity=0.9)
    for n in a:
        assert torch.equal(a[n], b[n]), n


# ------------------------------------------------------------------------------ IMP

def test_imp_rewinds_kept_weights_to_the_rewind_point() -> None:
    model = planted()
    record: dict[int, dict[str, torch.Tensor]] = {}
    ticket = lottery.imp(model, ["fc1", "fc2"], _sgd_train(epochs=2, record=record), _tiny_data(),
                         sparsity=0.75, rounds=2, rewind_iteration=3)
    assert ticket.rewind_step == 3
    total = sum(m.numel() for m in ticket.masks.values())
    assert sum(int(m.sum()) for m in ticket.masks.values()) == round(0.25 * total)
    assert ticket.densities == pytest.approx((0.5, 0.25), abs=0.03)
    for n in ("fc1", "fc2"):
        mask = ticket.masks[n]
        assert torch.equal(ticket.weights[n][mask], record[3][n][mask])
        assert bool((ticket.weights[n][~mask] == 0).all())
        assert torch.equal(ticket.rewind_state[f"{n}.weight"], record[3][n])
    # the rewind point is neither the initialisation nor the end of training
    assert not torch.equal(record[3]["fc1"], record[0]["fc1"])
    assert not torch.equal(record[3]["fc1"], record[max(record)]["fc1"])
    # a ticket model starts from the rewound weights with the masks attached
    tm = lottery.ticket_model(model, ticket)
    assert torch.equal(tm.fc1.weight.detach(), ticket.weights["fc1"])
    assert torch.equal(model.fc1.weight, planted().fc1.weight)  # caller's model untouched


def test_imp_rewind_epoch_and_errors() -> None:
    model = planted()
    record: dict[int, dict[str, torch.Tensor]] = {}
    ticket = lottery.imp(model, ["fc1", "fc2"], _sgd_train(epochs=2, record=record), _tiny_data(),
                         sparsity=0.5, rounds=1, rewind_epoch=1)
    assert ticket.rewind_step == 4  # 4 batches per epoch
    mask = ticket.masks["fc1"]
    assert torch.equal(ticket.weights["fc1"][mask], record[4]["fc1"][mask])
    with pytest.raises(PlanError, match="never reached"):
        lottery.imp(model, ["fc1"], _sgd_train(epochs=1), _tiny_data(), sparsity=0.5, rewind_iteration=50)
    with pytest.raises(PlanError, match="training function"):
        importance.get("imp").scores(model, ["fc1"], _tiny_data(), sparsity=0.5)
    with pytest.raises(PlanError, match="needs data"):
        importance.get("imp", train=_sgd_train()).scores(model, ["fc1"], None, sparsity=0.5)
    with pytest.raises(PlanError, match="target sparsity"):
        importance.get("imp", train=_sgd_train()).scores(model, ["fc1"], _tiny_data())


# ------------------------------------------------------------------------------ registry

def test_registry_and_parameters() -> None:
    assert importance.names() == ["grasp", "imp", "magnitude", "obd", "random", "snip", "synflow", "taylor"]
    with pytest.raises(PlanError, match="valid: grasp, imp, magnitude"):
        importance.get("fisher")
    with pytest.raises(PlanError, match="no parameter rounds; valid: iterations"):
        importance.get("synflow", rounds=3)
    assert importance.get("synflow", iterations=7).iterations == 7
    assert importance.get("synflow").iterations == 100
    with pytest.raises(PlanError, match="hutchinson"):
        importance.get("obd", hessian="exact")
    crit = importance.get("random", seed=3)
    assert importance.get(crit) is crit


def test_global_keep_counts_and_ties() -> None:
    scores = {"a": torch.tensor([3.0, 1.0, 1.0, 0.0]), "b": torch.tensor([[1.0, 5.0]])}
    keep = importance.global_keep(scores, 0.5)
    assert int(keep["a"].sum()) + int(keep["b"].sum()) == 3
    assert bool(keep["a"][0]) and bool(keep["b"][0, 1])
    assert sum(int(k.sum()) for k in importance.global_keep(scores, 0.0).values()) == 0
    with pytest.raises(PlanError, match="density"):
        importance.global_keep(scores, 1.5)
