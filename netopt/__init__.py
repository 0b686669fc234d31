"""netopt: adapt a pretrained PyTorch network to a platform's resource budgets.

`netopt.ir` is importable without torch; the torch-facing names below load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from netopt.errors import NetoptError

if TYPE_CHECKING:
    from netopt.bridge import Traced, trace
    from netopt.lut import LookupTable

__version__ = "0.1.0"
__all__ = ["LookupTable", "NetoptError", "Traced", "__version__", "trace"]

_LAZY = {"trace": "netopt.bridge", "Traced": "netopt.bridge", "LookupTable": "netopt.lut"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'netopt' has no attribute {name!r}")
    return getattr(import_module(module), name)
