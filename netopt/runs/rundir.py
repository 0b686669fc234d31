"""A run directory: the resolved config, every proposal, the family of networks, the final one.

    run/
      config.json          what was asked, resolved (written once)
      original.json        the starting network's IR
      history.jsonl        one line per evaluated proposal, appended as each finishes
      family/0003/         Net_3: network.json (IR), weights.pt, summary.json
      proposals/0004/      weights of proposals of the iteration under way (for resume)
      final/               network.json, weights.pt, model.onnx, model.pt2 (torch.export), summary.json

Every file is written atomically; the log is append-only and a line cut by a kill is ignored,
so a run stopped at any point can be read, and resumed, from what is on disk.

Format. Every JSON document (config, summaries, calibrations) and every history line carries
the run format's version under `"format_version"`; the IR documents (original.json,
network.json) carry the IR's own version under the same key (`netopt.ir.FORMAT_VERSION`; a run
written before keeps its IR documents as they are: they read); weights and ONNX files belong to
the summary beside them. Version 1 (netopt 0.1,
before the field existed) is migrated in place when the run is opened, each file atomically and
config.json last, so a migration stopped half way is simply done again. A run of a newer
version is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netopt.bridge import build
from netopt.errors import NetoptError, first_line
from netopt.ir import Network
from netopt.ir.versions import VERSION_KEY, stamped, version_of
from netopt.runs.files import append_line, read_lines, save_tensors, write_atomic, write_json

__all__ = ["RunDir", "RunError", "load", "FORMAT_VERSION"]

BEFORE_RUN = frozenset({"app.json"})
"""What an application may write into a run directory before the run starts (its own config)."""

FORMAT_VERSION = 2
"""Version of the run directory's own files (see the module docstring)."""
CALIBRATIONS = "calibrations.json"
"""The lookup-table calibrations a run started with and the points it added since (resumed as pinned)."""


def _stamped(doc: dict[str, Any]) -> dict[str, Any]:
    return stamped(doc, FORMAT_VERSION)


def _unstamped(doc: dict[str, Any], where: Path) -> dict[str, Any]:
    """`doc` without its version key; a newer run format than this netopt's is refused."""
    version_of(doc, FORMAT_VERSION, f"{where} (a run)", "upgrade netopt to resume or read it", error=RunError)
    return {k: v for k, v in doc.items() if k != VERSION_KEY}


class RunError(NetoptError):
    """A run directory that cannot be created, read or resumed as asked."""


