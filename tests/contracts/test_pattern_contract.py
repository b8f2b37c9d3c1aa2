"""Contract suite for sparsity patterns, in the style of ``optuna/testing/pytest_storages.py``:
every registered pattern (:func:`hwsearch.core.patterns.names`) is run through the same checks
by a parametrised fixture, so a new pattern is tested the moment it is registered."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hwsearch.core import patterns
from hwsearch.core.errors import PlanError
from hwsearch.core.patterns import StorageBytes
from hwsearch.core.plan import LayerChoice

# a representative choice per built-in pattern; a registered pattern missing here fails the
# first test below (add its choice when you register it)
CHOICES = {
    "dense": LayerChoice("dense"),
    "unstructured": LayerChoice("unstructured", 0.6),
    "channel": LayerChoice("channel", 0.5),
    "nm": LayerChoice("nm", n=2, m=4),
    "block": LayerChoice("block", 0.5, block=(4, 4)),
    "head": LayerChoice("head", 0.5),     # structural: heads go before the weight view (like channel)
    "qhead": LayerChoice("qhead", 0.5),
}


@pytest.fixture(params=patterns.names())
def pattern(request) -> patterns.Pattern:
    return patterns.get(request.param)


def test_every_registered_pattern_has_a_contract_choice(pattern):
    assert pattern.name in CHOICES, f"add a representative LayerChoice for {pattern.name!r} to CHOICES"
    assert patterns.get(pattern.name) is pattern


def test_mask_is_a_keep_mask_of_the_scores_shape_at_the_stated_density(pattern):
    choice = CHOICES[pattern.name]
    scores = torch.rand(16, 64, generator=torch.Generator().manual_seed(0))
    pattern.check("layer", 16, 64, choice, channels=64)
    mask = pattern.mask(scores, choice)
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    density = pattern.weight_density(16, 64, choice)
    assert 0.0 < density <= 1.0
    assert abs(float(mask.float().mean()) - density) <= 1.0 / 16  # block granularity at most
    if not pattern.weight_level:
        assert bool(mask.all()) and density == 1.0  # structural patterns zero nothing inside the view


def test_mask_keeps_the_highest_scores(pattern):
    choice = CHOICES[pattern.name]
    scores = torch.rand(16, 64, generator=torch.Generator().manual_seed(1))
    mask = pattern.mask(scores, choice)
    if bool(mask.all()):
        return  # nothing removed: nothing to order
    # over the whole view, kept weights score higher on average than removed ones
    assert float(scores[mask].mean()) > float(scores[~mask].mean())


def test_min_density_is_a_floor(pattern):
    choice = CHOICES[pattern.name]
    assert pattern.weight_density(16, 64, choice, min_density=0.9) >= min(0.9, pattern.weight_density(16, 64, choice)) - 1e-9
    if pattern.name in ("unstructured", "block"):
        assert pattern.weight_density(16, 64, choice, min_density=0.9) >= 0.9 - 1e-9


def test_storage_is_exact_bytes_and_never_exceeds_dense_at_half_density_or_less(pattern):
    choice = CHOICES[pattern.name]
    rows, cols, dtype = 16, 64, 4
    density = pattern.weight_density(rows, cols, choice)
    nnz = int(round(rows * cols * density))
    s = pattern.storage(rows, cols, nnz, choice, dtype)
    assert isinstance(s, StorageBytes) and s.values_bytes >= 0 and s.index_bytes >= 0
    assert s.total_bytes == s.values_bytes + s.index_bytes
    assert s.values_bytes == nnz * dtype or not pattern.weight_level and s.values_bytes == rows * cols * dtype
    if density <= 0.5:
        assert s.total_bytes < rows * cols * dtype


def test_vectorised_storage_equals_the_scalar_storage(pattern):
    choice = CHOICES[pattern.name]
    rng = np.random.default_rng(0)
    rows = rng.integers(4, 80, 40) * 4
    cols = rng.integers(4, 300, 40) * 4
    dens = pattern.weight_density(16, 64, choice)
    nnz = np.round(rows * cols * dens).astype(np.int64)
    arr = pattern.storage_bytes_array(rows, cols, nnz, choice, 1)
    one = [pattern.storage(int(r), int(c), int(z), choice, 1).total_bytes for r, c, z in zip(rows, cols, nnz)]
    assert arr.dtype == np.int64 and arr.tolist() == one


def test_a_shape_the_pattern_cannot_tile_is_refused_with_the_fix(pattern):
    """N:M and blocks refuse shapes they cannot tile (one line naming the layer); the others take
    any shape."""
    choice = CHOICES[pattern.name]
    if pattern.name in ("nm", "block"):
        with pytest.raises(PlanError, match="'odd'") as e:
            pattern.check("odd", 18, 27, choice, channels=3)
        assert "\n" not in str(e.value)
    else:
        pattern.check("odd", 18, 27, choice, channels=3)
