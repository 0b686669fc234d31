"""A run directory: the resolved config, every proposal, the family of networks, the final one.

    run/
      config.json          what was asked, resolved (written once)
      original.json        the starting network's IR
      history.jsonl        one line per evaluated proposal, appended as each finishes
      family/0003/         Net_3: network.json (IR), weights.pt, summary.json
      proposals/0004/      weights of proposals of the iteration under way (for resume)
      final/               network.json, weights.pt, model.onnx, summary.json

Every file is written atomically; the log is append-only and a line cut by a kill is ignored,
so a run stopped at any point can be read, and resumed, from what is on disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netopt.bridge import build
from netopt.errors import NetoptError
from netopt.ir import Network
from netopt.runs.files import append_line, read_lines, save_tensors, write_atomic, write_json

__all__ = ["RunDir", "RunError", "load"]


class RunError(NetoptError):
    """A run directory that cannot be created, read or resumed as asked."""


class RunDir:
    """Reads and writes one run's files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- creating and opening ----------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any], original: Network) -> RunDir:
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            raise RunError(f"{run.path} already holds files; resume that run, or choose an empty folder")
        write_json(run.path / "original.json", original.to_dict())
        write_json(run.path / "config.json", config)  # written last: its presence marks a run
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not (run.path / "config.json").is_file():
            raise RunError(f"{run.path} is not a netopt run (no config.json); give the folder a run was started in")
        return run

    def config(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "config.json").read_text()))

    def original(self) -> Network:
        return Network.from_json((self.path / "original.json").read_text())

    # --- proposals -----------------------------------------------------------------------------

    def record_proposal(self, record: dict[str, Any], module: nn.Module | None = None) -> None:
        """Log one evaluated proposal; its fine-tuned weights first, so a logged one can be reused."""
        if module is not None:
            save_tensors(self._proposal_weights(record["iteration"], record["group"]), module.state_dict())
        append_line(self.path / "history.jsonl", record)

    def history(self) -> list[dict[str, Any]]:
        return list(read_lines(self.path / "history.jsonl"))

    def proposal_weights(self, iteration: int, group: str) -> dict[str, torch.Tensor] | None:
        path = self._proposal_weights(iteration, group)
        return torch.load(path, weights_only=True) if path.exists() else None

    def _proposal_weights(self, iteration: int, group: str) -> Path:
        name = hashlib.sha256(group.encode()).hexdigest()[:16]
        return self.path / "proposals" / f"{iteration:04d}" / f"{name}.pt"

    # --- the family and the final network ------------------------------------------------------

    def save_member(self, iteration: int, network: Network, module: nn.Module, summary: dict[str, Any]) -> None:
        folder = self.path / "family" / f"{iteration:04d}"
        save_tensors(folder / "weights.pt", module.state_dict())
        write_json(folder / "network.json", network.to_dict())
        write_json(folder / "summary.json", summary)  # last: a member with a summary is complete

    def members(self) -> list[int]:
        folder = self.path / "family"
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if (p / "summary.json").is_file())

    def summary(self, which: int | str) -> dict[str, Any]:
        return dict(json.loads((self._folder(which) / "summary.json").read_text()))

    def network(self, which: int | str) -> Network:
        return Network.from_json((self._folder(which) / "network.json").read_text())

    def module(self, which: int | str) -> nn.Module:
        """A ready torch module of family member `which` (an iteration), or of "final"."""
        folder = self._folder(which)
        module = build(Network.from_json((folder / "network.json").read_text()))
        module.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        return module.eval()

    def save_final(self, network: Network, module: nn.Module, summary: dict[str, Any], onnx: bytes) -> None:
        folder = self.path / "final"
        save_tensors(folder / "weights.pt", module.state_dict())
        write_json(folder / "network.json", network.to_dict())
        write_atomic(folder / "model.onnx", onnx)
        write_json(folder / "summary.json", summary)

    def _folder(self, which: int | str) -> Path:
        if which == "final":
            folder = self.path / "final"
        elif which == "last":
            members = self.members()
            if not members:
                raise RunError(f"{self.path} has no completed iteration yet")
            folder = self.path / "family" / f"{members[-1]:04d}"
        else:
            folder = self.path / "family" / f"{int(which):04d}"
        if not (folder / "summary.json").is_file():
            raise RunError(f"{folder} is not a completed network of this run; see members() for the iterations")
        return folder


def load(run_dir: str | Path, which: int | str = "final") -> nn.Module:
    """The network `which` ("final", "last", or an iteration number) of a run, ready to use."""
    return RunDir.open(run_dir).module(which)
