"""Importance criteria: which weights to keep.

A :class:`Criterion` scores every weight of the requested layers; a higher score means more
important. Patterns pool weight scores to their granularity (channels: L2 norm of the
filter's scores, in :func:`hwsearch.prune.decide`; blocks: sum; N:M groups: per weight).
Criteria are registered by name; :func:`get` returns the registered instance or, given
parameters, a new one (``get("synflow", iterations=10)``).

========== ====== ==========================================================================
name       data   score (higher = keep)
========== ====== ==========================================================================
magnitude  no     ``|w|`` (Han et al., 2015)
random     no     uniform random numbers (a baseline; seeded)
taylor     yes    ``Σ_batches |w · ∂L_b/∂w|`` — first-order Taylor (Molchanov et al., 2019)
obd        yes    ``½ · H_ii · w²`` — Optimal Brain Damage (LeCun et al., 1990); ``H_ii`` from the
                  empirical Fisher (mean of per-sample squared gradients, default) or Hutchinson
snip       yes    ``|w · Σ_batches ∂L_b/∂w|`` at initialisation (Lee et al., 2019)
grasp      yes    ``w · Hg`` shifted to be non-negative (Wang et al., 2020; see :class:`GraSP`)
synflow    no     iterative synaptic flow ``|w · ∂R/∂w|`` (Tanaka et al., 2020; :class:`SynFlow`)
imp        yes    iterative magnitude pruning with rewinding (:mod:`hwsearch.lottery`)
========== ====== ==========================================================================

``synflow`` and ``imp`` are *iterative*: their result depends on the target sparsity, which
the caller passes as ``sparsity=``. Their scores are tiered so that keeping the globally
top-scored ``1 - sparsity`` of the weights reproduces the procedure's final mask exactly, and a
lower sparsity keeps the weights that survived longer.
"""
from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwsearch import lottery
from hwsearch.core.errors import PlanError
from hwsearch.scoring import DataBatches, LossFn, global_keep, tiered_scores

__all__ = ["Criterion", "Magnitude", "Random", "Taylor", "OBD", "SNIP", "GraSP", "SynFlow", "IMP",
           "get", "names", "register", "DataBatches", "LossFn", "global_keep", "tiered_scores"]

log = logging.getLogger(__name__)


class Criterion:
    """Contract for an importance criterion.

    :meth:`scores` returns ``{layer: tensor shaped like layer.weight}`` — float, finite,
    non-negative, on the CPU, higher = keep — for every name in ``layers``, without modifying
    ``model``'s parameters or buffers (criteria that need gradients work on a deep copy).

    * ``needs_data``: a data callable is required; without one :meth:`scores` raises
      :class:`PlanError`.
    * ``iterative``: the scores depend on the final global ``sparsity`` (fraction of the
      requested layers' weights removed), passed as a keyword.
    * ``example_inputs`` give data-free criteria the input shape.

    Subclasses are configured by constructor keywords and must be cheap to construct.
    """

    name = "base"
    needs_data = False
    iterative = False

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None, *,
               example_inputs: tuple[torch.Tensor, ...] | None = None,
               sparsity: float | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _require_data(self, data: DataBatches | None) -> DataBatches:
        if data is None:
            raise PlanError(f"criterion {self.name!r} needs data: pass data=<callable yielding (inputs, targets) "
                            "batches>, or use a data-free criterion ('magnitude', 'synflow', 'random')")
        return data

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


# ---------------------------------------------------------------------------------- helpers

def _modules(model: nn.Module, layers: Iterable[str]) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    out = {}
    for name in layers:
        m = mods.get(name)
        if m is None or not isinstance(getattr(m, "weight", None), torch.Tensor):
            raise PlanError(f"layer {name!r} is not a module with a weight in {type(model).__name__}")
        out[name] = m
    return out


