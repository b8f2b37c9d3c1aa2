"""The embedded default (a 1-D CNN on MNIST-1D generated locally) and loading users' own.

Nothing is downloaded: MNIST-1D is generated with the ``mnist1d`` package's procedural
generator (``make_dataset``, never ``get_dataset``); the reference model trains in seconds on
2 cores and is cached (``$HWSEARCH_CACHE``, default ``~/.cache/hwsearch``). Generating the
data and training the model log their progress at INFO on this module's logger (the CLI shows
it), since a first run otherwise waits silently for ~20 s.

Users bring their own with ``module:function`` strings:

* model: ``fn()`` returns a trained ``nn.Module``, or ``(module, example_input)``;
* data: ``fn()`` returns a :class:`Dataset`, a tuple ``(x_train, y_train, x_val, y_val)``, or
  ``(x_val, y_val)`` (then fine-tuning and data-driven criteria are unavailable).
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwsearch.core.errors import HwsearchError, ModelError

__all__ = ["Dataset", "MNIST1DNet", "mnist1d_data", "mnist1d_cnn", "mnist1d_cnn_small", "train", "evaluate",
           "load_cached", "load_callable", "load_model", "load_data", "cache_dir", "REFERENCE"]

log = logging.getLogger(__name__)

REFERENCE = ("hwsearch.zoo:mnist1d_cnn", "hwsearch.zoo:mnist1d_data")
_MODEL_REVISION = "mnist1d-cnn-v1"  # bump when the architecture or training recipe changes


@dataclass(frozen=True)
class Dataset:
    """Tensors of a classification task; ``x_train``/``y_train`` may be None (eval only)."""

    x_val: torch.Tensor
    y_val: torch.Tensor
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None
    name: str = "custom"

    @property
    def example_input(self) -> torch.Tensor:
        return self.x_val[:1]

    def batches(self, split: str = "train", batch_size: int = 128, *, shuffle: bool = False,
                seed: int = 0, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_val, self.y_val)
        if x is None or y is None:
            raise ModelError(f"dataset {self.name!r} has no {split} split: return (x_train, y_train, x_val, y_val) "
                             "from your --data function")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(x))
        n = 0
        for i in range(0, len(x), batch_size):
            if limit is not None and n >= limit:
                return
            j = idx[i:i + batch_size]
            yield x[j], y[j]
            n += 1


def cache_dir() -> Path:
    d = Path(os.environ.get("HWSEARCH_CACHE", Path.home() / ".cache" / "hwsearch"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def mnist1d_data(seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus 2020): 4000 train / 1000 test signals of length 40, 10 classes,
    generated locally. Inputs are shaped (N, 1, 40) float32."""
    path = cache_dir() / f"mnist1d-seed{seed}.pt"
    if path.exists():
        try:
            d = torch.load(path, weights_only=True)
            return Dataset(d["x_val"], d["y_val"], d["x_train"], d["y_train"], name="mnist1d")
        except Exception:  # a corrupt cache is regenerated, never trusted
            log.warning("regenerating corrupt MNIST-1D cache %s", path)
    from mnist1d.data import get_dataset_args, make_dataset

    log.info("generating MNIST-1D (seed %d) locally; first run only, cached at %s", seed, path)
    args = get_dataset_args()
    args.seed = seed
    raw = make_dataset(args)
    d = {"x_train": torch.tensor(raw["x"], dtype=torch.float32).unsqueeze(1),
         "y_train": torch.tensor(raw["y"], dtype=torch.long),
         "x_val": torch.tensor(raw["x_test"], dtype=torch.float32).unsqueeze(1),
         "y_val": torch.tensor(raw["y_test"], dtype=torch.long)}
    _atomic_save(d, path)
    return Dataset(d["x_val"], d["y_val"], d["x_train"], d["y_train"], name="mnist1d")


