"""`NetAdaptV2` (Yang, Liao, Sze, CVPR 2021): one super-network, many sub-networks, several layers at once.

1. **Ordered channels**: every group's channels are sorted by the selector's magnitude, most
   important first (`supernet.ordered`): the network computes exactly what it did, and "keep k
   channels" now means "keep the first k".
2. **Ordered dropout**: the reordered network is trained, from the pretrained weights, for
   `supernet_steps` (by default twice the channel groups squared, `derived_supernet_steps`)
   as a super-network: in each forward pass every sample of the batch draws its
   own width for every group (uniformly on the group's grid; the paper does not fix the
   distribution, and uniform covers every candidate alike) and the channels past it are zeroed
   (per-sample masks: one forward-backward pass trains many sub-networks). With `sandwich`, the
   largest and the smallest sub-network are in every batch (the sandwich rule of slimmable
   networks, which NetAdaptV2's ordered dropout builds on). Training goes through the problem's
   objective, so any objective (the user's own loop too) trains the super-network.
3. **Multi-layer coordinate descent**: every iteration tightens each resource still over budget
   by its schedule (Eq. 2, as ProgressiveBarrier does) and draws `samples` proposals; each picks
   `layers` random channel groups (default round(sqrt(groups)), at least 2: the paper perturbs
   several layers without fixing how many, and the square root keeps a proposal's change a
   small share of a deep network) and shrinks them together, a grid step each at a time, to the
   largest widths meeting every target. A proposal is scored with the super-network's weights
   and no fine-tuning: materialized with the first k channels, its BatchNorm statistics
   re-estimated on `bn_batches` training batches, scored on the holdout split. The best one (by
   score, or by MnasNet's reward) is the next network; until every budget is met.
4. The chosen network is long-term fine-tuned, tested and measured end to end.

Search time is accounted in the paper's three parts: super-network training, sample
evaluation, final training (`Result.timings`). With a run directory the trained super-network
is saved once (`supernet.pt`), and a resumed run continues from it and from every scored sample.

**Channel-level bypass** (`bypass=True`): a group inside a residual branch may also take width
0, which removes the branch (its block passes the shortcut through: depth and width searched
in one dimension, `netopt.ir.bypass`). The super-network then trains width 0 as one more point
of those groups' grids (a sample drawing it has its branch output zeroed), coordinate descent
steps such a group from its minimum to 0, and groups inside a removed branch are no longer
perturbed. It is off by default: a bypassed block is a larger change than a grid step, and
the paper's accuracy-latency gains come from ordered dropout and multi-layer descent first
(`benchmarks/bench_netadaptv2.py` measures both ways).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from netopt.bridge import trace
from netopt.objectives.base import Evaluation, Objective
from netopt.runs import RunDir
from netopt.runs.files import save_tensors
from netopt.strategies.base import Candidate, Problem, Proposal, Result
from netopt.strategies.engine import Ask, Engine, named_failure, seed_for
from netopt.strategies.iterative import Iterative, Step, cannot_shrink
from netopt.strategies.nearest import nearest_meeting
from netopt.strategies.progressive import smallest_step
from netopt.strategies.settings import NetAdaptV2Settings
from netopt.strategies.supernet import FirstChannels, OrderedDropout, ordered, reestimate_batchnorm

if TYPE_CHECKING:
    from torch import nn

    from netopt.bridge import Traced
    from netopt.constraints import Bound
    from netopt.ir import ChannelGroup, Network

__all__ = ["NetAdaptV2", "NetAdaptV2Settings", "BatchNormWarning", "BypassWarning", "derived_supernet_steps"]

SUPERNET = "supernet.pt"
STEPS_PER_GROUP_SQUARED, FEWEST_STEPS, MOST_STEPS, MOST_EPOCHS = 2, 100, 5000, 20
"""`derived_supernet_steps`: steps a squared group, within [FEWEST_STEPS, MOST_STEPS], at most MOST_EPOCHS passes."""


class BatchNormWarning(UserWarning):
    """An objective that gives no training inputs: sub-networks keep the super-network's BatchNorm statistics."""