def _grad_copy(model: nn.Module, layers: Sequence[str]) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """A deep copy in eval mode where only the requested layers' weights require gradients."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
        p.grad = None
    weights = {name: m.weight for name, m in _modules(work, layers).items()}
    for w in weights.values():
        w.requires_grad_(True)
    return work, weights


def _batches(data: DataBatches, max_batches: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = 0
    for x, y in data():
        if max_batches is not None and n >= max_batches:
            return
        n += 1
        yield x, y
    if n == 0:
        raise PlanError("the data callable yielded no batch; give at least one (inputs, targets) batch")


def _default_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


# --------------------------------------------------------------------------------- criteria

class Magnitude(Criterion):
    """|w| (Han et al., 2015); channels pool to the filter L2 norm (Li et al., 2017)."""

    name = "magnitude"

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None, *,
               example_inputs: tuple[torch.Tensor, ...] | None = None,
               sparsity: float | None = None) -> dict[str, torch.Tensor]:
        return {name: m.weight.detach().abs().float().cpu().clone() for name, m in _modules(model, layers).items()}


class Random(Criterion):
    """Uniform random scores in [0, 1) from a generator seeded with ``seed`` (baseline: every
    layer keeps about the same density under a global threshold)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None, *,
               example_inputs: tuple[torch.Tensor, ...] | None = None,
               sparsity: float | None = None) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        return {name: torch.rand(m.weight.shape, generator=gen) for name, m in _modules(model, layers).items()}


class Taylor(Criterion):
    """First-order Taylor: ``Σ_b |w · ∂L_b/∂w|`` over the batches ``data()`` yields (at most
    ``max_batches``), the estimated loss change of removing each weight, in loss units.
    The model is evaluated in eval mode on a copy; ``loss`` defaults to cross-entropy."""

    name = "taylor"
    needs_data = True

    def __init__(self, loss: LossFn | None = None, max_batches: int | None = None) -> None:
        self.loss = loss
        self.max_batches = max_batches

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None, *,
               example_inputs: tuple[torch.Tensor, ...] | None = None,
               sparsity: float | None = None) -> dict[str, torch.Tensor]:
        data = self._require_data(data)
        layers = list(layers)
        work, weights = _grad_copy(model, layers)
        loss_fn = self.loss or _default_loss
        acc = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in weights.items()}
        for x, y in _batches(data, self.max_batches):
            grads = torch.autograd.grad(loss_fn(work(x), y), list(weights.values()))
            for (n, w), g in zip(weights.items(), grads):
                acc[n] += (w.detach() * g).abs().double()
        return {n: a.float().cpu() for n, a in acc.items()}


class SNIP(Criterion):
    """SNIP connection sensitivity (Lee et al., 2019): ``|w · g|`` with ``g`` the loss gradient
    accumulated over the batches ``data()`` yields (at most ``max_batches``), meant for a model
    at initialisation. The paper's normalisation by the sum does not change the ranking and is
    omitted."""

    name = "snip"
    needs_data = True

    def __init__(self, loss: LossFn | None = None, max_batches: int | None = None) -> None:
        self.loss = loss
        self.max_batches = max_batches

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None, *,
               example_inputs: tuple[torch.Tensor, ...] | None = None,
               sparsity: float | None = None) -> dict[str, torch.Tensor]:
        data = self._require_data(data)
        layers = list(layers)
        work, weights = _grad_copy(model, layers)
        loss_fn = self.loss or _default_loss
        acc = {n: torch.zeros_like(w) for n, w in weights.items()}
        for x, y in _batches(data, self.max_batches):
            grads = torch.autograd.grad(loss_fn(work(x), y), list(weights.values()))
            for n, g in zip(weights, grads):
                acc[n] += g
        return {n: (weights[n].detach() * acc[n]).abs().float().cpu() for n in weights}


