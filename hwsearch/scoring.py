"""Scores shared by the pruning criteria and the iterative procedures built on them: the data a
criterion reads, global top-k keep masks, and tiered scores of iterative pruning."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from hwsearch.core.errors import PlanError

__all__ = ["DataBatches", "LossFn", "global_keep", "tiered_scores"]

# A callable yielding (inputs, targets) batches; criteria that need data call it (once per pass).
DataBatches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
# loss(outputs, targets) -> scalar tensor
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def global_keep(scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Boolean keep-masks keeping the ``round(density · N)`` highest scores over all layers
    together (``N`` = total weights; ties broken by position). No per-layer floor: a layer can
    end with no weight at all (that is layer collapse). Raises :class:`PlanError` unless
    ``0 <= density <= 1``."""
    if not 0.0 <= density <= 1.0:
        raise PlanError(f"density {density!r} out of range: give the fraction kept, 0 <= density <= 1")
    names_ = list(scores)
    flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in names_])
    kept = int(round(density * flat.numel()))
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if kept >= flat.numel():
        keep[:] = True
    elif kept > 0:
        # the kept-th largest value by selection (O(N)); ties at it resolved by position
        thr = torch.kthvalue(flat, flat.numel() - kept + 1).values
        above = flat > thr
        ties = torch.nonzero(flat == thr).flatten()
        keep = above
        keep[ties[: kept - int(above.sum())]] = True
    out, start = {}, 0
    for n in names_:
        k = scores[n].numel()
        out[n] = keep[start:start + k].view(scores[n].shape)
        start += k
    return out


def tiered_scores(pruned_round: dict[str, torch.Tensor], last_scores: dict[str, torch.Tensor],
                  rounds: int) -> dict[str, torch.Tensor]:
    """Scores of an iterative procedure: ``tier + 0.999·within`` where ``tier`` is the round
    (0-based) in which a weight was pruned (``rounds`` for survivors) and ``within`` ∈ [0, 1] is
    its score in that round divided by the largest score of that round over all layers.
    Keeping the top ``k`` globally therefore keeps every weight of a later tier before any
    weight of an earlier one."""
    names_ = list(pruned_round)
    tier = torch.cat([pruned_round[n].flatten().long() for n in names_])
    score = torch.cat([last_scores[n].flatten().double() for n in names_]).clamp_min(0.0)
    top = torch.zeros(int(tier.max()) + 1 if tier.numel() else 1, dtype=torch.float64)
    top = top.scatter_reduce(0, tier, score, reduce="amax", include_self=True)
    top[top <= 0] = 1.0
    flat = (tier.double() + 0.999 * (score / top[tier]).clamp(0.0, 1.0)).float()
    out, start = {}, 0
    for n in names_:
        k = pruned_round[n].numel()
        out[n] = flat[start:start + k].view(pruned_round[n].shape)
        start += k
    del rounds  # tiers carry their own numbering; kept for the signature's clarity
    return out