class BypassWarning(UserWarning):
    """Bypass asked for on a network with no residual branch: there is nothing to bypass."""


class _SuperScored(Objective):
    """The problem's objective, scoring a sub-network without fine-tuning: its BatchNorm statistics
    re-estimated first. Long-term fine-tuning and the test split are the objective's own."""

    def __init__(self, objective: Objective, bn_batches: int) -> None:
        self.objective, self.bn_batches = objective, bn_batches

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        if self.bn_batches:
            with contextlib.suppress(NotImplementedError):  # warned once when the search started
                reestimate_batchnorm(module, self.training_inputs(self.bn_batches, seed))
        return self.objective.short_term(module, steps, seed)

    def long_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        return self.objective.long_term(module, steps, seed)

    def test(self, module: nn.Module) -> float | None:
        return self.objective.test(module)

    def example_input(self) -> torch.Tensor:
        return _optional(self.objective, "example_input")()  # type: ignore[no-any-return]

    def training_inputs(self, batches: int, seed: int) -> list[torch.Tensor]:
        return _optional(self.objective, "training_inputs")(batches, seed)  # type: ignore[no-any-return]

    def check_sendable(self) -> None:
        check = getattr(self.objective, "check_sendable", None)
        if callable(check):
            check()


def _optional(objective: Any, method: str) -> Any:
    """An objective's optional method, or one that raises NotImplementedError (a duck-typed stand-in)."""
    found = getattr(objective, method, None)
    if found is not None:
        return found

    def missing(*args: Any) -> Any:
        raise NotImplementedError(f"{type(objective).__name__} has no {method}")
    return missing


@dataclass(frozen=True)
class _Supernet:
    """The trained super-network, traced so that sub-networks keep the first k channels, and the
    seconds its training took."""

    traced: Traced
    seconds: float


