"""Optuna's samplers as a width search: TPE for the best network within budget, NSGA-II for a front.

Encoding. Every prunable channel group is one integer parameter named by the group id: its
width, on the group's step grid (`suggest_int(id, min_width, full_width, step=step)`). Where the
full width is off that grid (a group of 30 channels on a step of 8), the parameter is named
`"<id>.index"` and is the position in `valid_widths()` instead, so that every value is a width
the IR accepts and neighbouring values stay neighbours for the sampler.

Constraints. Each assignment is estimated with every constraint before anything is trained, and
each constraint's violation (estimate / budget - 1, <= 0 within budget) is set on the trial with
`trial.set_constraint(resource, value)`, which TPE and NSGA-II both read in Optuna 5. An
assignment breaking a budget is recorded without training and told a pessimistic value (accuracy
0), so the samplers learn where the budget lies; only feasible ones are fine-tuned and count
toward `trials`. An assignment already scored is told its earlier value, not trained again.

Storage and resume. With a run directory and no `storage`, the study is kept in
`RUN/optuna.db` (SQLite); `optuna-dashboard sqlite:///RUN/optuna.db` shows it live. Any other
SQLAlchemy URL (`postgresql://...`) may be given as `storage`. The run directory, not the study,
is what a resume continues from: a resumed run deletes the stopped study and replays the search
from the start with the same seeded sampler; every network scored before the stop is read back
from the run directory instead of being fine-tuned again, so the replay costs estimates only
and ends where an uninterrupted run would. Because of that, `storage` and `study_name` do not
decide the result and are not part of `config()`.

Warm start. `warm_start` width assignments (partial ones are completed with the start network's
widths) are evaluated first, in order; `OptunaSearch.from_result(result)` starts from another
strategy's family, e.g. ProgressiveBarrier's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from netopt.errors import ConfigError, IRError
from netopt.ir import Network
from netopt.strategies.base import Problem, Result
from netopt.strategies.search import Trials, WidthSearch
from netopt.strategies.settings import SAMPLERS, OptunaSettings

__all__ = ["OptunaSearch", "SAMPLERS"]

Widths = dict[str, int]
Told = float | list[float]


class _Space:
    """Width assignments as Optuna parameters and back (see the module docstring)."""

    def __init__(self, network: Network) -> None:
        self.groups = network.groups

    def suggest(self, trial: optuna.trial.BaseTrial) -> Widths:
        widths = {}
        for g in self.groups:
            if g.full_width % g.step == 0:
                widths[g.id] = trial.suggest_int(g.id, g.min_width, g.full_width, step=g.step)
            else:
                valid = g.valid_widths()
                widths[g.id] = valid[trial.suggest_int(f"{g.id}.index", 0, len(valid) - 1)]
        return widths

    def encode(self, widths: Widths) -> dict[str, int]:
        """The parameters that `suggest` turns into `widths` (every group's width given)."""
        params = {}
        for g in self.groups:
            if g.full_width % g.step == 0:
                params[g.id] = widths[g.id]
            else:
                params[f"{g.id}.index"] = g.valid_widths().index(widths[g.id])
        return params


class OptunaSearch(WidthSearch):
    """An Optuna sampler proposes whole width assignments; `trials` feasible ones are fine-tuned.

    `sampler="tpe"` maximizes holdout accuracy within every budget and returns the best network;
    `sampler="nsga2"` maximizes accuracy and minimizes every constrained resource at once, and
    its result's family is the feasible Pareto front. The search stops after `trials` networks
    are scored or `max_rejections` assignments were not trained (over budget, or already scored).
    See the module docstring for the encoding, constraints, storage, resume and warm start.
    """

    name = "OptunaSearch"
    Settings = OptunaSettings
    settings: OptunaSettings

    @classmethod
    def from_result(cls, result: Result, **settings: Any) -> OptunaSearch:
        """A search warm-started from another strategy's final network and family (deduplicated,
        the final first); any `warm_start` in `settings` follows them."""
        found = [result.final.network.widths, *(c.network.widths for c in reversed(result.family))]
        unique = list({tuple(sorted(w.items())): w for w in found}.values())
        return cls(warm_start=[*unique, *settings.pop("warm_start", ())], **settings)

    def run(self, problem: Problem, run_dir: str | Path | None = None, resume: bool = False) -> Result:
        storage = _open(self.storage) if self.storage else None  # a bad URL fails before the run folder is made
        engine = self.open_engine(problem, run_dir, resume)
        done = engine.finished(self.name)
        if done is not None:
            return done
        if storage is None and run_dir is not None:
            storage = _open(f"sqlite:///{Path(run_dir).resolve() / 'optuna.db'}")
        return self._search(self.trials_on(engine), storage, resume)

    def search(self, trials: Trials) -> Result:
        return self._search(trials, _open(self.storage) if self.storage else None, resume=False)

    # --- the search ----------------------------------------------------------------------------

    def _search(self, trials: Trials, storage: optuna.storages.RDBStorage | None, resume: bool) -> Result:
        space = _Space(trials.network)
        with _quiet():
            study = self._study(trials, storage, resume)
            for i, widths in enumerate(self.warm_start):
                study.enqueue_trial(space.encode(_complete(trials.network, widths, i)))
            self._optimize(study, trials, space)
        return trials.result(self.name, self.long_term_steps)

    def _optimize(self, study: optuna.Study, trials: Trials, space: _Space) -> None:
        """Ask, estimate, tell: infeasible and repeated assignments at once, feasible ones once scored."""
        told: dict[tuple[tuple[str, int], ...], Told] = {}
        pending: list[tuple[optuna.Trial, Widths]] = []
        untrained, batch = 0, self.batch_size  # not the executor's: the sampler sees what was told
        while len(trials.scored) + len(pending) < self.trials and untrained < self.max_rejections:
            trial = study.ask()
            widths = space.suggest(trial)
            resources = trials.resources(widths)
            for resource, violation in _violations(trials, resources).items():
                trial.set_constraint(resource, violation)
            if any(w == widths for _, w in pending):  # a repeat of one being scored: score that first
                self._flush(study, trials, pending, told)
            if not trials.feasible(resources):
                trials.note(widths, resources)
                study.tell(trial, self._values(0.0, resources, trials))
                untrained += 1
            elif _key(widths) in told:
                study.tell(trial, told[_key(widths)])
                untrained += 1
            else:
                pending.append((trial, widths))
                if len(pending) == batch:
                    self._flush(study, trials, pending, told)
        self._flush(study, trials, pending, told)

    def _flush(self, study: optuna.Study, trials: Trials, pending: list[tuple[optuna.Trial, Widths]],
               told: dict[tuple[tuple[str, int], ...], Told]) -> None:
        """Fine-tune and score the pending assignments together, and tell Optuna each score."""
        if not pending:
            return
        for (trial, widths), candidate in zip(pending, trials.score([w for _, w in pending]), strict=True):
            told[_key(widths)] = self._values(candidate.accuracy, candidate.resources, trials)
            study.tell(trial, told[_key(widths)])
        pending.clear()

    def _values(self, accuracy: float, resources: dict[str, float], trials: Trials) -> Told:
        if self.sampler == "tpe":
            return accuracy if self.reward is None else self.reward(accuracy, resources, trials.bounds)
        return [accuracy, *(resources[b.resource] for b in trials.bounds)]

    # --- the study -----------------------------------------------------------------------------

    def _study(self, trials: Trials, storage: optuna.storages.RDBStorage | None, resume: bool) -> optuna.Study:
        """A fresh study; on resume the stopped one is deleted first, to be replayed."""
        name = self.study_name or self.name
        if storage is not None and name in optuna.study.get_all_study_names(storage):
            if not resume:
                raise ConfigError(f"{self.name}: study {name!r} already exists in {storage.url}; resume that run "
                                  "(resume=True), or give another study_name or storage")
            optuna.delete_study(study_name=name, storage=storage)
        up, down = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE
        directions = [up] if self.sampler == "tpe" else [up] + [down] * len(trials.bounds)
        return optuna.create_study(storage=storage, study_name=name, sampler=self._sampler(), directions=directions)

    def _sampler(self) -> optuna.samplers.BaseSampler:
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed)
        return optuna.samplers.NSGAIISampler(seed=self.seed, population_size=min(50, max(4, self.trials)))