class MNIST1DNet(nn.Module):
    """A small 1-D CNN with the structures pruning must handle: a strided conv, a residual
    block (coupled channels), a depthwise conv, a pointwise conv, global pooling and a linear
    head. ``width`` scales every channel count."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv1d(1, w, 5, padding=2, bias=False)
        self.stem_bn = nn.BatchNorm1d(w)
        self.down = nn.Conv1d(w, 2 * w, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm1d(2 * w)
        self.res1 = nn.Conv1d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.res1_bn = nn.BatchNorm1d(2 * w)
        self.res2 = nn.Conv1d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.res2_bn = nn.BatchNorm1d(2 * w)
        self.dw = nn.Conv1d(2 * w, 2 * w, 3, padding=1, groups=2 * w, bias=False)
        self.dw_bn = nn.BatchNorm1d(2 * w)
        self.pw = nn.Conv1d(2 * w, 4 * w, 1, bias=False)
        self.pw_bn = nn.BatchNorm1d(4 * w)
        self.head = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(self.down_bn(self.down(x)))
        r = F.relu(self.res1_bn(self.res1(x)))
        x = F.relu(x + self.res2_bn(self.res2(r)))
        x = F.relu(self.dw_bn(self.dw(x)))
        x = F.relu(self.pw_bn(self.pw(x)))
        return self.head(x.mean(dim=-1))


def train(model: nn.Module, data: Dataset, *, epochs: int = 20, lr: float = 3e-3, batch_size: int = 128,
          seed: int = 0, steps: int | None = None,
          on_epoch: Callable[[int, int, float], None] | None = None) -> nn.Module:
    """Adam with cosine decay on ``data``'s train split; ``steps`` caps the number of updates
    (for short fine-tunes). ``on_epoch(epoch, epochs, mean_loss)`` is called after each full
    pass over the train split (epochs counted from 1). Returns ``model`` (trained in place,
    left in eval mode)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    n_batches = -(-len(data.x_train) // batch_size) if data.x_train is not None else 0
    total = steps if steps is not None else epochs * n_batches
    n_epochs = -(-total // n_batches) if n_batches else 0
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total))
    model.train()
    done = epoch = 0
    while done < total:
        loss_sum, n = 0.0, 0
        for x, y in data.batches("train", batch_size, shuffle=True, seed=seed + done):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum, n = loss_sum + loss.item(), n + 1
            done += 1
            if done >= total:
                break
        epoch += 1
        if on_epoch is not None:
            on_epoch(epoch, n_epochs, loss_sum / max(1, n))
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, params: dict[str, torch.Tensor] | None = None,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction, 0..1) on the validation split. ``params`` overrides parameters
    through ``torch.func.functional_call`` (masked weights without copying the model)."""
    model.eval()
    correct = 0
    for x, y in data.batches("val", batch_size):
        out = torch.func.functional_call(model, params, (x,), strict=False) if params else model(x)
        correct += int((out.argmax(-1) == y).sum())
    return correct / len(data.y_val)


def mnist1d_cnn_small() -> tuple[nn.Module, torch.Tensor]:
    """A width-8 variant of the reference model for quick checks and tests (≈5 s to train)."""
    return mnist1d_cnn(width=8, epochs=10)


def mnist1d_cnn(width: int = 32, epochs: int = 25) -> tuple[nn.Module, torch.Tensor]:
    """The reference model, trained once on MNIST-1D and cached (≈10–30 s on 2 cores)."""
    data = mnist1d_data()
    key = hashlib.sha1(f"{_MODEL_REVISION}-w{width}-e{epochs}-{torch.__version__}".encode()).hexdigest()[:10]
    path = cache_dir() / f"mnist1d_cnn-w{width}-{key}.pt"
    model = MNIST1DNet(width)
    if load_cached(model, path):
        return model.eval(), data.example_input
    log.info("training the reference model (width %d, %d epochs; first run only) to cache it at %s",
             width, epochs, path)
    start = time.perf_counter()
    every = max(1, epochs // 5)  # about five progress lines, whatever the epoch count

    def report(epoch: int, n_epochs: int, loss: float) -> None:
        if epoch % every == 0 and epoch < n_epochs:
            log.info("epoch %d/%d: training loss %.3f (%.0f s)", epoch, n_epochs, loss, time.perf_counter() - start)

    torch.manual_seed(0)
    train(model, data, epochs=epochs, on_epoch=report)
    _atomic_save(model.state_dict(), path)
    log.info("trained the reference model in %.0f s (%d epochs): validation accuracy %.3f; cached at %s",
             time.perf_counter() - start, epochs, evaluate(model, data), path)
    return model.eval(), data.example_input


def load_cached(model: nn.Module, path: Path) -> bool:
    """Load trained weights cached at ``path`` into ``model``; False when there are none or
    they are corrupt (then the caller retrains: a corrupt cache is never trusted)."""
    if not path.exists():
        return False
    try:
        model.load_state_dict(torch.load(path, weights_only=True))
        return True
    except Exception:
        log.warning("retraining: corrupt cached weights %s", path)
        return False


def trained_and_cached(model: nn.Module, data: Dataset, *, stem: str, tag: str, what: str, epochs: int,
                       lr: float, batch_size: int = 64) -> nn.Module:
    """``model`` with weights cached at ``<cache>/<stem>-<sha1(tag)[:10]>.pt`` (``tag`` names what
    makes the weights: revision, sizes, epochs, library versions), else trained on ``data``
    (:func:`train`, progress per epoch) and cached. Returns the model in eval mode."""
    path = cache_dir() / f"{stem}-{hashlib.sha1(tag.encode()).hexdigest()[:10]}.pt"
    if load_cached(model, path):
        return model.eval()
    log.info("training the %s: %d epochs on %d examples (cached at %s)", what, epochs, len(data.x_train), path)
    t0 = time.perf_counter()
    train(model, data, epochs=epochs, lr=lr, batch_size=batch_size,
          on_epoch=lambda e, n, loss: log.info("  epoch %d/%d: loss %.3f", e, n, loss))
    log.info("trained in %.0f s", time.perf_counter() - t0)
    _atomic_save(model.state_dict(), path)
    return model.eval()


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_callable(spec: str, what: str) -> Callable[[], object]:
    """Resolve ``module:function``; the module must be importable from ``sys.path`` (the
    ``hwsearch`` command adds the current directory, like ``python -m``). Raises
    :class:`ModelError` naming the spec when it is malformed or cannot be imported."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ModelError(f"--{what} {spec!r} must look like 'package.module:function'")
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:
        raise ModelError(f"--{what} {spec!r}: cannot import {mod_name!r} ({type(exc).__name__}: {exc}); run from "
                         "the directory that holds it, or pip install it") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ModelError(f"--{what} {spec!r}: {mod_name} has no callable {fn_name!r}")
    return fn


