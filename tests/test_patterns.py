"""Sparsity patterns: mask rules, refusals with remedies, exact storage bytes, N:M layout."""
from __future__ import annotations

import pytest
import torch

from hwsearch.core import patterns
from hwsearch.core.errors import PlanError
from hwsearch.core.plan import LayerChoice
from hwsearch.core.patterns import StorageBytes


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8)])
def test_nm_mask_keeps_exactly_n_of_every_m_along_inputs(n: int, m: int) -> None:
    torch.manual_seed(0)
    scores = torch.rand(16, 72)  # a conv's 2-D view: out × in·kernel
    mask = patterns.get("nm").mask(scores, LayerChoice("nm", n=n, m=m))
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    per_group = mask.reshape(16, 72 // m, m).sum(-1)
    assert bool((per_group == n).all())
    # and they are the n best of their group
    groups = scores.reshape(16, -1, m)
    kept_min = torch.where(mask.reshape(16, -1, m), groups, torch.inf).min(-1).values
    pruned_max = torch.where(mask.reshape(16, -1, m), -torch.inf, groups).max(-1).values
    assert bool((kept_min > pruned_max).all())


def test_nm_refuses_indivisible_input_dim() -> None:
    with pytest.raises(PlanError, match=r"2:4 .*'stem'.*input channels per group \(27\) divisible by 4"):
        patterns.get("nm").check("stem", 16, 27, LayerChoice("nm"))
    patterns.get("nm").check("conv", 16, 36, LayerChoice("nm"))  # divisible: no error
    # groups run along input channels: 3 channels x 3x3 kernel = 27 columns, refused; 4 x 3x3 accepted
    with pytest.raises(PlanError, match=r"input channels per group \(3\)"):
        patterns.get("nm").check("c", 16, 27, LayerChoice("nm"), channels=3)
    patterns.get("nm").check("c", 16, 36, LayerChoice("nm"), channels=4)


def test_nm_groups_run_along_input_channels_of_convs() -> None:
    """Conv weights (out, in, k): every M consecutive input channels at one kernel position
    keep exactly N — the layout sparse tensor cores and the MCU kernels read."""
    w = torch.randn(8, 8, 3)
    mask = patterns.from_gemm_view(patterns.get("nm").mask(patterns.gemm_view(w.abs()), LayerChoice("nm")),
                                   tuple(w.shape))
    per_group = mask.reshape(8, 2, 4, 3).sum(dim=2)   # (out, in-group, kernel position)
    assert bool((per_group == 2).all())
    assert torch.equal(patterns.from_gemm_view(patterns.gemm_view(w), tuple(w.shape)), w)
    with pytest.raises(PlanError, match="0 < N < M"):
        LayerChoice("nm", n=4, m=4)


def test_block_mask_zeroes_whole_blocks() -> None:
    torch.manual_seed(1)
    scores = torch.rand(12, 32)
    choice = LayerChoice("block", 0.75, block=(4, 2))
    mask = patterns.get("block").mask(scores, choice)
    blocks = mask.reshape(3, 4, 16, 2).permute(0, 2, 1, 3).reshape(48, 8)
    per_block = blocks.sum(-1)
    assert bool(((per_block == 0) | (per_block == 8)).all())
    assert int((per_block == 8).sum()) == 12  # 25% of 48 blocks
    # kept blocks are those with the largest summed score
    sums = scores.reshape(3, 4, 16, 2).sum(dim=(1, 3)).flatten()
    kept = per_block == 8
    assert float(sums[kept].min()) > float(sums[~kept].max())


def test_block_refuses_shapes_it_cannot_tile() -> None:
    with pytest.raises(PlanError, match=r"block 4x4 does not tile 'fc2'.*10x6.*dividing both"):
        patterns.get("block").check("fc2", 10, 6, LayerChoice("block", 0.5, block=(4, 4)))
    with pytest.raises(PlanError, match="does not tile"):
        patterns.get("block").mask(torch.rand(10, 6), LayerChoice("block", 0.5, block=(4, 4)))


def test_unstructured_mask_count_and_floor() -> None:
    torch.manual_seed(2)
    scores = torch.rand(10, 20)
    mask = patterns.get("unstructured").mask(scores, LayerChoice("unstructured", 0.9))
    assert int(mask.sum()) == 20
    assert float(scores[mask].min()) > float(scores[~mask].max())
    floored = patterns.get("unstructured").mask(scores, LayerChoice("unstructured", 0.99), min_density=0.05)
    assert int(floored.sum()) == 10
    tiny = patterns.get("unstructured").mask(scores, LayerChoice("unstructured", 0.999))
    assert int(tiny.sum()) == 1  # a layer is never emptied by a plan


def test_storage_bytes_match_hand_counts() -> None:
    f32 = 4
    dense = patterns.get("dense").storage(8, 36, 8 * 36, LayerChoice(), f32)
    assert dense == StorageBytes(8 * 36 * 4, 0, "dense") and dense.total_bytes == 1152
    assert patterns.get("channel").storage(4, 36, 144, LayerChoice("channel", 0.5), f32) == StorageBytes(576, 0, "dense")
    # unstructured 8x36, 30 nonzeros: CSR = 30 one-byte column indices + 9 two-byte row pointers = 48 bytes;
    # bitmask = ceil(288 / 8) = 36 bytes -> bitmask
    uns = patterns.get("unstructured")
    assert uns.storage(8, 36, 30, LayerChoice("unstructured", 0.9), f32) == StorageBytes(120, 36, "bitmask")
    # 4x1000, 10 nonzeros: CSR = 10·2 (cols > 256) + 5·2 = 30 bytes < bitmask 500 -> csr
    assert uns.storage(4, 1000, 10, LayerChoice("unstructured", 0.99), f32) == StorageBytes(40, 30, "csr")
    # 1x70000, 66000 nonzeros: CSR = 66000·4 + 2·4 (nnz >= 2^16) = 264008 > bitmask 8750
    assert uns.storage(1, 70000, 66000, LayerChoice("unstructured", 0.05), 2) == StorageBytes(132000, 8750, "bitmask")
    # 2:4 on 8x16: 64 values; 64·2 bits = 16 bytes of metadata
    assert patterns.get("nm").storage(8, 16, 64, LayerChoice("nm"), f32) == StorageBytes(256, 16, "nm")
    # 3:8 on 3x16: 18 values; 18·3 bits = 54 bits -> 7 bytes
    assert patterns.get("nm").storage(3, 16, 18, LayerChoice("nm", n=3, m=8), 1) == StorageBytes(18, 7, "nm")
    # block 2x4 on 8x16 with 6 of 16 blocks kept: 48 values; BSR = 6 one-byte block columns + 5 two-byte row ptrs
    assert patterns.get("block").storage(8, 16, 48, LayerChoice("block", 0.625, block=(2, 4)), f32) == \
        StorageBytes(192, 16, "bsr")


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8), (1, 2)])
def test_nm_compress_round_trip_and_layout(n: int, m: int) -> None:
    torch.manual_seed(3)
    w = torch.randn(6, 8 * m)
    c = patterns.nm_compress(w, n, m)
    assert c.values.shape == (6, 8 * n) and c.indices.dtype == torch.uint8
    dense = patterns.nm_decompress(c)
    assert dense.shape == w.shape
    keep = dense != 0
    assert bool((keep.reshape(6, 8, m).sum(-1) == n).all())
    assert torch.equal(dense[keep], w[keep])
    # the kept values are the largest magnitudes of each group
    groups = w.abs().reshape(6, 8, m)
    kmask = keep.reshape(6, 8, m)
    assert bool((torch.where(kmask, groups, torch.inf).min(-1).values
                 >= torch.where(kmask, -torch.inf, groups).max(-1).values).all())
    # byte count equals the pattern's storage model
    nm = patterns.get("nm")
    assert c.storage() == nm.storage(6, 8 * m, 6 * 8 * n, LayerChoice("nm", n=n, m=m), 4)
    # round trip of an already-sparse weight is exact
    again = patterns.nm_decompress(patterns.nm_compress(dense, n, m, mask=keep))
    assert torch.equal(again, dense)