class OBD(Criterion):
    """Optimal Brain Damage saliency ``½ · H_ii · w²`` (LeCun et al., 1990), the loss increase
    of deleting ``w`` at a minimum, in loss units.

    ``hessian="fisher"`` (default): ``H_ii`` is the empirical Fisher diagonal, the mean over
    samples of the squared per-sample loss gradient (per-sample gradients by ``torch.func``;
    at most ``max_samples`` samples). ``hessian="hutchinson"``: ``H_ii ≈ E[z ⊙ Hz]`` with
    ``probes`` Rademacher vectors per batch (exact Hessian in expectation); negative estimates
    (no curvature support for OBD's assumption) are clamped to 0. Raises :class:`PlanError`
    for another ``hessian``.
    """

    name = "obd"
    needs_data = True

    def __init__(self, hessian: str = "fisher", loss: LossFn | None = None, max_batches: int | None = None,
                 max_samples: int = 512, probes: int = 4, seed: int = 0) -> None:
        if hessian not in ("fisher", "hutchinson"):
            raise PlanError(f"obd hessian {hessian!r} unknown; use 'fisher' or 'hutchinson'")
        self.hessian = hessian
        self.loss = loss
        self.max_batches = max_batches
        self.max_samples = int(max_samples)
        self.probes = int(probes)
        self.seed = int(seed)

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None, *,
               example_inputs: tuple[torch.Tensor, ...] | None = None,
               sparsity: float | None = None) -> dict[str, torch.Tensor]:
        data = self._require_data(data)
        layers = list(layers)
        work, weights = _grad_copy(model, layers)
        diag = self._fisher(work, weights, data) if self.hessian == "fisher" else self._hutchinson(work, weights, data)
        return {n: (0.5 * diag[n].clamp_min(0.0) * weights[n].detach().double() ** 2).float().cpu() for n in weights}

    def _fisher(self, work: nn.Module, weights: dict[str, nn.Parameter], data: DataBatches) -> dict[str, torch.Tensor]:
        loss_fn = self.loss or _default_loss
        pname = {id(p): k for k, p in work.named_parameters()}
        keys = {n: pname[id(w)] for n, w in weights.items()}
        params = {k: p.detach() for k, p in work.named_parameters()}
        buffers = dict(work.named_buffers())

        def one(pw: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(work, ({**params, **pw}, buffers), (x.unsqueeze(0),))
            return loss_fn(out, y.unsqueeze(0))

        per_sample = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))
        acc = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in weights.items()}
        seen = 0
        for x, y in _batches(data, self.max_batches):
            take = min(len(x), self.max_samples - seen)
            if take <= 0:
                break
            x, y = x[:take], y[:take]
            pw = {keys[n]: params[keys[n]] for n in weights}
            try:
                g = per_sample(pw, x, y)
                for n in weights:
                    acc[n] += (g[keys[n]].double() ** 2).sum(0)
            except Exception as exc:  # vmap cannot batch some ops; fall back to a loop
                log.debug("per-sample gradients by vmap failed (%s); looping over samples", exc)
                for i in range(take):
                    grads = torch.autograd.grad(loss_fn(work(x[i:i + 1]), y[i:i + 1]), list(weights.values()))
                    for n, gi in zip(weights, grads):
                        acc[n] += gi.double() ** 2
            seen += take
        return {n: a / max(seen, 1) for n, a in acc.items()}

    def _hutchinson(self, work: nn.Module, weights: dict[str, nn.Parameter],
                    data: DataBatches) -> dict[str, torch.Tensor]:
        loss_fn = self.loss or _default_loss
        gen = torch.Generator().manual_seed(self.seed)
        ws = list(weights.values())
        acc = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in weights.items()}
        count = 0
        for x, y in _batches(data, self.max_batches):
            grads = torch.autograd.grad(loss_fn(work(x), y), ws, create_graph=True)
            for _ in range(self.probes):
                zs = [torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1 for w in ws]
                hz = torch.autograd.grad(grads, ws, grad_outputs=zs, retain_graph=True)
                for n, z, h in zip(weights, zs, hz):
                    acc[n] += (z * h).double()
                count += 1
        return {n: a / max(count, 1) for n, a in acc.items()}


