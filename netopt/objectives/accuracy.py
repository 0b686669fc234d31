"""Top-1 accuracy: the paper's objective, with its holdout protocol, on in-memory `Splits` or on
`DataLoader`s (streamed, never loaded whole)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from netopt.data import DataError, Splits
from netopt.objectives.base import Evaluation, Objective
from netopt.objectives.train import Batch, Trainer, batches_of

__all__ = ["Accuracy"]


class Accuracy(Objective):
    """Fine-tune on the training split, score on holdout, report on test (never used to choose).

    Short-term fine-tuning follows the trainer's `short_schedule` (constant by default); long-term
    fine-tuning its `long_schedule` (a cosine from the learning rate to 0 by default), so the
    final network settles instead of ending on a large step.

    `Accuracy(splits)` trains on tensors in memory; `Accuracy.from_loaders(train, holdout)` on
    DataLoaders of any Dataset. Inputs reach the model exactly as the data give them: any
    preprocessing is the data's own.
    """

    def __init__(self, data: Splits, trainer: Trainer | None = None) -> None:
        self.data: Splits | None = data
        self.loaders: tuple[Iterable[Any], Iterable[Any], Iterable[Any] | None] | None = None
        self.trainer = trainer if trainer is not None else Trainer()
        batch, examples = self.trainer.settings.batch_size, len(data.train_y)
        if batch > examples:
            warnings.warn(f"batch_size {batch} exceeds the {examples} training examples: every step trains on all "
                          "of them", UserWarning, stacklevel=2)
        self._example: torch.Tensor | None = None

    @classmethod
    def from_loaders(cls, train: Iterable[Any], holdout: Iterable[Any], test: Iterable[Any] | None = None,
                     trainer: Trainer | None = None) -> Accuracy:
        """Top-1 accuracy on loaders that yield `(inputs, labels)` batches (`torch.utils.data.DataLoader`).

        Training cycles `train` for exactly the steps asked, a new pass when one ends; its
        shuffling draws from the RNG netopt seeds per proposal, so a seed still gives the same
        result. `holdout` chooses, `test` is only reported. Every batch is checked: float
        inputs shaped like the first, integer class labels.
        """
        for name, loader in (("train", train), ("holdout", holdout), ("test", test)):
            if loader is not None and not hasattr(loader, "__iter__"):
                raise DataError(f"Accuracy.from_loaders: {name}={loader!r} is not iterable; pass a "
                                "torch.utils.data.DataLoader that yields (inputs, labels) batches")
        self = cls.__new__(cls)
        self.data, self.loaders = None, (train, holdout, test)
        self.trainer = trainer if trainer is not None else Trainer()
        self._example = None
        return self

    def __repr__(self) -> str:
        if self.data is not None:
            return f"Accuracy({self.data!r}, {self.trainer!r})"
        return f"Accuracy.from_loaders({', '.join(map(_describe, self.loaders or ()))}, trainer={self.trainer!r})"

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        done = self._fit(module, steps, seed, "short")
        return Evaluation(self.holdout(module), done)

    def long_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        done = self._fit(module, steps, seed, "long")
        return Evaluation(self.holdout(module), done)

    def holdout(self, module: nn.Module) -> float:
        """Accuracy on the holdout split, without training (the score proposals are chosen by)."""
        if self.data is not None:
            return self.trainer.accuracy(module, self.data.holdout_x, self.data.holdout_y)
        return self._accuracy(module, "holdout")

    def test(self, module: nn.Module) -> float | None:
        if self.data is not None:
            return self.trainer.accuracy(module, self.data.test_x, self.data.test_y) if len(self.data.test_y) else None
        return self._accuracy(module, "test") if self.loaders and self.loaders[2] is not None else None

    def training_inputs(self, batches: int, seed: int) -> list[torch.Tensor]:
        if self.data is not None:
            size = min(self.trainer.settings.batch_size, len(self.data.train_y))
            generator = torch.Generator().manual_seed(seed)
            return [self.data.train_x[torch.randperm(len(self.data.train_y), generator=generator)[:size]]
                    for _ in range(batches)]
        out: list[torch.Tensor] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for k, batch in enumerate(batches_of(self._loader("train"))()):
                if k == batches:
                    break
                out.append(_pair(batch, "train", k, tuple(self.example_input().shape[1:]))[0])
        return out

    def example_input(self) -> torch.Tensor:
        if self.data is not None:
            return self.data.train_x[:1].clone()
        if self._example is None:
            with torch.random.fork_rng(devices=[]):  # a shuffling loader draws from the RNG: leave it untouched
                torch.manual_seed(0)
                first = next(iter(self._loader("train")), None)
            if first is None:
                raise DataError("Accuracy.from_loaders: the train loader yields no batch; give one with examples")
            self._example = _pair(first, "train", 0, None)[0][:1].clone()
        return self._example

    # --- loaders ---------------------------------------------------------------------------------

    def _loader(self, split: str) -> Iterable[Any]:
        assert self.loaders is not None
        loader = self.loaders[("train", "holdout", "test").index(split)]
        assert loader is not None
        return loader

    def _fit(self, module: nn.Module, steps: int, seed: int, phase: str) -> int:
        if self.data is not None:
            return self.trainer.train(module, self.data.train_x, self.data.train_y, steps, seed,
                                      phase=phase)  # type: ignore[arg-type]
        shape = tuple(self.example_input().shape[1:])
        return self.trainer.fit(module, batches_of(self._loader("train")), steps, seed, phase=phase,  # type: ignore[arg-type]
                                check=lambda batch, k: _pair(batch, "train", k, shape))

    def _accuracy(self, module: nn.Module, split: str) -> float:
        shape = tuple(self.example_input().shape[1:])
        with torch.random.fork_rng(devices=[]):  # a shuffled holdout loader must not move the caller's RNG
            return self.trainer.accuracy_of(module, self._loader(split), check=lambda b, k: _pair(b, split, k, shape))


def _pair(batch: Any, split: str, k: int, shape: tuple[int, ...] | None) -> Batch:
    """A loader's batch as (float inputs, int64 labels), or one DataError line saying what is wrong."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not all(isinstance(t, torch.Tensor) for t in batch):
        got = type(batch).__name__ if not isinstance(batch, (tuple, list)) else \
            f"a {type(batch).__name__} of {len(batch)} ({', '.join(type(t).__name__ for t in batch)})"
        raise DataError(f"{split} loader batch {k} is {got}: Accuracy needs (inputs, labels) tensor pairs; make the "
                        "Dataset return (tensor, label), or use netopt.FunctionObjective for other batches")
    inputs, labels = batch
    if not inputs.is_floating_point():
        raise DataError(f"{split} loader batch {k} has inputs of dtype {inputs.dtype}: the model takes floating-point "
                        "inputs; convert them in the Dataset (e.g. torchvision's ToTensor, or x.float() / 255)")
    if shape is not None and tuple(inputs.shape[1:]) != shape:
        raise DataError(f"{split} loader batch {k} has inputs of shape {tuple(inputs.shape)} but the model takes "
                        f"{shape} per example (the train loader's first batch); make every loader yield that shape")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1 or len(labels) != len(inputs):
        raise DataError(f"{split} loader batch {k} has labels of shape {tuple(labels.shape)} and dtype {labels.dtype} "
                        f"for {len(inputs)} inputs: Accuracy needs one integer class index an input; for other "
                        "targets use netopt.FunctionObjective")
    return inputs, labels.long()


def _describe(loader: Any) -> str:
    if loader is None:
        return "None"
    size = getattr(loader, "batch_size", None)
    dataset = getattr(loader, "dataset", None)
    return f"{type(loader).__name__}({type(dataset).__name__ if dataset is not None else '?'}, batch_size={size})"
