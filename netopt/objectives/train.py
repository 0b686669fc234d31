"""Short- and long-term fine-tuning (NetAdapt's Short/LongTermFineTune): SGD for a step budget.

Training is reproducible: the batch order comes from a `torch.Generator` seeded by the caller,
and any randomness inside the module (dropout) draws from a forked global RNG seeded the
same way, so the same weights and the same seed give bit-identical results on CPU, and the
caller's global RNG state is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from netopt.errors import ConfigError
from netopt.measure.base import settings_from

__all__ = ["Schedule", "Trainer", "TrainerSettings"]

Schedule = Literal["constant", "cosine"]


class TrainerSettings(BaseModel):
    """SGD with momentum and weight decay (the paper's TF defaults: 4e-5 decay)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(0.01, gt=0.0, allow_inf_nan=False, description="learning rate (peak, for cosine)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(4e-5, ge=0.0, allow_inf_nan=False, description="L2 penalty")
    batch_size: int = Field(64, ge=2, description="examples a step (>= 2 so that BatchNorm can train)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing")


class Trainer:
    """Fine-tunes a module in place for an exact number of SGD steps, and scores it."""

    def __init__(self, **settings: Any) -> None:
        self.settings: TrainerSettings = settings_from(TrainerSettings, settings, "Trainer")

    def __repr__(self) -> str:
        return f"Trainer({', '.join(f'{k}={v!r}' for k, v in self.settings.model_dump().items())})"

    def train(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int,
              *, schedule: Schedule = "constant") -> int:
        """SGD for exactly `steps` mini-batches, cycling through seeded permutations of (x, y).

        `schedule="cosine"` decays the learning rate from `lr` to 0 over the steps (long-term
        fine-tuning). BatchNorm trains in train mode; the module is left in eval mode.
        Returns the number of steps done.
        """
        _check_pair(x, y, "train")
        if steps < 0 or schedule not in ("constant", "cosine"):
            raise ConfigError(f"train(steps={steps!r}, schedule={schedule!r}): steps must be >= 0 and schedule "
                              "'constant' or 'cosine'; pass e.g. steps=100")
        device = _device(module)
        optimizer = self._optimizer(module)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.settings.label_smoothing)
        module.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for step, rows in enumerate(_batches(len(y), self.settings.batch_size, steps, seed)):
                _set_lr(optimizer, self._lr(step, steps, schedule))
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(module(x[rows].to(device)), y[rows].to(device))
                loss.backward()
                optimizer.step()
        module.eval()
        return steps

    @torch.no_grad()
    def accuracy(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
        """Top-1 accuracy in [0, 1], in eval mode without gradients."""
        _check_pair(x, y, "accuracy")
        if batch_size < 1:
            raise ConfigError(f"accuracy(batch_size={batch_size!r}): must be >= 1; pass e.g. 512")
        module.eval()
        device = _device(module)
        correct = 0
        for start in range(0, len(y), batch_size):
            logits = module(x[start:start + batch_size].to(device))
            correct += int((logits.argmax(dim=1).cpu() == y[start:start + batch_size]).sum())
        return correct / len(y)

    def _optimizer(self, module: nn.Module) -> torch.optim.SGD:
        s = self.settings
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"{type(module).__name__} has no trainable parameters: fine-tuning needs some; "
                              "set requires_grad=True on the weights to train")
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)

    def _lr(self, step: int, steps: int, schedule: Schedule) -> float:
        if schedule == "cosine":
            return self.settings.lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        return self.settings.lr


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """Index batches for `steps` steps: full batches of a fresh seeded permutation per epoch."""
    size = min(batch_size, n)
    per_epoch = n // size
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for i in range(min(per_epoch, steps - done)):
            yield order[i * size:(i + 1) * size]
        done += min(per_epoch, steps - done)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if len(x) != len(y) or len(y) == 0:
        raise ConfigError(f"{what}: x has {len(x)} examples and y {len(y)}: they must match and be non-empty; "
                          "pass one label an example")
    if y.dtype != torch.long:
        raise ConfigError(f"{what}: labels have dtype {y.dtype}: cross-entropy needs int64 class indices; "
                          "pass y.long()")