class NetAdaptV2(Iterative):
    """NetAdaptV2 for m resources (see the module docstring).

    Settings (`NetAdaptV2Settings`): supernet_steps, samples, layers, sandwich, bypass, bn_batches,
    reward, long_term_steps, seed, max_iterations.

    >>> import netopt
    >>> from netopt.testing.contract import small_network
    >>> from netopt.testing.problems import joint_problem
    >>> problem = joint_problem(small_network(), macs="60%", memory="90%")
    >>> result = netopt.NetAdaptV2(supernet_steps=1, samples=3, long_term_steps=1, progress=False).run(problem)
    >>> [part in result.timings for part in ("supernet_training", "sample_evaluation", "final_training")]
    [True, True, True]
    """

    name = "NetAdaptV2"
    label = "NetAdaptV2"
    Settings = NetAdaptV2Settings
    settings: NetAdaptV2Settings

    def run(self, problem: Problem, run_dir: str | Path | None = None, resume: bool = False) -> Result:
        """Adapt (see `Iterative.run`); `supernet_steps=None` is resolved first: a resumed run's
        recorded steps, else `derived_supernet_steps(problem)`, recorded as the run's own."""
        if self.supernet_steps is not None:
            return super().run(problem, run_dir, resume)
        resolved = copy.copy(self)
        steps = _recorded(run_dir) if resume else None
        resolved.settings = self.settings.model_copy(
            update={"supernet_steps": derived_supernet_steps(problem) if steps is None else steps})
        return resolved.run(problem, run_dir, resume)

    def training_budget(self, problem: Problem) -> int:
        """The super-network's steps and the final network's: samples are not trained."""
        steps = derived_supernet_steps(problem) if self.supernet_steps is None else self.supernet_steps
        return steps + self.long_term_steps

    def _engine(self, problem: Problem, run_dir: str | Path | None, resume: bool) -> Engine:
        scored = replace(problem, objective=_SuperScored(problem.objective, self.bn_batches))  # type: ignore[arg-type]
        return Engine(scored, self.config(), short_term_steps=0, seed=self.seed, run_dir=run_dir, resume=resume,
                      executor=self.executor, bypass=self.bypass, stacklevel=4)

    def _prepare(self, engine: Engine) -> _Supernet:
        """Warn about what will not work as asked, then train (or read back) the super-network."""
        if self.bypass and not engine.network.bypassable:
            warnings.warn("bypass=True, but this network has no residual branch whose layers could be removed (no "
                          "add with a shortcut around them); NetAdaptV2 runs without bypass", BypassWarning,
                          stacklevel=3)
        objective = cast(_SuperScored, engine.problem.objective).objective
        if self.bn_batches:
            try:
                _optional(objective, "training_inputs")(1, self.seed)
            except NotImplementedError:
                warnings.warn(f"{type(objective).__name__} gives no training inputs (training_inputs): sub-networks "
                              "are scored with the super-network's BatchNorm statistics, which fit the full network; "
                              "give FunctionObjective a training_inputs function", BatchNormWarning, stacklevel=3)
        started = time.perf_counter()
        supernet = self._supernet(engine)
        seconds = time.perf_counter() - started
        engine.clock.objective += seconds
        return _Supernet(supernet, seconds)

    def _steps_taken(self, history: Sequence[Proposal]) -> int:
        return cast(int, self.supernet_steps) + self.long_term_steps  # resolved by `run`

    def _timed(self, result: Result, prepared: _Supernet, searching: float, final: float) -> None:
        """The paper's three parts of the search time."""
        result.timings.update({"supernet_training": prepared.seconds, "sample_evaluation": searching,
                               "final_training": final})

    def _describe(self, current: Candidate, picked: Proposal, proposals: Sequence[Proposal]) -> str:
        return f"{len(proposals)} samples, chose {picked.group}"

    # --- the super-network ---------------------------------------------------------------------

    def _supernet(self, engine: Engine) -> Traced:
        """The ordered network trained as a super-network (or read back from the run directory),
        traced so that its sub-networks materialize with the first k channels."""
        problem = engine.problem
        reordered = ordered(problem.traced)
        module = reordered.materialize()
        saved = engine.log.run.path / SUPERNET if engine.log else None
        if saved is not None and saved.is_file():
            module.load_state_dict(torch.load(saved, weights_only=True))
        elif self.supernet_steps:
            dropout = OrderedDropout(module, reordered.network, seed_for(self.seed, "supernet"), self.sandwich,
                                     self.bypass)
            try:
                with named_failure("the super-network's training"):
                    problem.objective.long_term(module, self.supernet_steps, seed_for(self.seed, "supernet"))
            finally:
                dropout.remove()
            if saved is not None:
                save_tensors(saved, module.state_dict())
        module.eval()
        traced = trace(module, problem.traced.example_input(), step=problem.traced.network.step)
        return replace(traced, selector=FirstChannels())

    def _start(self, engine: Engine, prepared: _Supernet) -> Candidate:
        module = prepared.traced.materialize()
        score = engine.start_score(module)  # BatchNorm re-estimated for the full network too
        return Candidate(0, engine.network, module, score, {b.resource: b.initial for b in engine.bounds})

    # --- multi-layer coordinate descent --------------------------------------------------------

    def _iterate(self, engine: Engine, prepared: _Supernet, current: Candidate, family: Sequence[Candidate]) -> Step:
        i, bounds = current.iteration, engine.bounds
        targets = engine.budgets.targets(i, current.resources)
        plans = self._plans(current, bounds, targets, i)
        if not plans:
            raise cannot_shrink(engine, current, family)
        told = engine.score([Ask(i, group, network.widths, resources, prepared.traced, network.widths,
                                 seed_for(self.seed, i, group)) for group, network, resources in plans])
        proposals = [t.proposal for t in told]
        best = max(range(len(proposals)), key=lambda k: (self._value(proposals[k], bounds), -k))
        proposals[best] = replace(proposals[best], chosen=True)
        return proposals, proposals[best], told[best].module

    def _landing_ask(self, engine: Engine, prepared: _Supernet, member: Candidate, group: str,
                     widths: dict[str, int], resources: dict[str, float]) -> Ask:
        """The landing's network, scored as a sample: with the super-network's weights."""
        return Ask(member.iteration, group, widths, resources, prepared.traced, widths,
                   seed_for(self.seed, member.iteration, group))

    def _value(self, proposal: Proposal, bounds: list[Bound]) -> float:
        assert proposal.score is not None
        return proposal.score if self.reward is None else self.reward(proposal.score, proposal.resources, bounds)

    def _plans(self, current: Candidate, bounds: list[Bound], targets: dict[str, float],
               iteration: int) -> list[tuple[str, Any, dict[str, float]]]:
        """`samples` distinct proposals: random sets of `layers` shrinkable groups, each shrunk
        together to the largest widths meeting every target (the biggest step where none can),
        searched from the current widths down (`nearest_meeting`: the table measures near the search)."""
        net = current.network
        shrinkable = [g.id for g in net.groups if g.width > self._floor(g) and not _gone(g, net)]
        if not shrinkable:
            return []
        layers = min(len(shrinkable), self.layers or max(2, round(math.sqrt(len(net.groups)))))
        rng = np.random.default_rng(seed_for(self.seed, "samples", iteration))
        blocks: list[tuple[str, ...]] = []
        for _ in range(20 * self.samples):
            pick = rng.choice(len(shrinkable), size=layers, replace=False)
            block = tuple(shrinkable[k] for k in sorted(pick))
            if block not in blocks:
                blocks.append(block)
            if len(blocks) == self.samples or len(blocks) == math.comb(len(shrinkable), layers):
                break
        plans = [p for block in blocks if (p := nearest_meeting(net, block, bounds, targets, self.bypass))]
        if not plans:
            plans = [p for block in blocks if (p := smallest_step(net, block, bounds, self.bypass))]
        return [(p.group, p.network, p.resources) for p in plans]

    def _floor(self, group: ChannelGroup) -> int:
        return 0 if self.bypass and group.bypass else group.min_width


