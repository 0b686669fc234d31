"""Amounts of a resource: absolute ("3.2ms", 3.2) or relative to the starting network ("50%")."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from netopt.errors import ConfigError

__all__ = ["Amount", "check_unit", "parse_amount"]

_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z_%]*)\s*$")


@dataclass(frozen=True)
class Amount:
    """`value` in the estimator's unit, or a fraction of a reference when `relative`.
    `unit` is the suffix it was written with ("" when none), checked against the resource."""

    value: float
    relative: bool = False
    unit: str = ""

    def resolve(self, reference: float) -> float:
        """The absolute amount, given the reference (the starting network's resource)."""
        return self.value * reference if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value:.4g} (x start)" if self.relative else f"{self.value:.4g}"


def parse_amount(raw: float | int | str | Amount, unit: str | None, what: str) -> Amount:
    """Parse a positive amount: a number, "<number><unit>", or "<number>%".

    With `unit` None any unit suffix is kept for a later `check_unit`."""
    if isinstance(raw, Amount):
        amount = raw
    elif isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"{what} {raw!r} must be a number, '<number>{unit}' or '<number>%'")
    elif isinstance(raw, str):
        amount = _parse_text(raw, unit, what)
    else:
        amount = Amount(float(raw))
    if not math.isfinite(amount.value) or amount.value <= 0:
        raise ConfigError(f"{what} {raw!r} must be a positive, finite amount; NaN, zero and negatives are refused")
    if unit is not None:
        check_unit(amount, unit, what)
    return amount


def check_unit(amount: Amount, unit: str, what: str) -> None:
    """An amount written with a unit suffix must use the resource's own unit."""
    if amount.unit and amount.unit.lower() != unit.lower():
        raise ConfigError(
            f"{what} is in {amount.unit!r} but this resource is measured in {unit!r}; "
            f"give it in {unit} or as a percentage of the starting network"
        )


def _parse_text(raw: str, unit: str | None, what: str) -> Amount:
    match = _PATTERN.match(raw)
    if match is None:
        if raw.strip().lower() in ("nan", "inf", "-inf") or raw.strip().startswith("-"):
            raise ConfigError(f"{what} {raw!r} must be a positive, finite amount; NaN, zero and negatives are refused")
        raise ConfigError(f"{what} {raw!r} is not an amount; write e.g. '3.2{unit or 'ms'}', 3.2 or '50%'")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "%":
        return Amount(number / 100.0, relative=True)
    return Amount(number, unit=suffix)
