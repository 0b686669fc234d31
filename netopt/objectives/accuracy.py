"""Top-1 accuracy on a `Splits` data set: the paper's objective, with its holdout protocol."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from netopt.data import Splits
from netopt.objectives.base import Evaluation, Objective
from netopt.objectives.train import Trainer

__all__ = ["Accuracy"]


class Accuracy(Objective):
    """Fine-tune on `data.train_*`, score on `data.holdout_*`, report on `data.test_*`.

    Short-term fine-tuning runs SGD at the trainer's constant learning rate; long-term
    fine-tuning starts at the same rate and decays it to 0 by a cosine over its steps, so the
    final network settles instead of ending on a large step.
    """

    def __init__(self, data: Splits, trainer: Trainer | None = None) -> None:
        self.data = data
        self.trainer = trainer if trainer is not None else Trainer()
        batch, examples = self.trainer.settings.batch_size, len(data.train_y)
        if batch > examples:
            warnings.warn(f"batch_size {batch} exceeds the {examples} training examples: every step trains on all "
                          "of them", UserWarning, stacklevel=2)

    def __repr__(self) -> str:
        return f"Accuracy({self.data!r}, {self.trainer!r})"

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        done = self.trainer.train(module, self.data.train_x, self.data.train_y, steps, seed)
        return Evaluation(self.holdout(module), done)

    def long_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        done = self.trainer.train(module, self.data.train_x, self.data.train_y, steps, seed, schedule="cosine")
        return Evaluation(self.holdout(module), done)

    def holdout(self, module: nn.Module) -> float:
        """Accuracy on the holdout split, without training (the score proposals are chosen by)."""
        return self.trainer.accuracy(module, self.data.holdout_x, self.data.holdout_y)

    def test(self, module: nn.Module) -> float:
        return self.trainer.accuracy(module, self.data.test_x, self.data.test_y)

    def example_input(self) -> torch.Tensor:
        return self.data.train_x[:1].clone()
