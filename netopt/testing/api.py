"""netopt's public API as text: every public name and its signature, one line each.

    python -m netopt.testing.api > tests/data/public_api.txt   # after a deliberate change

The suite compares this listing with `tests/data/public_api.txt` (the shape of torch.fx's
backward-compatibility test), so a public name or signature cannot change by accident: a
change is made on purpose, by regenerating the file, and shows in the diff of the commit.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import re
from collections.abc import Iterator

__all__ = ["PUBLIC_MODULES", "listing", "main"]

PUBLIC_MODULES = (
    "netopt", "netopt.ir", "netopt.bridge", "netopt.measure", "netopt.lut", "netopt.constraints",
    "netopt.objectives", "netopt.strategies", "netopt.runs", "netopt.report", "netopt.errors",
    "netopt.testing.strategies", "netopt.testing.contract", "netopt.testing.backends", "netopt.testing.problems",
    "netopt.registry", "netopt.strategies.registry", "netopt.constraints.registry", "netopt.measure.registry",
)


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"


def _annotation(annotation: object) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _describe(module: str, name: str, obj: object) -> Iterator[str]:
    where = f"{module}.{name}"
    if inspect.isclass(obj):
        if issubclass(obj, enum.Enum):
            yield f"{where}: enum {sorted(m.name for m in obj)}"
            return
        yield f"{where}{_signature(obj)}"
        settings = getattr(obj, "Settings", None)  # a strategy: its settings are its signature
        if inspect.isclass(settings) and hasattr(settings, "model_fields"):
            for field, info in settings.model_fields.items():
                default = info.get_default(call_default_factory=True)
                yield f"{where} setting {field}: {_annotation(info.annotation)} = {default!r}"
        for attr, member in sorted(vars(obj).items()):
            if attr.startswith("_"):
                continue
            if inspect.isfunction(member):
                yield f"{where}.{attr}{_signature(member)}"
            elif isinstance(member, classmethod | staticmethod):
                yield f"{where}.{attr}{_signature(member.__func__)}"
            elif isinstance(member, property):
                yield f"{where}.{attr}: property"
    elif callable(obj):
        yield f"{where}{_signature(obj)}"
    elif inspect.ismodule(obj):
        yield f"{where}: module"
    else:
        yield f"{where}: {type(obj).__name__}"


def listing() -> list[str]:
    """Every public name of the public modules, with signatures, sorted."""
    lines: set[str] = set()
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", ()):
            lines.update(_describe(module, name, getattr(mod, name)))
    return sorted({_BOUND.sub(r"\1", line) for line in lines})


_BOUND = re.compile(r"\b((?:ge|gt|le|lt)=-?\d+)(\.0)\b")
"""`Ge(ge=0.0)` shown as `Ge(ge=0)`: typing caches `Annotated[float, Ge(ge=0)]` by equality, so which of
the two a signature shows depends on what was imported first."""


def main() -> int:
    print("\n".join(listing()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
