"""Bring your own loop: an objective made of the user's functions (any task, any metric, any device).

    def fine_tune(model, steps, seed, phase):   # "short" (a proposal), "long" (the final; NetAdaptV2's supernet)
        ...train `model` in place for `steps` optimizer steps...
    def score(model) -> float:                  # the holdout metric, higher is better (mIoU, PSNR, ...)
        ...
    objective = netopt.FunctionObjective(fine_tune, score, test=test, example_input=torch.randn(1, 3, 64, 64))

netopt hands the functions a network it built (never the user's own module), on the CPU; what
they do with it (move it to a GPU, AMP, a scheduler) is theirs, and netopt moves it back.
Whatever they raise or return that is not a finite number stops the run with one line naming
the function; the run directory resumes from that proposal once the function is fixed.
"""

from __future__ import annotations

import math
import numbers
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from netopt.errors import ConfigError, NetoptError, ObjectiveError, first_line
from netopt.objectives.base import Evaluation, Objective

__all__ = ["FunctionObjective", "describe_function"]

FineTune = Callable[[nn.Module, int, int, str], Any]
Score = Callable[[nn.Module], Any]


class FunctionObjective(Objective):
    """`fine_tune(model, steps, seed, phase)` trains in place (it may return the steps it did);
    `score(model) -> float` is the holdout metric proposals are chosen by; `test(model) -> float`
    (optional) is reported, never used to choose; `example_input` is a batch-1 input for tracing
    and measuring (optional when `netopt.trace` is given one); `training_inputs(batches, seed)`
    (optional) yields up to `batches` batches of training inputs, which NetAdaptV2 uses to
    re-estimate a sub-network's BatchNorm statistics (`calibration=` is its deprecated name)."""

    def __init__(self, fine_tune: FineTune, score: Score, test: Score | None = None,
                 example_input: torch.Tensor | None = None, *,
                 training_inputs: Callable[[int, int], Any] | None = None,
                 calibration: Callable[[int, int], Any] | None = None) -> None:
        if calibration is not None:
            warnings.warn("FunctionObjective(calibration=...) is deprecated: pass training_inputs=...",
                          DeprecationWarning, stacklevel=2)
            training_inputs = training_inputs or calibration
        for name, fn in (("fine_tune", fine_tune), ("score", score), ("test", test),
                         ("training_inputs", training_inputs)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"FunctionObjective: {name}={fn!r} is not callable; pass a function "
                                  f"({'model, steps, seed, phase' if name == 'fine_tune' else 'model'}) -> ...")
        if example_input is not None and not isinstance(example_input, torch.Tensor):
            raise ConfigError(f"FunctionObjective: example_input is a {type(example_input).__name__}, not a tensor; "
                              "pass a batch-1 input such as torch.randn(1, 3, 224, 224)")
        self.fine_tune, self.score, self.test_fn, self.inputs = fine_tune, score, test, training_inputs
        self._example = example_input

    def __repr__(self) -> str:
        parts = [describe_function(self.fine_tune), describe_function(self.score)]
        if self.test_fn is not None:
            parts.append(f"test={describe_function(self.test_fn)}")
        return f"FunctionObjective({', '.join(parts)})"

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        return self._phase(module, steps, seed, "short")

    def long_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        return self._phase(module, steps, seed, "long")

    def test(self, module: nn.Module) -> float | None:
        return None if self.test_fn is None else self._number(self.test_fn, "test", module)

    def training_inputs(self, batches: int, seed: int) -> list[torch.Tensor]:
        if self.inputs is None:
            raise NotImplementedError("FunctionObjective was given no training_inputs function")
        inputs = list(_call(self.inputs, "training_inputs", batches, seed))[:batches]
        if not all(isinstance(x, torch.Tensor) for x in inputs):
            raise ObjectiveError(f"training_inputs {describe_function(self.inputs)} must yield input tensors (batches "
                                 "of training inputs); fix it and resume")
        return inputs

    def example_input(self) -> torch.Tensor:
        if self._example is None:
            raise NotImplementedError("FunctionObjective was given no example_input; pass one to netopt.trace")
        return self._example.clone()

    def check_sendable(self) -> None:
        """Refuse, naming it, a function that cannot be pickled to a worker process (a lambda, a
        closure, a function defined in `__main__` of an interactive session)."""
        for name, fn in (("fine_tune", self.fine_tune), ("score", self.score), ("test", self.test_fn),
                         ("training_inputs", self.inputs)):
            if fn is None:
                continue
            try:
                pickle.dumps(fn)
            except Exception as exc:
                raise ConfigError(
                    f"FunctionObjective: {name}={describe_function(fn)} cannot be sent to a worker process "
                    f"({first_line(exc, 120)}); define it at the top level of an importable module, or run "
                    "without a process pool") from None

    def _phase(self, module: nn.Module, steps: int, seed: int, phase: str) -> Evaluation:
        done: Any = 0
        if steps:  # the start's score needs no training
            module.train()
            done = _call(self.fine_tune, "fine_tune", module, steps, seed, phase)
            _back_on_cpu(module)
        if done is None:
            done = steps
        elif isinstance(done, bool) or not isinstance(done, numbers.Integral) or int(done) < 0:
            raise ObjectiveError(f"fine_tune {describe_function(self.fine_tune)} returned {done!r}: it may return "
                                 "the number of optimizer steps it did (an int >= 0), or None for all of them; fix "
                                 "it and resume")
        module.eval()
        return Evaluation(self._number(self.score, "score", module), int(done))

    def _number(self, fn: Score, name: str, module: nn.Module) -> float:
        module.eval()
        with torch.no_grad():
            value = _call(fn, name, module)
        _back_on_cpu(module)
        module.eval()
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ObjectiveError(f"{name} {describe_function(fn)} returned {_shown(value)}, not a number: it must "
                                 "return a float, higher is better; fix it and resume")
        if not math.isfinite(float(value)):
            raise ObjectiveError(f"{name} {describe_function(fn)} returned {float(value)}: it must return a finite "
                                 "number (diverged training gives NaN: lower the learning rate); fix it and resume")
        return float(value)


def _call(fn: Callable[..., Any], name: str, *args: Any) -> Any:
    try:
        return fn(*args)
    except NetoptError:
        raise
    except Exception as exc:
        raise ObjectiveError(f"{name} {describe_function(fn)} raised {type(exc).__name__}: {first_line(exc, 200)}; fix "
                             "it and resume") from exc


def _back_on_cpu(module: nn.Module) -> None:
    """The user's function may have moved the network to a GPU: netopt measures and saves on the CPU."""
    if any(p.device.type != "cpu" for p in module.parameters()) or \
            any(b.device.type != "cpu" for b in module.buffers()):
        module.to("cpu")


def describe_function(fn: Any) -> str:
    """`module.qualname` of a function, for messages."""
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}.{name}"


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"
