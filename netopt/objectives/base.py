"""The objective contract: what a strategy maximizes (paper, Eq. 1: Acc(Net)).

An objective fine-tunes a candidate network and scores it on the holdout split; the test
split is only ever reported, never used to choose (the paper's holdout protocol).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Evaluation", "Objective"]


@dataclass(frozen=True)
class Evaluation:
    """A score on the holdout split and the training it cost."""

    score: float
    """The holdout metric (accuracy in [0, 1], or any other); higher is better."""
    steps: int
    """Training steps spent to reach it."""


class Objective(ABC):
    """Fine-tunes networks in place and scores them: short-term per proposal, long-term at the end."""

    @abstractmethod
    def short_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        """Fine-tune in place for `steps` on the training split, then score on holdout (ShortTermFineTune)."""

    @abstractmethod
    def long_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        """Fine-tune the chosen network in place for `steps`, then score on holdout (LongTermFineTune)."""

    @abstractmethod
    def test(self, module: nn.Module) -> float | None:
        """The metric on the test split (reported, never used to choose); None without a test split."""

    def training_inputs(self, batches: int, seed: int) -> list[torch.Tensor]:
        """Up to `batches` batches of training inputs (seeded), to re-estimate the BatchNorm
        statistics of a network that was not trained as it is (NetAdaptV2's sub-networks); optional.
        (An objective written for netopt before 2026-12 named this `calibration_inputs`: still
        honoured, with a DeprecationWarning.)"""
        legacy = getattr(self, "calibration_inputs", None)
        if legacy is None:
            raise NotImplementedError(f"{type(self).__name__} gives no training inputs")
        warnings.warn(f"{type(self).__name__}.calibration_inputs is deprecated: rename it training_inputs",
                      DeprecationWarning, stacklevel=2)
        return legacy(batches, seed)  # type: ignore[no-any-return]

    def example_input(self) -> torch.Tensor:
        """A batch-1 input shaped like the data, for tracing and measuring (optional)."""
        raise NotImplementedError(f"{type(self).__name__} has no example input; pass one to netopt.trace")
