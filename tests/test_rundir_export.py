"""The final network's torch.export program (final/model.pt2): any batch size where torch can,
else the example's, else none, each failure one warning line and nothing else on the console."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from netopt.runs.rundir import exported_program


class BranchesOnItsBatch(nn.Module):
    """Exports at a fixed batch only: a size made a tensor, then read as a value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(torch.tensor(x.shape[0]) == 1):
            return x * 2
        return x + 1


class BranchesOnValues(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x + 1


def load(data: bytes) -> torch.export.ExportedProgram:
    return torch.export.load(io.BytesIO(data))


def test_a_network_exports_for_any_batch() -> None:
    data = exported_program(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), torch.rand(1, 3))
    assert data is not None and load(data).module()(torch.rand(5, 3)).shape == (5, 4)


def test_one_that_cannot_have_any_batch_is_exported_at_the_examples(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(UserWarning, match=r"could not export the final network for any batch size \(.*\); "
                                         r"final/model.pt2 takes batches of 1 only"):
        data = exported_program(BranchesOnItsBatch(), torch.rand(1, 3))
    assert data is not None
    x = torch.rand(1, 3)
    assert torch.equal(load(data).module()(x), x * 2)
    assert capfd.readouterr().err == ""  # torch's graph dumps held back


def test_one_torch_cannot_export_is_one_warning(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(UserWarning, match=r"could not export the final network \(.*\); final/model.pt2 is not written"):
        assert exported_program(BranchesOnValues(), torch.rand(1, 3)) is None
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""
