"""Exact storage bytes: the array forms in :mod:`hwsearch.core.patterns` (what batch pricing
uses) give the same integers as the scalar ones (what ``predict`` uses), at every index-width
boundary; a pattern that only defines the scalar ``storage`` is priced per element."""
from __future__ import annotations

import numpy as np
import pytest

from hwsearch.core import patterns
from hwsearch.core.patterns import StorageBytes, _idx_bytes, _ptr_bytes, idx_bytes_array, ptr_bytes_array
from hwsearch.core.plan import LayerChoice

EDGES = np.array([0, 1, 2, 255, 256, 257, 65535, 65536, 65537, 2**31], dtype=np.int64)


def test_index_widths_agree_with_the_scalar_ones_at_every_boundary():
    assert idx_bytes_array(EDGES).tolist() == [_idx_bytes(int(v)) for v in EDGES]
    assert ptr_bytes_array(EDGES).tolist() == [_ptr_bytes(int(v)) for v in EDGES]
    assert idx_bytes_array(EDGES).tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 4, 4]
    assert ptr_bytes_array(EDGES).tolist() == [2, 2, 2, 2, 2, 2, 2, 4, 4, 4]
    assert idx_bytes_array(EDGES).dtype == np.int64 and idx_bytes_array(EDGES.reshape(2, 5)).shape == (2, 5)


@pytest.mark.parametrize("name,choice", [("unstructured", LayerChoice("unstructured", 0.5)),
                                         ("block", LayerChoice("block", 0.5, block=(1, 4))),
                                         ("nm", LayerChoice("nm", n=2, m=4))])
@pytest.mark.parametrize("dtype_bytes", [1, 2, 4])
def test_array_storage_equals_scalar_storage_across_index_widths(name, choice, dtype_bytes):
    """Shapes whose columns and nonzeros straddle the 1/2/4-byte index and 2/4-byte pointer limits."""
    pat = patterns.get(name)
    rows = np.array([4, 4, 8, 64, 256, 512, 1024, 4, 16], dtype=np.int64)
    cols = np.array([256, 260, 1024, 1024, 1024, 65536, 256, 65540, 70000], dtype=np.int64)
    nnz = (rows * cols) // 4 * 2  # half the weights, a multiple of the block size
    arr = pat.storage_bytes_array(rows, cols, nnz, choice, dtype_bytes)
    one = [pat.storage(int(r), int(c), int(z), choice, dtype_bytes).total_bytes for r, c, z in zip(rows, cols, nnz)]
    assert arr.dtype == np.int64 and arr.tolist() == one


class _Triple(patterns.Pattern):
    """A pattern defining only the scalar storage (not registered)."""

    name = "triple-test"
    weight_level = True

    def storage(self, rows, cols, nnz, choice, dtype_bytes):
        return StorageBytes(3 * nnz * dtype_bytes, rows, "triple")


def test_a_pattern_with_only_scalar_storage_is_priced_element_by_element():
    rows, cols, nnz = np.array([[2, 3], [4, 5]]), np.array([[8, 8], [8, 8]]), np.array([[1, 2], [3, 4]])
    got = _Triple().storage_bytes_array(rows, cols, nnz, LayerChoice("unstructured", 0.5), 2)
    assert got.shape == (2, 2) and got.tolist() == [[3 * 1 * 2 + 2, 3 * 2 * 2 + 3], [3 * 3 * 2 + 4, 3 * 4 * 2 + 5]]
