"""Objectives: what a strategy maximizes, with NetAdapt's train / holdout / test protocol."""

from netopt.objectives.accuracy import Accuracy
from netopt.objectives.base import Evaluation, Objective
from netopt.objectives.function import FunctionObjective
from netopt.objectives.train import Trainer, TrainerSettings

__all__ = ["Accuracy", "Evaluation", "FunctionObjective", "Objective", "Trainer", "TrainerSettings"]