class RunDir:
    """Reads and writes one run's files."""

    CALIBRATIONS = CALIBRATIONS

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- creating and opening ----------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any], original: Network) -> RunDir:
        run = cls(path)
        if run.path.is_file():
            raise RunError(f"run directory {run.path} is a file; give a folder (it is created if missing)")
        if run.path.exists() and any(p.name not in BEFORE_RUN for p in run.path.iterdir()):
            raise RunError(f"{run.path} already holds files; resume that run, or choose an empty folder")
        try:
            write_json(run.path / "original.json", original.to_dict())
            write_json(run.path / "config.json", config, FORMAT_VERSION)  # written last: its presence marks a run
        except OSError as exc:
            raise RunError(f"run directory {run.path} cannot be created ({exc.strerror}); give a folder you can "
                           "write (not below a file)") from None
        return run

    @classmethod
    def open(cls, path: str | Path, migrate: bool = True) -> RunDir:
        """An existing run; one of an older format is migrated first unless `migrate` is False
        (reading needs no migration: only a run that will be written to does)."""
        run = cls(path)
        if not (run.path / "config.json").is_file():
            raise RunError(f"{run.path} is not a netopt run (no config.json); give the folder a run was started in")
        raw = _read_json(run.path / "config.json")
        _unstamped(raw, run.path / "config.json")  # a newer format is refused before anything is read
        if migrate and raw.get(VERSION_KEY, 1) < FORMAT_VERSION:
            run._migrate_from_v1()
        if migrate:  # a run to be written to: temporary files a kill left behind are never complete
            for stale in run.path.rglob(".*.tmp"):
                stale.unlink(missing_ok=True)
        return run

    def _migrate_from_v1(self) -> None:
        """Version 1 had no version field: stamp every document and history line, config last."""
        history = [_stamped(r) for r in read_lines(self.path / "history.jsonl")]
        if history:
            lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
            write_atomic(self.path / "history.jsonl", lines.encode())
        for summary in sorted(self.path.glob("*/*/summary.json")) + sorted(self.path.glob("final/summary.json")):
            write_json(summary, json.loads(summary.read_text()), FORMAT_VERSION)
        write_json(self.path / "config.json", json.loads((self.path / "config.json").read_text()), FORMAT_VERSION)

    def config(self) -> dict[str, Any]:
        return _unstamped(_read_json(self.path / "config.json"), self.path / "config.json")

    def original(self) -> Network:
        return _read_network(self.path / "original.json", "it holds the network the run started from; restore it, "
                             "or start a new run")

    # --- proposals -----------------------------------------------------------------------------

    def record_proposal(self, record: dict[str, Any], module: nn.Module | None = None) -> None:
        """Log one evaluated proposal; its fine-tuned weights first, so a logged one can be reused."""
        if module is not None:
            save_tensors(self._proposal_weights(record["iteration"], record["group"]), module.state_dict())
        append_line(self.path / "history.jsonl", _stamped(record))

    def save_calibrations(self, record: dict[str, Any]) -> None:
        """The run's record of its lookup tables' calibrations (the engine's), replaced whole."""
        write_json(self.path / CALIBRATIONS, record, FORMAT_VERSION)

    def calibrations(self) -> dict[str, Any]:
        """That record ({} for a run that has none)."""
        path = self.path / CALIBRATIONS
        return _unstamped(_read_json(path), path) if path.is_file() else {}

    def history(self) -> list[dict[str, Any]]:
        log = self.path / "history.jsonl"
        try:
            return [_unstamped(r, log) for r in read_lines(log)]
        except (ValueError, UnicodeDecodeError) as exc:  # json's errors are ValueErrors
            raise RunError(f"{log} is damaged ({first_line(exc, 120)}): a line that is not a record is not one a "
                           "kill could cut; restore the file, or start a new run") from None

    def proposal_weights(self, iteration: int, group: str) -> dict[str, torch.Tensor] | None:
        """Saved weights of a proposal, or None: missing or unreadable ones are evaluated again."""
        path = self._proposal_weights(iteration, group)
        try:
            return torch.load(path, weights_only=True) if path.exists() else None
        except Exception:
            warnings.warn(f"{path} is damaged: that proposal is fine-tuned again", RuntimeWarning, stacklevel=2)
            return None

    def _proposal_weights(self, iteration: int, group: str) -> Path:
        name = hashlib.sha256(group.encode()).hexdigest()[:16]
        return self.path / "proposals" / f"{iteration:04d}" / f"{name}.pt"

    # --- the family and the final network ------------------------------------------------------

    def save_member(self, iteration: int, network: Network, module: nn.Module, summary: dict[str, Any]) -> None:
        folder = self.path / "family" / f"{iteration:04d}"
        save_tensors(folder / "weights.pt", module.state_dict())
        write_json(folder / "network.json", network.to_dict())
        write_json(folder / "summary.json", summary, FORMAT_VERSION)  # last: a member with a summary is complete

    def members(self) -> list[int]:
        folder = self.path / "family"
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if (p / "summary.json").is_file())

    def summary(self, which: int | str) -> dict[str, Any]:
        path = self._folder(which) / "summary.json"
        return _unstamped(_read_json(path), path)

    def network(self, which: int | str) -> Network:
        folder = self._folder(which)
        return _read_network(folder / "network.json", f"delete {folder} to resume from the iteration before it, or "
                             "start a new run")

    def module(self, which: int | str) -> nn.Module:
        """A ready torch module of family member `which` (an iteration), or of "final"."""
        folder = self._folder(which)
        try:
            module = build(Network.from_json((folder / "network.json").read_text()))
            module.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        except Exception as exc:
            raise RunError(f"{folder} is damaged ({type(exc).__name__}: {first_line(exc, 100)}); delete that folder "
                           "to resume from the iteration before it, or start a new run") from None
        return module.eval()

    def save_final(self, network: Network, module: nn.Module, summary: dict[str, Any], onnx: bytes,
                   program: bytes | None = None) -> None:
        """The final network in every form a user takes away: state_dict + IR (`load` rebuilds it
        without the user's class), ONNX, and a `torch.export` program (`torch.export.load`)."""
        folder = self.path / "final"
        save_tensors(folder / "weights.pt", module.state_dict())
        write_json(folder / "network.json", network.to_dict())
        write_atomic(folder / "model.onnx", onnx)
        if program is not None:
            write_atomic(folder / "model.pt2", program)
        write_json(folder / "summary.json", summary, FORMAT_VERSION)

    def _folder(self, which: int | str) -> Path:
        if which == "final":
            folder = self.path / "final"
        elif which == "last":
            members = self.members()
            if not members:
                raise RunError(f"{self.path} has no completed iteration yet")
            folder = self.path / "family" / f"{members[-1]:04d}"
        elif isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
            folder = self.path / "family" / f"{int(which):04d}"
        else:
            raise RunError(f"{which!r} is not a network of a run: give \"final\", \"last\" or an iteration number "
                           f"(completed: {self.members()})")
        if not (folder / "summary.json").is_file():
            raise RunError(f"{folder} is not a completed network of this run; see members() for the iterations")
        return folder