class GraSP(Criterion):
    """Gradient Signal Preservation (Wang et al., 2020).

    The paper scores ``S = -w ⊙ Hg`` (``g`` the loss gradient, ``H`` the Hessian, on logits
    divided by ``temperature``, default 200 as in the authors' code) and removes the weights
    with the *largest* ``S`` — those whose removal reduces the gradient norm least. To keep
    the contract (higher = keep) this returns ``-S = w ⊙ Hg``, minus its minimum over all
    requested layers so it is non-negative; the global order (hence the global mask) is the
    paper's. ``Hg`` is accumulated over the batches ``data()`` yields (at most
    ``max_batches``), by double back-propagation.
    """

    name = "grasp"
    needs_data = True

    def __init__(self, loss: LossFn | None = None, max_batches: int | None = None,
                 temperature: float = 200.0) -> None:
        self.loss = loss
        self.max_batches = max_batches
        self.temperature = float(temperature)

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None, *,
               example_inputs: tuple[torch.Tensor, ...] | None = None,
               sparsity: float | None = None) -> dict[str, torch.Tensor]:
        data = self._require_data(data)
        layers = list(layers)
        work, weights = _grad_copy(model, layers)
        loss_fn = self.loss or _default_loss
        ws = list(weights.values())
        g = [torch.zeros_like(w) for w in ws]
        for x, y in _batches(data, self.max_batches):
            for acc, gi in zip(g, torch.autograd.grad(loss_fn(work(x) / self.temperature, y), ws)):
                acc += gi
        hg = [torch.zeros_like(w) for w in ws]
        for x, y in _batches(data, self.max_batches):
            grads = torch.autograd.grad(loss_fn(work(x) / self.temperature, y), ws, create_graph=True)
            z = sum((gi * ci.detach()).sum() for gi, ci in zip(grads, g))
            for acc, h in zip(hg, torch.autograd.grad(z, ws)):
                acc += h
        raw = {n: (w.detach() * h).double() for (n, w), h in zip(weights.items(), hg)}
        low = min(float(r.min()) for r in raw.values())
        return {n: (r - low).float().cpu() for n, r in raw.items()}


class SynFlow(Criterion):
    """Iterative Synaptic Flow pruning (Tanaka et al., 2020): data-free.

    On a float64 copy in eval mode whose parameters and floating buffers are replaced by their
    absolute values (the "linearised" network) and whose biases, BatchNorm shifts and running
    means are zeroed, with an all-ones input of the example's shape (batch 1),
    ``R = sum(f(1))`` equals ``1ᵀ(∏|W|)1`` for a ReLU network (BatchNorm contributes its
    positive per-channel scale); the score of a weight is ``|w · ∂R/∂w|``. Zeroing the
    additive terms matters: the reference models initialise biases to 0, while PyTorch's
    defaults are not, and positive biases feed flow past the early layers, which iterative
    pruning then empties. Pruning runs ``iterations`` rounds; after round ``k`` (1-based) the
    globally top-scored ``d^(k/iterations)`` of the requested layers' weights are kept
    (``d = 1 - sparsity``, exponential schedule) and the others are zeroed before the next
    round. Without ``sparsity`` (or with 0) one round of scores on the unpruned network is
    returned. The input shape comes from ``example_inputs`` or, failing that, the first batch
    of ``data``; with neither a :class:`PlanError` is raised.
    """

    name = "synflow"
    iterative = True

    def __init__(self, iterations: int = 100) -> None:
        if int(iterations) < 1:
            raise PlanError(f"synflow needs iterations >= 1, got {iterations!r}")
        self.iterations = int(iterations)

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None, *,
               example_inputs: tuple[torch.Tensor, ...] | None = None,
               sparsity: float | None = None) -> dict[str, torch.Tensor]:
        layers = list(layers)
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        if example_inputs is not None:
            shape = tuple(example_inputs[0].shape[1:])
        elif data is not None:
            shape = tuple(next(iter(data()))[0].shape[1:])
        else:
            raise PlanError("synflow needs the input shape: pass example_inputs=(tensor,) (data is not needed)")
        if sparsity is not None and not 0.0 <= sparsity < 1.0:
            raise PlanError(f"sparsity {sparsity!r} out of range: 0 <= sparsity < 1")
        work = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            for t in list(work.parameters()) + [b for b in work.buffers() if b.is_floating_point()]:
                t.abs_()
            # R sums products of |weights| over input→output paths: additive terms (biases,
            # BatchNorm shifts and running means) would inject flow that bypasses the layers
            # before them and, once those are thinned, starve them (layer collapse).
            for mod in work.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                    mod.running_mean.zero_()
                for pname, p in mod.named_parameters(recurse=False):
                    if pname == "bias" or (isinstance(mod, nn.modules.batchnorm._BatchNorm) and pname != "weight"):
                        p.zero_()
        for p in work.parameters():
            p.requires_grad_(False)
        weights = {n: m.weight for n, m in _modules(work, layers).items()}
        for w in weights.values():
            w.requires_grad_(True)
        originals = {n: w.detach().clone() for n, w in weights.items()}
        x = torch.ones((1, *shape), dtype=torch.float64)
        rounds = self.iterations if sparsity else 1
        density = 1.0 - (sparsity or 0.0)
        masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        pruned_round = {n: torch.full(w.shape, rounds, dtype=torch.long) for n, w in weights.items()}
        last = {n: torch.zeros_like(w) for n, w in weights.items()}
        for k in range(rounds):
            with torch.no_grad():
                for n, w in weights.items():
                    w.copy_(originals[n] * masks[n])
            grads = torch.autograd.grad(work(x).sum(), list(weights.values()))
            cur = {n: (w.detach() * g).abs() for (n, w), g in zip(weights.items(), grads)}
            if not sparsity:
                return {n: s.float() for n, s in cur.items()}
            keep = global_keep(cur, density ** ((k + 1) / rounds))
            for n in weights:
                newly = masks[n] & ~keep[n]
                pruned_round[n] = torch.where(newly, k, pruned_round[n])
                last[n] = torch.where(newly, cur[n], last[n])
                masks[n] &= keep[n]
        for n in weights:
            last[n] = torch.where(masks[n], cur[n], last[n])
        return tiered_scores(pruned_round, last, rounds)