def _call_factory(spec: str, what: str) -> object:
    """Call the ``module:function`` factory; an exception it raises becomes one
    :class:`ModelError` line naming the factory and quoting the exception (chained, so the
    traceback is still there for ``hwsearch -v`` and API callers)."""
    fn = load_callable(spec, what)
    try:
        return fn()
    except HwsearchError:  # already one line naming the problem
        raise
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        quoted = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
        raise ModelError(f"--{what} {spec!r} raised {quoted}; fix the factory or give another "
                         "(`hwsearch -v ...` shows the traceback)") from exc


def load_model(spec: str) -> tuple[nn.Module, torch.Tensor | None]:
    """Call a ``module:function`` model factory; returns (model, example input or None).
    Raises :class:`ModelError` when it cannot be called, raises, or returns something else."""
    out = _call_factory(spec, "model")
    if isinstance(out, nn.Module):
        return out.eval(), None
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module):
        ex = out[1] if isinstance(out[1], torch.Tensor) else None
        return out[0].eval(), ex
    raise ModelError(f"--model {spec!r} returned {type(out).__name__}; return an nn.Module or (module, example_input)")


def load_data(spec: str) -> Dataset:
    """Call a ``module:function`` data factory (see the module docstring for accepted returns).
    Raises :class:`ModelError` when it cannot be called, raises, or returns something else."""
    out = _call_factory(spec, "data")
    if isinstance(out, Dataset):
        return out
    if isinstance(out, tuple) and all(isinstance(t, torch.Tensor) for t in out):
        if len(out) == 4:
            return Dataset(out[2], out[3], out[0], out[1], name=spec)
        if len(out) == 2:
            return Dataset(out[0], out[1], name=spec)
    raise ModelError(f"--data {spec!r} returned {type(out).__name__}; return a hwsearch.zoo.Dataset or tensors "
                     "(x_train, y_train, x_val, y_val) or (x_val, y_val)")