def test_nm_compress_known_bits() -> None:
    w = torch.tensor([[0.0, 5.0, 0.0, 7.0, 1.0, 2.0, 0.0, 0.0]])
    mask = w != 0
    mask[0, 4:] = torch.tensor([True, True, False, False])
    c = patterns.nm_compress(w, 2, 4, mask=mask)
    assert c.values.tolist() == [[5.0, 7.0, 1.0, 2.0]]
    # positions 1, 3, 0, 1 at 2 bits each, least-significant first: 0b01_00_11_01 = 0x4D
    assert c.indices.tolist() == [0x4D]


def test_nm_compress_refusals() -> None:
    with pytest.raises(PlanError, match="2-D"):
        patterns.nm_compress(torch.randn(2, 3, 4), 2, 4)
    with pytest.raises(PlanError, match="divisible by 4"):
        patterns.nm_compress(torch.randn(2, 6), 2, 4)
    bad = torch.zeros(2, 8, dtype=torch.bool)
    bad[:, :3] = True
    with pytest.raises(PlanError, match="keeps 3 weights"):
        patterns.nm_compress(torch.randn(2, 8), 2, 4, mask=bad)


def test_registry_names_the_valid_patterns() -> None:
    # registration order: the built-ins first, in the order of batch pricing's pattern codes
    assert patterns.names() == ["dense", "unstructured", "channel", "nm", "block", "head", "qhead"]
    with pytest.raises(PlanError, match="valid: block, channel, dense, head, nm, qhead, unstructured"):
        patterns.get("2:4")