class IMP(Criterion):
    """Iterative magnitude pruning with weight rewinding (Frankle & Carbin, 2019; Frankle et
    al., 2020): train, prune the smallest-magnitude weights, rewind the survivors to their
    values at the rewind point, repeat for ``rounds`` rounds (density after round ``r`` is
    ``(1 - sparsity)^(r/rounds)``). Needs ``train`` (see :data:`hwsearch.lottery.TrainFn`),
    data and the target ``sparsity``; raises :class:`PlanError` without any of them. Scores are
    tiered by the round a weight was pruned in. For the rewound weights themselves use
    :func:`hwsearch.lottery.imp`.
    """

    name = "imp"
    needs_data = True
    iterative = True

    def __init__(self, train: Callable[[nn.Module, DataBatches], None] | None = None, rounds: int = 3,
                 rewind_iteration: int | None = 0, rewind_epoch: int | None = None, scope: str = "global") -> None:
        self.train = train
        self.rounds = int(rounds)
        self.rewind_iteration = rewind_iteration
        self.rewind_epoch = rewind_epoch
        self.scope = scope

    def scores(self, model: nn.Module, layers: Iterable[str], data: DataBatches | None = None, *,
               example_inputs: tuple[torch.Tensor, ...] | None = None,
               sparsity: float | None = None) -> dict[str, torch.Tensor]:
        if self.train is None:
            raise PlanError("criterion 'imp' needs a training function: importance.get('imp', train=fn) with "
                            "fn(model, data) training the model in place")
        data = self._require_data(data)
        if sparsity is None:
            raise PlanError("criterion 'imp' needs the target sparsity (fraction of weights removed) as sparsity=")
        ticket = lottery.imp(model, list(layers), self.train, data, sparsity=sparsity, rounds=self.rounds,
                             rewind_iteration=self.rewind_iteration, rewind_epoch=self.rewind_epoch,
                             scope=self.scope)
        return ticket.scores


_REGISTRY: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    """Add a criterion instance (its defaults) to the registry under ``criterion.name``."""
    _REGISTRY[criterion.name] = criterion
    return criterion


def get(name: str | Criterion, **params: object) -> Criterion:
    """The criterion called ``name`` (an instance passes through); with ``params`` a new
    instance of its class configured by them. Raises :class:`PlanError` listing the valid
    names, or the valid parameters."""
    if isinstance(name, Criterion):
        if params:
            raise PlanError(f"parameters {sorted(params)} given with a criterion instance; configure the instance")
        return name
    try:
        base = _REGISTRY[name]
    except KeyError:
        raise PlanError(f"unknown importance criterion {name!r}; valid: {', '.join(sorted(_REGISTRY))}") from None
    if not params:
        return base
    valid = [p for p in inspect.signature(type(base).__init__).parameters if p != "self"]
    bad = sorted(set(params) - set(valid))
    if bad:
        raise PlanError(f"criterion {name!r} takes no parameter {', '.join(bad)}; valid: {', '.join(valid) or 'none'}")
    return type(base)(**params)


def names() -> list[str]:
    return sorted(_REGISTRY)


for _c in (Magnitude(), Random(), Taylor(), OBD(), SNIP(), GraSP(), SynFlow(), IMP()):
    register(_c)

