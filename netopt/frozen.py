"""`Frozen`: the one base of every configuration model netopt reads, in code or from a file.

Immutable and keyword-only, and a field netopt does not know is refused by name, so a typo in
a config file is an error rather than a silently ignored setting (STYLE.md, principle 5).

    >>> class Settings(Frozen):
    ...     threads: int = 1
    >>> Settings(threds=2)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings
    threds
      Extra inputs are not permitted [type=extra_forbidden, input_value=2, input_type=int]
    ...
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Frozen"]


class Frozen(BaseModel):
    """A frozen pydantic model that forbids unknown fields; subclasses add to its config."""

    model_config = ConfigDict(frozen=True, extra="forbid")
