"""The edge examples' adapted networks measured where they would run: each final beside its start.

    .venv/bin/python benchmarks/bench_edge_runtimes.py --vit RUN_DIR --yolo RUN_DIR [--runtimes ...]

`examples/vit_digits.py` and `examples/yolo_digits.py` adapt for ONNX Runtime fp32 on one thread
(their lookup table). This measures each run's final network and its start side by side on every
runtime named (ExecuTorch XNNPACK int8 by default among them), one runtime at a time, so the
final's share of the start reads where the user deploys: issue 31's "measured on XNNPACK int8 as
well", and issue 30's transfer question for a transformer and a detector. Latency does not depend on
the weights, so each network is rebuilt from the example's own model definition (random weights)
at the final's widths; int8 is calibrated on the example's own inputs. Output: a markdown table on
stdout and `--out`/edge_runtimes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))  # Ultralytics writes settings

import torch

import netopt
from netopt.measure import MeasureSettings

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples")]

from bench_runtimes import RUNTIMES, measure_on  # noqa: E402

DEFAULT_RUNTIMES = ("ORT fp32", "ORT int8", "OpenVINO fp32", "OpenVINO int8", "XNNPACK fp32", "XNNPACK int8")


def final_widths(run: Path) -> tuple[dict[str, int], int]:
    """The widths of the run's final network (its last family member where no final was saved),
    and its iteration."""
    last = run / "final" if (run / "final" / "network.json").is_file() else sorted((run / "family").iterdir())[-1]
    network = json.loads((last / "network.json").read_text())
    summary = json.loads((last / "summary.json").read_text())
    return {str(k): int(v) for k, v in network["widths"].items()}, int(summary["iteration"])


def vit_case() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    import vit_digits

    images = torch.as_tensor(netopt.data.mnist().train_x[:64], dtype=torch.float32)
    return vit_digits.vit().eval(), [images[i:i + 1] for i in range(0, 64, 8)]


def yolo_case() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    import yolo_digits

    from netopt.data_detection import mnist_detection

    data = mnist_detection(train=64, holdout=8, test=8, canvas=64, digit_size=(16, 32))
    return yolo_digits.yolo().eval(), [data.train.images[i:i + 1] for i in range(0, 64, 8)]


CASES = {"vit": vit_case, "yolo": yolo_case}


def measure_case(name: str, run: Path, runtimes: Sequence[str], settings: MeasureSettings) -> dict[str, Any]:
    model, representative = CASES[name]()
    traced = netopt.trace(model, representative[0])
    widths, iteration = final_widths(run)
    final = traced.network.with_widths(widths)
    found: dict[str, Any] = {"iteration": iteration,
                             "params": [netopt.ir.params(traced.network), netopt.ir.params(final)]}
    for label in runtimes:
        print(f"{name}: {label}", file=sys.stderr, flush=True)
        found[label] = measure_on(label, traced, [traced.network, final], representative, settings)
    return found


def table(results: dict[str, dict[str, Any]], runtimes: Sequence[str]) -> str:
    lines = ["| network | " + " | ".join(runtimes) + " |", "|---|" + "---|" * len(runtimes)]
    for name, found in results.items():
        cells = []
        for label in runtimes:
            (start, final), note = found[label]["ms"], found[label]["portable"]
            cells.append(f"{final / start:.1%} ({start:.3g} -> {final:.3g} ms){' *' if note else ''}")
        lines.append(f"| {name} (iteration {found['iteration']}) | " + " | ".join(cells) + " |")
    note = ("Cells: the final's latency as a share of its start's, side by side on that runtime, 1 thread "
            "(start -> final medians). *: some ops ran outside the XNNPACK delegate.")
    return "\n".join(lines) + "\n\n" + note


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vit", type=Path, help="run directory of examples/vit_digits.py")
    p.add_argument("--yolo", type=Path, help="run directory of examples/yolo_digits.py")
    p.add_argument("--runtimes", nargs="+", default=list(DEFAULT_RUNTIMES), choices=list(RUNTIMES))
    p.add_argument("--out", type=Path, default=HERE / "out" / "runtimes")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = MeasureSettings()
    results = {name: measure_case(name, run, args.runtimes, settings)
               for name, run in (("vit", args.vit), ("yolo", args.yolo)) if run is not None}
    if not results:
        p.error("name at least one run: --vit RUN_DIR and/or --yolo RUN_DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "edge_runtimes.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(target)
    print(table(results, args.runtimes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