def _gone(group: ChannelGroup, net: Network) -> bool:
    """A group whose layers all sit in a removed residual branch: shrinking it changes nothing."""
    return bool(net.removed) and set(group.producers) <= net.removed


def _recorded(run_dir: str | Path | None) -> int | None:
    """The super-network steps a stopped run in `run_dir` was started with (None where there is none)."""
    if run_dir is None or not (Path(run_dir) / "config.json").is_file():
        return None
    steps = RunDir.open(run_dir).config().get("supernet_steps")
    return steps if isinstance(steps, int) else None


def derived_supernet_steps(problem: Problem) -> int:
    """`supernet_steps=None`'s steps: twice the channel groups squared, within [100, 5000], and at
    most 20 passes over the training split where the objective holds it in memory (`Accuracy`).

    Every step draws a width for every group, so the sub-networks a step mixes, and how far apart
    they are, grow with the groups: a deep network's super-network needs disproportionately more
    steps before its narrow sub-networks score well (docs/decisions.md has the measurements). A
    few passes over a small training split cap them: the super-network starts from the
    pretrained weights and only adapts them.

    >>> from netopt.testing.contract import small_network
    >>> from netopt.testing.problems import joint_problem
    >>> derived_supernet_steps(joint_problem(small_network(), macs="60%", memory="90%"))
    100
    """
    groups = len(problem.traced.network.groups)
    steps = min(MOST_STEPS, max(FEWEST_STEPS, STEPS_PER_GROUP_SQUARED * groups * groups))
    data, trainer = getattr(problem.objective, "data", None), getattr(problem.objective, "trainer", None)
    if data is None or trainer is None:
        return steps
    passes = MOST_EPOCHS * math.ceil(len(data.train_y) / trainer.settings.batch_size)
    return max(1, min(steps, passes))
