"""What a strategy keeps in its run directory, and how a stopped run picks up from it (internal:
the engine's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from netopt.runs import RunDir, RunError
from netopt.runs.rundir import exported_program
from netopt.strategies.base import LANDING, Candidate, Landing, Problem, Proposal, Result

if TYPE_CHECKING:
    import torch
    from torch import nn


__all__ = ["RunLog"]


class RunLog:
    """A ProgressiveBarrier run's record: members, proposals (with weights), the final network."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    @classmethod
    def open(cls, path: str | Path, resume: bool, config: dict[str, Any], problem: Problem) -> RunLog:
        original = problem.traced.network
        if not resume:
            return cls(RunDir.create(path, config, original))
        run = RunDir.open(path)
        recorded = run.config()
        differ = [k for k in {**recorded, **config}
                  if recorded.get(k) != config.get(k) and not (k not in recorded and config.get(k) is None)]
        if differ:  # a setting newer than the run, left unset (None), is no difference
            k = sorted(differ)[0]
            raise RunError(f"{path} was started with {k} = {recorded.get(k)!r}, not {config.get(k)!r} (started with "
                           f"{recorded}); resume it with the same settings")
        if run.original() != original:
            raise RunError(f"{path} was started from another network; resume it with the model it was started with")
        return cls(run)

    # --- members -----------------------------------------------------------------------------

    def members(self) -> list[int]:
        return self.run.members()

    def save_member(self, member: Candidate, group: str | None) -> None:
        summary = {"iteration": member.iteration, "accuracy": member.accuracy, "resources": member.resources,
                   "group": group}
        self.run.save_member(member.iteration, member.network, member.module, summary)

    def family(self, problem: Problem) -> list[Candidate]:
        out = []
        for i in self.members():
            s = self.run.summary(i)
            out.append(Candidate(i, self.run.network(i), self.run.module(i), s["accuracy"], s["resources"]))
        return out

    # --- proposals ---------------------------------------------------------------------------

    def record(self, proposal: Proposal, module: nn.Module | None) -> None:
        self.run.record_proposal(proposal.to_dict(), module)

    def proposals(self, family: list[Candidate]) -> list[Proposal]:
        """Logged proposals of completed iterations, the chosen one marked (a landing's left out)."""
        chosen = {c.iteration - 1: self.run.summary(c.iteration)["group"] for c in family if c.iteration > 0}
        out = []
        for r in self.run.history():
            if r["iteration"] in chosen and not r["group"].startswith(LANDING):
                out.append(Proposal(**{**r, "chosen": chosen[r["iteration"]] == r["group"]}))
        return out

    def landed(self) -> list[Proposal]:
        """The proposal a landing scored, if any (`netopt.strategies.landing`)."""
        return [Proposal(**r) for r in self.run.history() if r["group"].startswith(LANDING)]

    def logged(self) -> dict[tuple[int, str], dict[str, Any]]:
        """Every proposal on disk by (iteration, group): what a resumed run replays."""
        return {(r["iteration"], r["group"]): r for r in self.run.history()}

    def weights(self, iteration: int, group: str) -> dict[str, torch.Tensor] | None:
        """The fine-tuned weights of a scored proposal, if they were saved before a stop."""
        return self.run.proposal_weights(iteration, group)

    # --- the final network -------------------------------------------------------------------

    def iterative(self) -> bool:
        """A run of an iterative strategy: its first member is Net_0, chosen from no proposal (a
        search's members are its front, each a scored trial)."""
        members = self.members()
        return bool(members) and self.run.summary(members[0]).get("group", "") is None

    def has_final(self) -> bool:
        return (self.run.path / "final" / "summary.json").is_file()

    def save_final(self, final: Candidate, example: torch.Tensor, landing: Landing | None = None) -> None:
        from netopt.measure.onnxrt import export_onnx

        summary = {"iteration": final.iteration, "accuracy": final.accuracy, "test_accuracy": final.test_accuracy,
                   "resources": final.resources, "measured": final.measured}
        if landing is not None:
            summary["landing"] = landing.to_dict()
        self.run.save_final(final.network, final.module, summary, export_onnx(final.module, example),
                            exported_program(final.module, example))

    def result(self, problem: Problem, strategy: str) -> Result:
        """A finished run read back whole: its family, every proposal, the final network."""
        final, family = self.final(problem), self.family(problem)
        if self.iterative():
            history = self.proposals(family) + self.landed()
        else:
            history = [Proposal(**{**r, "chosen": r["iteration"] == final.iteration}) for r in self.run.history()]
        config = self.run.config()  # NetAdaptV2's super-network steps are training too
        used = sum(p.steps for p in history) + int(config.get("long_term_steps", 0)) + \
            int(config.get("supernet_steps", 0))
        landing = self.run.summary("final").get("landing")
        return Result(final, family, history, used, strategy=strategy, start=self.run.original(),
                      landing=Landing.from_dict(landing) if landing else None)

    def final(self, problem: Problem) -> Candidate:
        s = self.run.summary("final")
        final = Candidate(s["iteration"], self.run.network("final"), self.run.module("final"), s["accuracy"],
                          s["resources"])
        final.test_accuracy, final.measured = s["test_accuracy"], s["measured"]
        return final
