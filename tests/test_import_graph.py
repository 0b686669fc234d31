"""netopt's own import graph has no cycles, and every public subpackage loads with `import netopt`.

Every import between netopt's modules counts, including those under `TYPE_CHECKING` and those
inside functions: a cycle hidden in a function is still two modules that cannot be read (or
split) one without the other. A package and its own submodules are not a cycle (a package's
`__init__` re-exports what its submodules define). The same listing is a command anyone can
run: `python -m netopt.testing.imports` prints every module's imports of netopt.
"""

from __future__ import annotations

import subprocess
import sys

from netopt.testing.imports import cycles, import_graph, package_graph


def test_the_module_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "netopt.ir.network" in graph and "netopt.bridge.trace" in graph
    assert cycles(graph) == []


def test_the_package_graph_has_no_cycle() -> None:
    """Packages layer: lut below strategies, report below both (a cycle between packages is
    one through modules that each stand apart, strategies -> lut -> report -> strategies once)."""
    graph = package_graph()
    assert {"netopt.lut", "netopt.strategies", "netopt.report", "netopt.ir"} <= set(graph)
    assert "netopt.ir" in graph["netopt.lut"] and "netopt.lut" not in graph["netopt.lut"]  # between packages only
    assert cycles(graph) == []


def test_a_cycle_between_packages_is_found_through_their_modules() -> None:
    graph = {"netopt.a.x": {"netopt.b.y"}, "netopt.b.y": set(), "netopt.b.z": {"netopt.a"}, "netopt.a": set()}
    assert cycles(package_graph(graph)) == [["netopt.a", "netopt.b"]]


def test_a_cycle_is_found_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


PUBLIC = ["measure.OnnxRuntimeCPU", "measure.EnergyModel", "ir.Network", "bridge.build", "lut.LookupTable",
          "constraints.LatencyConstraint", "objectives.Accuracy", "strategies.ProgressiveBarrier",
          "testing.strategies.networks", "testing.peers.ARCHITECTURES", "data.Splits", "zoo.MobileNetV2", "runs.RunDir"]


def test_every_public_subpackage_is_reachable_after_a_bare_import() -> None:
    """In a fresh interpreter, so that nothing another test imported hides a missing load."""
    code = "import netopt\n" + "".join(f"netopt.{name}\n" for name in PUBLIC)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]


def test_the_library_never_imports_the_application() -> None:
    graph = import_graph()
    app = {m for m in graph if m == "netopt.app" or m.startswith("netopt.app.")}
    callers = {m for m, deps in graph.items() if deps & app and m not in app and m != "netopt.cli"}
    assert app and callers == set()


def test_a_job_gives_the_callers_thread_setting_back() -> None:
    import torch

    from netopt.app.jobs import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