def _read_network(path: Path, fix: str) -> Network:
    """A network the run wrote, or a RunError naming the file and what to do."""
    try:
        return Network.from_json(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, NetoptError) as exc:  # missing, not UTF-8 (a ValueError), not a network
        raise RunError(f"{path} is damaged ({type(exc).__name__}: {first_line(exc, 100)}); {fix}") from None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object the run wrote, or a RunError naming the file and what to do."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is damaged ({first_line(exc, 100)}); restore it, delete the folder holding it to "
                       "resume from before, or start a new run") from None
    if not isinstance(value, dict):
        raise RunError(f"{path} is damaged (not a JSON object); restore it, or start a new run")
    return value


def exported_program(module: nn.Module, example: torch.Tensor) -> bytes | None:
    """`torch.export` of the module, any batch size where torch can, else at the example's, as the
    bytes `torch.export.save` writes; None (with a warning) where torch cannot export it, so that
    the run is saved all the same."""
    batch = torch.cat([example[:1], example[:1]])  # a batch of 1 would be specialized to 1
    try:
        program = _export(module, (batch,), ({0: torch.export.Dim.AUTO},))
    except Exception as dynamic:
        try:  # e.g. a detector's decoding that branches on a value: its batch stays the example's
            program = _export(module, (example,), None)
        except Exception as exc:
            warnings.warn(f"torch.export could not export the final network ({first_line(exc, 160)}); final/model.pt2 "
                          "is not written (model.onnx and weights.pt + network.json are)", UserWarning, stacklevel=2)
            return None
        warnings.warn(f"torch.export could not export the final network for any batch size "
                      f"({first_line(dynamic, 120)}); final/model.pt2 takes batches of {example.shape[0]} only",
                      UserWarning, stacklevel=2)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], dynamic: Any) -> torch.export.ExportedProgram:
    """torch.export with its warnings, logs and printed graphs held back (a failure is one line)."""
    loud = logging.getLogger("torch")
    level, held = loud.level, io.StringIO()
    loud.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(held), contextlib.redirect_stdout(held):
            warnings.simplefilter("ignore")
            return torch.export.export(module.eval(), args, dynamic_shapes=dynamic)
    finally:
        loud.setLevel(level)


def load(run_dir: str | Path, which: int | str = "final") -> nn.Module:
    """The network `which` ("final", "last", or an iteration number) of a run, ready to use."""
    return RunDir.open(run_dir, migrate=False).module(which)
