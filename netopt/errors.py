"""The one exception hierarchy of netopt.

Every message says three things: the offending value, the rule it breaks, and how to fix it.
The CLI turns any `NetoptError` into one line and a non-zero exit.
"""

from __future__ import annotations

__all__ = [
    "NetoptError",
    "IRError",
    "LintError",
    "WidthError",
    "FormatError",
    "TraceError",
    "UnsupportedOpError",
    "MaterializeError",
    "ConfigError",
    "MeasurementError",
    "LookupTableError",
    "InfeasibleError",
    "ObjectiveError",
    "first_line",
]


class NetoptError(Exception):
    """Base class of every error netopt raises on purpose."""


class IRError(NetoptError):
    """A network description that breaks a structural rule (shapes, arity, attributes)."""


class LintError(IRError):
    """`Network.lint()` found one or more broken invariants; `problems` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        head = f"network failed lint with {len(problems)} problem(s):"
        super().__init__("\n  - ".join([head, *problems]))


class WidthError(IRError):
    """A width assignment that no network can have: unknown group, below minimum, off step."""


class FormatError(NetoptError):
    """A file netopt wrote (a network, a comparison row, a cache entry) that cannot be read: wrong
    format, version or content."""


class TraceError(NetoptError):
    """The torch model could not be traced into the IR (bad example input, failed run)."""


class UnsupportedOpError(TraceError):
    """The model uses an operation the IR does not model."""


class MaterializeError(NetoptError):
    """A network could not be turned into a torch module with the traced weights."""


class ConfigError(NetoptError):
    """Settings or a configuration file with an unknown, missing or out-of-range field."""


class MeasurementError(NetoptError):
    """A measurement could not be taken: export failed, the runtime refused the model, no counter."""


class LookupTableError(NetoptError):
    """A lookup table that cannot be used: unreadable, corrupted, or from another platform."""


class InfeasibleError(NetoptError):
    """No width assignment can meet the budgets (or the tightened targets of an iteration)."""


class ObjectiveError(NetoptError):
    """An objective's function failed or returned what is not a finite number; the run stops at that
    proposal, and resumes from there once the function is fixed."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type if empty), for one-line errors."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0][:limit]
