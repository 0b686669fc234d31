"""Short- and long-term fine-tuning (NetAdapt's Short/LongTermFineTune) for an exact step budget.

SGD with momentum by default (the paper's); a recipe of one's own through `optimizer=`,
`loss=`, a learning-rate schedule per phase and gradient clipping. Training runs on the
trainer's `device` ("auto": CUDA when present) with optional mixed precision there, and the
module goes back to the CPU afterwards, where netopt measures and saves it.

Training is reproducible: the batch order comes from a `torch.Generator` seeded by the caller
(for a `DataLoader`, its sampler draws from the seeded RNG), and any randomness inside the
module (dropout) draws from a forked global RNG seeded the same way, so the same weights and
the same seed give bit-identical results on CPU, and the caller's RNG state is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from netopt.errors import ConfigError
from netopt.frozen import Frozen
from netopt.measure.base import settings_from

__all__ = ["Phase", "Schedule", "Trainer", "TrainerSettings", "batches_of", "resolve_device"]

Schedule = Literal["constant", "cosine", "linear"]
Phase = Literal["short", "long"]
Batch = tuple[torch.Tensor, torch.Tensor]


class TrainerSettings(Frozen):
    """SGD with momentum and weight decay (the paper's TF defaults: 4e-5 decay), and how it runs."""


    lr: float = Field(0.01, gt=0.0, allow_inf_nan=False, description="learning rate (peak, for cosine)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(4e-5, ge=0.0, allow_inf_nan=False, description="L2 penalty")
    batch_size: int = Field(64, ge=2, description="examples a step from in-memory tensors (>= 2 so that BatchNorm "
                                                   "can train); a DataLoader brings its own")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label smoothing")
    short_schedule: Schedule = Field("constant", description="learning rate over a proposal's short-term steps")
    long_schedule: Schedule = Field("cosine", description="learning rate over the final network's long-term steps")
    clip_grad_norm: float | None = Field(None, gt=0.0, allow_inf_nan=False,
                                         description="clip the gradients' total L2 norm to this (None: no clipping)")
    device: str = Field("auto", description='where to train: "auto" (CUDA when present, else CPU), "cpu", "cuda", '
                                           '"cuda:1"')
    amp: bool = Field(False, description="mixed precision (float16 autocast, gradient scaling) when on CUDA")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        resolve_device(value)
        return value


def resolve_device(device: str) -> torch.device:
    """`device` as a torch.device ("auto": CUDA when present), or one ConfigError line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; give \"auto\", \"cpu\" or \"cuda\"") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no CUDA device (torch "
                         f"{torch.__version__}, cuda available: False); give device=\"auto\" or \"cpu\"")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: netopt trains on \"cpu\" or \"cuda\"; give one of them, or \"auto\"")
    return resolved


Optimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LRSchedule = Callable[[torch.optim.Optimizer, int, str], Any]


class Trainer:
    """Fine-tunes a module in place for an exact number of optimizer steps, and scores it.

    `optimizer(params) -> torch.optim.Optimizer` replaces SGD (the `lr`, `momentum` and
    `weight_decay` settings are then the factory's business); `loss(output, target)` replaces
    cross-entropy; `lr_schedule(optimizer, steps, phase) -> LRScheduler` replaces the named
    schedules (stepped once a step). Everything else is a setting (`TrainerSettings`).
    """

    def __init__(self, *, optimizer: Optimizer | None = None, loss: Loss | None = None,
                 lr_schedule: LRSchedule | None = None, **settings: Any) -> None:
        self.settings: TrainerSettings = settings_from(TrainerSettings, settings, "Trainer")
        for name, fn in (("optimizer", optimizer), ("loss", loss), ("lr_schedule", lr_schedule)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"Trainer: {name}={fn!r} is not callable; pass a function (e.g. optimizer=lambda "
                                  "params: torch.optim.AdamW(params, lr=1e-3)) or None for the default")
        self.optimizer, self.loss, self.lr_schedule = optimizer, loss, lr_schedule

    def __repr__(self) -> str:
        custom = [f"{k}={v!r}" for k, v in (("optimizer", self.optimizer), ("loss", self.loss),
                                            ("lr_schedule", self.lr_schedule)) if v is not None]
        return f"Trainer({', '.join([*custom, *(f'{k}={v!r}' for k, v in self.settings.model_dump().items())])})"

    @property
    def device(self) -> torch.device:
        return resolve_device(self.settings.device)

    def train(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int,
              *, schedule: Schedule | None = None, phase: Phase = "short") -> int:
        """`steps` mini-batches of in-memory tensors, cycling through seeded permutations of (x, y).

        The learning rate follows `schedule`, by default the phase's (`short_schedule`, or
        `long_schedule` for "long"). BatchNorm trains in train mode; the module is left in eval
        mode on the CPU. Returns the number of steps done.
        """
        _check_pair(x, y, "train")
        size = min(self.settings.batch_size, len(y))

        def batches() -> Iterator[Batch]:
            for rows in _batches(len(y), size, steps, seed):
                yield x[rows], y[rows]

        return self.fit(module, batches, steps, seed, schedule=schedule, phase=phase)

    def fit(self, module: nn.Module, batches: Callable[[], Iterable[Any]], steps: int, seed: int,
            *, schedule: Schedule | None = None, phase: Phase = "short",
            check: Callable[[Any, int], Batch] | None = None) -> int:
        """`steps` optimizer steps on (inputs, targets) batches; `batches()` is called for a fresh
        pass whenever one runs out (an epoch of a DataLoader), inside the seeded RNG, so that
        a loader's shuffling follows `seed`. `check(batch, k)` validates each batch."""
        if steps < 0 or (schedule is not None and schedule not in ("constant", "cosine", "linear")):
            raise ConfigError(f"train(steps={steps!r}, schedule={schedule!r}): steps must be >= 0 and schedule "
                              "'constant', 'cosine' or 'linear'; pass e.g. steps=100")
        s = self.settings
        device = self.device
        module.to(device)
        optimizer = self._optimizer(module)
        scheduler = self.lr_schedule(optimizer, steps, phase) if self.lr_schedule is not None else None
        named = schedule or (s.long_schedule if phase == "long" else s.short_schedule)
        base = [g["lr"] for g in optimizer.param_groups]
        loss_fn = self.loss if self.loss is not None else nn.CrossEntropyLoss(label_smoothing=s.label_smoothing)
        amp = s.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if amp else None
        module.train()
        try:
            with _seeded(seed, device):
                for step, batch in enumerate(_cycled(batches, steps, check)):
                    if scheduler is None:
                        _set_lr(optimizer, base, step, steps, named)
                    inputs, targets = batch
                    inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext():
                        loss = loss_fn(module(inputs), targets)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        if s.clip_grad_norm is not None:
                            scaler.unscale_(optimizer)
                            nn.utils.clip_grad_norm_(module.parameters(), s.clip_grad_norm)
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        if s.clip_grad_norm is not None:
                            nn.utils.clip_grad_norm_(module.parameters(), s.clip_grad_norm)
                        optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
        finally:
            module.eval()
            module.to("cpu")
        return steps

    @torch.no_grad()
    def accuracy(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
        """Top-1 accuracy in [0, 1] on in-memory tensors, in eval mode without gradients."""
        _check_pair(x, y, "accuracy")
        if batch_size < 1:
            raise ConfigError(f"accuracy(batch_size={batch_size!r}): must be >= 1; pass e.g. 512")
        starts = range(0, len(y), batch_size)
        return self.accuracy_of(module, ((x[i:i + batch_size], y[i:i + batch_size]) for i in starts))

    @torch.no_grad()
    def accuracy_of(self, module: nn.Module, batches: Iterable[Any],
                    check: Callable[[Any, int], Batch] | None = None) -> float:
        """Top-1 accuracy in [0, 1] over (inputs, labels) batches (a DataLoader), on the trainer's device."""
        device = self.device
        module.eval()
        module.to(device)
        correct = total = 0
        try:
            with torch.autocast("cuda", dtype=torch.float16) if self.settings.amp and device.type == "cuda" \
                    else nullcontext():
                for k, batch in enumerate(batches):
                    inputs, labels = check(batch, k) if check is not None else batch
                    logits = module(inputs.to(device, non_blocking=True))
                    correct += int((logits.argmax(dim=1).cpu() == labels.cpu()).sum())
                    total += len(labels)
        finally:
            module.to("cpu")
        if total == 0:
            raise ConfigError("accuracy: the data yielded no examples; give a split or loader with some")
        return correct / total

    def _optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        s = self.settings
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"{type(module).__name__} has no trainable parameters: fine-tuning needs some; "
                              "set requires_grad=True on the weights to train")
        if self.optimizer is not None:
            optimizer = self.optimizer(params)
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise ConfigError(f"Trainer: optimizer={self.optimizer!r} returned {type(optimizer).__name__}, not a "
                                  "torch.optim.Optimizer; return one built on the parameters it is given")
            return optimizer
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def _lr(lr: float, step: int, steps: int, schedule: str) -> float:
    """The learning rate at `step` of `steps` for a base rate `lr`."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
    if schedule == "linear":
        return lr * (1.0 - step / steps)
    return lr


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNGs (and the device's) seeded by `seed` inside, restored after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _cycled(batches: Callable[[], Iterable[Any]], steps: int,
            check: Callable[[Any, int], Batch] | None) -> Iterator[Batch]:
    """Exactly `steps` batches, starting a new pass over `batches()` whenever one ends."""
    done = 0
    while done < steps:
        before = done
        for batch in batches():
            yield check(batch, done) if check is not None else batch
            done += 1
            if done == steps:
                return
        if done == before:
            raise ConfigError("train: the training data yielded no batch; give a loader or split with examples "
                              "(a DataLoader with drop_last=True needs at least one full batch)")


def batches_of(loader: Iterable[Any]) -> Callable[[], Iterable[Any]]:
    """A DataLoader as a source of passes for `Trainer.fit`, its own generator (if it has one)
    reseeded from the seeded global RNG so that its order follows the seed too."""
    def passes() -> Iterable[Any]:
        generator = getattr(loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        return loader
    return passes


def _batches(n: int, size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """Index batches for `steps` steps: full batches of a fresh seeded permutation per epoch."""
    per_epoch = n // size
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for i in range(min(per_epoch, steps - done)):
            yield order[i * size:(i + 1) * size]
        done += min(per_epoch, steps - done)


def _set_lr(optimizer: torch.optim.Optimizer, base: list[float], step: int, steps: int, schedule: str) -> None:
    for group, lr in zip(optimizer.param_groups, base, strict=True):
        group["lr"] = _lr(lr, step, steps, schedule)


def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if len(x) != len(y) or len(y) == 0:
        raise ConfigError(f"{what}: x has {len(x)} examples and y {len(y)}: they must match and be non-empty; "
                          "pass one label an example")
    if y.dtype != torch.long:
        raise ConfigError(f"{what}: labels have dtype {y.dtype}: cross-entropy needs int64 class indices; "
                          "pass y.long()")
