"""MnasNet's Fig. 6 at CPU scale: where the sampled models' latencies fall under the soft and the hard reward.

    python benchmarks/bench_reward.py [--target 50%] [--trials 60] [--short 10] [--plot reward.png]

On the comparison problem (the zoo's MobileNetV1 0.5 at 32 px on the bundled digits, latency
from a calibrated ONNX Runtime lookup table), Optuna's TPE samples `trials` networks under each
reward at one latency target T: the soft reward (alpha = beta = -0.07) and the hard one
(alpha = 0, beta = -1). MnasNet reports that the hard reward crowds samples just under T while
the soft one spreads them over a wider range around it. Printed: the distribution of sampled
latency / T (quantiles, share within 0.9..1.0 and above 1), the chosen network of each, and a
histogram saved to `--plot`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import netopt
from netopt.measure import OnnxRuntimeCPU
from netopt.report import markdown_table
from netopt.zoo.pretrained import pretrained_mnist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="50%")
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--short", type=int, default=10)
    p.add_argument("--plot", type=Path, default=Path("reward.png"))
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    model, data = pretrained_mnist(width=0.5, size=32)
    traced = netopt.trace(model, data.train_x[:1])
    lut = netopt.LookupTable.open(folder / "lut.sqlite", OnnxRuntimeCPU(threads=1))
    lut.calibrate(traced)
    rewards = {"soft (-0.07, -0.07)": netopt.MnasNetReward(), "hard (0, -1)": netopt.MnasNetReward(alpha=0, beta=-1)}
    rows, ratios = [], {}
    for name, reward in rewards.items():
        problem = netopt.Problem(traced, [netopt.LatencyConstraint(args.target, lut)], netopt.Accuracy(data))
        search = netopt.OptunaSearch(sampler="tpe", trials=args.trials, short_term_steps=args.short,
                                     long_term_steps=0, reward=reward, progress=False)
        result = search.run(problem)
        target = result.budgets["latency"]
        r = np.array([h.resources["latency"] / target for h in result.history if h.score is not None])
        ratios[name] = r
        q = np.quantile(r, [0.1, 0.5, 0.9])
        rows.append([name, str(len(r)), f"{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}", f"{np.mean((r > 0.9) & (r <= 1)):.0%}",
                     f"{np.mean(r > 1):.0%}", f"{result.final.resources['latency'] / target:.2f}",
                     f"{result.final.accuracy:.3f}"])
    print(f"latency target T = {args.target} of the start; {args.trials} TPE samples each, {args.short} "
          "short-term steps a sample\n")
    print(markdown_table(["reward", "samples", "latency/T: 10% / 50% / 90%", "in (0.9, 1]", "over T",
                          "chosen latency/T", "chosen holdout"], rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0.2, 1.6, 29)
    for name, r in ratios.items():
        ax.hist(r, bins=bins, alpha=0.5, label=name)
    ax.axvline(1.0, color="k", lw=1)
    ax.set(xlabel="estimated latency / target", ylabel="sampled models", title="MnasNet's rewards (cf. its Fig. 6)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"\nhistogram: {args.plot}")


if __name__ == "__main__":
    main()
