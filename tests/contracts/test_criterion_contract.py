"""Contract suite for importance criteria, in the style of ``optuna/testing/pytest_storages.py``:
every registered criterion (:func:`hwsearch.importance.names`) is held to the
:class:`~hwsearch.importance.Criterion` contract by a parametrised fixture — scores shaped like
each weight, finite, non-negative, on the CPU, higher = keep; the model left untouched; a
criterion that needs data refuses to run without it."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn

from hwsearch import importance
from hwsearch.core.errors import PlanError

LAYERS = ["conv", "fc"]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        yield torch.randn(16, 1, 16, generator=g), torch.randint(0, 3, (16,), generator=g)


def _train(model: nn.Module, data) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for x, y in data():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.fixture(params=importance.names())
def criterion(request) -> importance.Criterion:
    # a criterion that needs a training function gets one; the others take their defaults
    return importance.get(request.param, train=_train) if request.param == "imp" else importance.get(request.param)


def test_scores_honour_the_contract_and_leave_the_model_untouched(criterion):
    torch.manual_seed(0)
    model = _Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = criterion.scores(model, LAYERS, _data if criterion.needs_data else None,
                              example_inputs=(torch.randn(2, 1, 16),),
                              sparsity=0.5 if criterion.iterative else None)
    assert set(scores) == set(LAYERS)
    mods = dict(model.named_modules())
    for name, s in scores.items():
        assert s.shape == mods[name].weight.shape, name
        assert s.device.type == "cpu" and s.is_floating_point()
        assert bool(torch.isfinite(s).all()) and float(s.min()) >= 0.0, name
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a criterion changed the model"


def test_needs_data_says_the_truth(criterion):
    """Without data, a criterion that needs it refuses with the fix; a data-free one scores."""
    def run():
        return criterion.scores(_Net(), LAYERS, None, example_inputs=(torch.randn(2, 1, 16),),
                                sparsity=0.5 if criterion.iterative else None)
    if criterion.needs_data:
        with pytest.raises(PlanError, match="needs"):
            run()
    else:
        assert set(run()) == set(LAYERS)


def test_an_unknown_criterion_lists_the_valid_ones():
    with pytest.raises(PlanError, match="valid: .*magnitude"):
        importance.get("nope")
