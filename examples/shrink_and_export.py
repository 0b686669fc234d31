"""Trace a network, shrink its channel groups, and ship the smaller model.

    python examples/shrink_and_export.py --out /tmp/shrunk [--resolution 224]

Shows the whole foundation end to end: trace -> IR -> with_widths -> materialize -> save the
state_dict and the IR -> reload both -> export ONNX -> run it in ONNX Runtime.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnxruntime as ort
import torch

import netopt
from netopt.bridge import build
from netopt.ir import Network, macs, params
from netopt.zoo import MobileNetV2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the model files")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--fraction", type=float, default=0.5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    model = MobileNetV2(width=1.0, num_classes=10).eval()
    x = torch.randn(1, 3, args.resolution, args.resolution)
    traced = netopt.trace(model, x)
    small = traced.network.scaled(args.fraction)
    module = traced.materialize(small).eval()
    print(f"MACs {macs(traced.network):,} -> {macs(small):,}; params {params(traced.network):,} -> {params(small):,}")

    # What a deployment keeps: the IR (architecture) and the weights. No original code needed.
    (args.out / "network.json").write_text(small.to_json())
    torch.save(module.state_dict(), args.out / "weights.pt")
    reloaded = build(Network.from_json((args.out / "network.json").read_text())).eval()
    reloaded.load_state_dict(torch.load(args.out / "weights.pt", weights_only=True))
    assert torch.equal(reloaded(x), module(x)), "reloaded model differs"

    onnx_path = args.out / "model.onnx"
    torch.onnx.export(module, (x,), str(onnx_path), dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    diff = float((torch.from_numpy(out) - module(x)).abs().max())
    print(f"ONNX Runtime output matches torch within {diff:.2e}; files in {args.out}")


if __name__ == "__main__":
    main()
