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

Many processes, one study. `OptunaSearch(storage=..., study_name=...).work(problem)` is one
worker on a shared study: it asks, scores and tells until the study holds `trials` scored trials,
beside any number of other workers (PostgreSQL, "postgresql://user:password@host/db", across
machines; a JournalStorage file, "journal:/path/study.log", on one machine). Each trial records
its worker ("host:pid"); a worker that starts (or resumes after all were killed) fails the
running trials of workers that are gone from this host and enqueues each once more, so no trial
is lost and none is scored twice. An assignment already scored in the study is told that score,
not trained again. `study_result(problem)` then long-term fine-tunes the study's best.

Warm start. `warm_start` width assignments (partial ones are completed with the start network's
widths) are evaluated first, in order; `OptunaSearch.from_result(result)` starts from another
strategy's family, e.g. ProgressiveBarrier's.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from netopt._process import owner_alive, process_owner
from netopt.errors import ConfigError, InfeasibleError, IRError
from netopt.ir import Network
from netopt.strategies.base import Candidate, Problem, Proposal, Result
from netopt.strategies.engine import Ask, seed_for
from netopt.strategies.search import ALL, Trials, WidthSearch
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

    def decode(self, params: dict[str, Any]) -> Widths:
        """The widths a trial's parameters stand for (`suggest`'s, read back)."""
        return {g.id: int(params[g.id]) if g.id in params else g.valid_widths()[int(params[f"{g.id}.index"])]
                for g in self.groups}

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

    >>> import netopt
    >>> from netopt.testing.contract import small_network
    >>> from netopt.testing.problems import joint_problem
    >>> problem = joint_problem(small_network(), macs="60%", memory="90%")
    >>> search = netopt.OptunaSearch(sampler="tpe", trials=3, short_term_steps=1, long_term_steps=1, progress=False)
    >>> search.run(problem).over_budget
    {}
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
        storage = open_storage(self.storage) if self.storage else None  # a bad URL fails before the run folder is made
        engine = self.open_engine(problem, run_dir, resume)
        done = engine.finished(self.name)
        if done is not None:
            return done
        if storage is None and run_dir is not None:
            storage = _open(f"sqlite:///{Path(run_dir).resolve() / 'optuna.db'}")
        return self._search(self.trials_on(engine), storage, resume)

    def search(self, trials: Trials) -> Result:
        return self._search(trials, open_storage(self.storage) if self.storage else None, resume=False)

    def work(self, problem: Problem) -> int:
        """One worker on the shared study `storage`/`study_name`: ask, score, tell until the study
        holds `trials` scored trials (see the module docstring). Returns how many this worker scored."""
        return _SharedStudy(self, problem).work()

    def study_result(self, problem: Problem) -> Result:
        """The shared study's best scored network, fine-tuned again as it was, then long-term and tested."""
        return _SharedStudy(self, problem).result()

    # --- the search ----------------------------------------------------------------------------

    def _search(self, trials: Trials, storage: optuna.storages.BaseStorage | None, resume: bool) -> Result:
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

    def _study(self, trials: Trials, storage: optuna.storages.BaseStorage | None, resume: bool) -> optuna.Study:
        """A fresh study; on resume the stopped one is deleted first, to be replayed."""
        name = self.study_name or self.name
        if storage is not None and name in optuna.study.get_all_study_names(storage):
            if not resume:
                where = _redacted(self.storage) if self.storage else "the run directory's optuna.db"
                raise ConfigError(f"{self.name}: study {name!r} already exists in {where}; resume that run "
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
    """An Optuna RDB storage, or a ConfigError that names the URL (less its password) and what to do."""
    import sqlalchemy.exc

    from netopt._process import redacted

    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as exc:
        raise ConfigError(f"storage {redacted(url)!r} needs a database driver that is not installed ({exc}); "
                          "install it (pip install 'netopt[postgres]' for postgresql://), or use a sqlite:/// URL"
                          ) from None
    except (ValueError, sqlalchemy.exc.SQLAlchemyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"storage {redacted(url)!r} cannot be opened ({reason}); give a reachable database URL, e.g. "
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


# --- many workers on one study --------------------------------------------------------------------

SCORED, OWNER, RETRY_OF = "netopt_scored", "netopt_worker", "netopt_retry_of"
"""User attributes a shared study's trials carry: scored (fine-tuned, counts toward `trials`),
the worker that ran it, and the trial a retried one repeats."""


NAMELESS = 2.0
"""Seconds after which a running trial that names no worker is taken as lost."""


def _worker() -> str:
    return process_owner()


def _age(trial: optuna.trial.FrozenTrial) -> float:
    start = trial.datetime_start
    return (datetime.datetime.now() - start).total_seconds() if start is not None else math.inf


def _gone(worker: str) -> bool:
    """A worker process on this host that no longer runs (one on another host: cannot tell)."""
    return not owner_alive(worker)


def _redacted(url: str) -> str:
    from netopt._process import redacted

    return redacted(url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL: "journal:/path/file.log" (JournalStorage, one machine), a
    SQLAlchemy URL ("postgresql://" goes through psycopg 3, the postgres extra), or one ConfigError line."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:")).expanduser()
        if not path.parent.is_dir():
            raise ConfigError(f"storage {url!r}: folder {path.parent} does not exist; create it or give another path")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith(("postgresql://", "postgres://")):
        from netopt._process import connect
        from netopt.errors import LookupTableError

        try:
            lock = connect(url, "storage")  # names the extra where psycopg is missing, and hides the password
        except LookupTableError as exc:
            raise ConfigError(str(exc)) from None
        try:  # workers starting together would race to create Optuna's tables: one at a time
            lock.execute("SELECT pg_advisory_lock(hashtext('netopt_optuna_schema'))")
            return _open("postgresql+psycopg://" + url.split("://", 1)[1])
        finally:
            lock.close()
    return _open(url)


class _SharedStudy:
    """One worker's view of a study many workers fill (see the module docstring)."""

    def __init__(self, search: OptunaSearch, problem: Problem) -> None:
        if not search.storage:
            raise ConfigError("OptunaSearch.work needs storage= shared by every worker: \"postgresql://user:password@"
                              "host/db\" across machines, or \"journal:/path/study.log\" on one")
        self.search = search
        self.engine = search.open_engine(problem, None, False)
        self.trials = search.trials_on(self.engine)
        self.space = _Space(self.trials.network)
        up, down = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE
        directions = [up] if search.sampler == "tpe" else [up] + [down] * len(self.trials.bounds)
        sampler = (optuna.samplers.TPESampler(seed=seed_for(search.seed, _worker())) if search.sampler == "tpe" else
                   optuna.samplers.NSGAIISampler(seed=seed_for(search.seed, _worker())))
        with _quiet():
            self.study = optuna.create_study(storage=open_storage(search.storage),
                                             study_name=search.study_name or search.name, sampler=sampler,
                                             directions=directions, load_if_exists=True)

    def scored(self) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get(SCORED)]

    def recover(self) -> int:
        """Fail the running trials of workers that are gone, and enqueue each once more; one
        worker at a time. A running trial that names no worker `NAMELESS` s after it started lost
        its worker between asking and naming itself (a live one names itself at once)."""
        with self._exclusive():
            running = self._running()
            if any(OWNER not in t.user_attrs and _age(t) < NAMELESS for t in running):
                time.sleep(NAMELESS)
                running = self._running()
            retried = {t.user_attrs.get(RETRY_OF) for t in self.study.get_trials(deepcopy=False)}
            lost = [t for t in running if OWNER in t.user_attrs and _gone(str(t.user_attrs[OWNER]))] + [
                t for t in running if OWNER not in t.user_attrs and _age(t) >= NAMELESS]
            for t in lost:
                try:
                    self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                except (ValueError, RuntimeError):  # it finished after all, since the snapshot
                    continue
                if t.number not in retried:
                    self.study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number})
        return len(lost)

    def _running(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One worker of the study at a time (a PostgreSQL advisory lock, or a lock file beside the journal)."""
        url = str(self.search.storage)
        if url.startswith("journal:"):
            with open(Path(url.removeprefix("journal:")).expanduser().with_suffix(".lock"), "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield
            return
        if url.startswith(("postgresql://", "postgres://")):
            from netopt._process import connect

            db = connect(url, "storage")
            try:
                db.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"netopt_study:{self.study.study_name}",))
                yield
            finally:
                db.close()
            return
        yield  # SQLite: one machine, and its own file lock serializes the writes

    def work(self) -> int:
        search, trials, study = self.search, self.trials, self.study
        done = rejected = 0
        with _quiet():
            self.recover()
            while len(self.scored()) < search.trials and rejected < search.max_rejections:
                trial = study.ask()
                trial.set_user_attr(OWNER, _worker())
                widths = self.space.suggest(trial)
                resources = trials.resources(widths)
                for resource, violation in _violations(trials, resources).items():
                    trial.set_constraint(resource, violation)
                same = next((t for t in self.scored() if t.params == trial.params), None)
                if not trials.feasible(resources) or same is not None:
                    rejected += 1
                    study.tell(trial, same.values if same is not None and len(same.values) > 1 else
                               same.value if same is not None else search._values(0.0, resources, trials))
                    continue
                full = trials.network.with_widths(widths).widths
                told = self.engine.score([Ask(trial.number, ALL, full, resources, trials.problem.traced, widths,
                                              seed_for(search.seed, "trial", trial.number))])[0]
                assert told.proposal.score is not None
                trial.set_user_attr(SCORED, True)
                study.tell(trial, search._values(told.proposal.score, resources, trials))
                done += 1
        return done

    def result(self) -> Result:
        """The study's best scored trial, long-term fine-tuned (`Result.history`: the study's scored trials)."""
        scored = self.scored()
        if not scored:
            raise InfeasibleError(f"study {self.study.study_name!r} holds no scored trial yet; run work() first")
        for best in sorted(scored, key=lambda t: (-t.values[0], t.number)):  # the best that holds as measured
            widths = self.space.decode(best.params)
            network = self.trials.network.with_widths(widths)
            resources = self.trials.resources(widths)  # re-estimated after a recalibration
            chosen = Candidate(best.number, network, None, best.values[0], resources)  # type: ignore[arg-type]
            if self.trials.feasible(resources) and not self.engine.budgets.verify(chosen):
                break
        else:
            raise InfeasibleError(f"study {self.study.study_name!r}: none of its {len(scored)} scored trials is within "
                                  "every budget as measured end to end; run more trials, or give looser budgets")
        chosen.module = self.trials.problem.traced.materialize(network)
        self.engine.problem.objective.short_term(chosen.module, self.search.short_term_steps,
                                                 seed_for(self.search.seed, "trial", best.number))
        final = self.engine.finish(chosen, self.search.long_term_steps)
        history = [Proposal(t.number, ALL, self.space.decode(t.params), self.trials.resources(self.space.decode(
            t.params)), t.values[0], self.search.short_term_steps, chosen=t.number == best.number) for t in scored]
        return self.engine.result(self.search.name, final, [chosen], history,
                                  len(scored) * self.search.short_term_steps + self.search.long_term_steps)
