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

import difflib
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["Frozen", "did_you_mean", "model_at"]


class Frozen(BaseModel):
    """A frozen pydantic model that forbids unknown fields; subclasses add to its config."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def did_you_mean(name: object, choices: Sequence[str]) -> str:
    """"; did you mean 'x'?" for the one of `choices` closest to a mistyped `name`, else "".

    >>> did_you_mean("short_term_step", ["short_term_steps", "long_term_steps", "lr"])
    "; did you mean 'short_term_steps'?"
    """
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def model_at(model: type[BaseModel], path: Sequence[object]) -> type[BaseModel] | None:
    """The model whose fields a validation error's location `path` names, through nested models,
    lists and optionals (an index in a list is passed over); None where it leaves the models."""
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        found = _model_in(field.annotation) if field is not None else None
        if found is None:
            return None
        model = found
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