def _open(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage, or a ConfigError that names the URL and what to do."""
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as exc:
        raise ConfigError(f"storage {url!r} needs a database driver that is not installed ({exc}); install it "
                          "(e.g. psycopg2 for postgresql://), or use a sqlite:/// URL") from None
    except (ValueError, sqlalchemy.exc.SQLAlchemyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"storage {url!r} cannot be opened ({reason}); give a reachable database URL, e.g. "
                          "sqlite:///path/in/an/existing/folder/optuna.db") from None


def _complete(network: Network, widths: Widths, i: int) -> Widths:
    """A warm-start assignment with every group's width, checked against the network."""
    try:
        return network.with_widths(widths).widths
    except IRError as exc:
        raise ConfigError(f"OptunaSearch: warm_start[{i}] {widths} does not fit the network: {exc}") from None


def _violations(trials: Trials, resources: dict[str, float]) -> dict[str, float]:
    """Each constraint's violation, its sign agreeing with `Bound.met` even where rounding would not."""
    violations = trials.violations(resources)
    return {b.resource: (min(violations[b.resource], 0.0) if b.met(resources[b.resource])
                         else max(violations[b.resource], math.ulp(0.0))) for b in trials.bounds
            if b.resource not in trials.engine.soft}


def _key(widths: Widths) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(widths.items()))


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's per-trial INFO lines and experimental-feature warnings off, for this search only."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)
