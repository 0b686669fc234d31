"""Every Python snippet of the README and the docs pages runs as written, at a tiny size; the README's
TOML config is the example's.

The snippets are read from the Markdown files themselves (their ```python blocks). "Tiny" is a few
textual substitutions (smaller images, fewer steps, looser budgets), each of which must find its
text: a snippet that changes breaks this test instead of escaping it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README, IR, MEASUREMENT, SCALING = "README.md", "docs/ir.md", "docs/measurement.md", "docs/scaling.md"
COUNTS = {README: 2, IR: 1, MEASUREMENT: 1, SCALING: 2}
"""How many Python snippets each file holds: every one of them is run below."""


def snippets(name: str = README) -> list[str]:
    """The ```python blocks of the Markdown file `name` (relative to the repository root), in order."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in (ROOT / name).read_text().split("\n"):
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current).strip())
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def tiny(code: str, changes: dict[str, str]) -> str:
    for old, new in changes.items():
        assert old in code, f"the snippet no longer holds {old!r}: update tests/test_readme.py"
        code = code.replace(old, new)
    return code


def run(code: str, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NETOPT_CACHE": str(cwd / "cache")}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=env, check=False)


@pytest.mark.parametrize("name", COUNTS)
def test_the_readme_and_docs_have_the_snippets_this_test_runs(name: str) -> None:
    found = snippets(name)
    assert len(found) == COUNTS[name], [s.splitlines()[0] for s in found]


@pytest.mark.slow
def test_what_is_here_and_measuring(tmp_path: Path) -> None:
    ir, measuring = snippets(IR)[0], snippets(MEASUREMENT)[0]
    code = tiny(ir, {"224, 224": "32, 32", "width=1.0": "width=0.5"}) + "\n" + tiny(measuring, {
        "224, 224": "32, 32", "lut.calibrate(traced)": "lut.calibrate(traced, max_networks=4)"})
    done = run(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_adapting(tmp_path: Path) -> None:
    code = tiny(snippets()[0], {"pretrained_mnist(width=0.5, size=32)":
                                "pretrained_mnist(width=0.5, size=32, steps=20)",
                                '"50%"': '"85%"', '"60%"': '"90%"', 'ReductionSchedule("4%"': 'ReductionSchedule("15%"',
                                "short_term_steps=60, long_term_steps=300":
                                "short_term_steps=1, long_term_steps=2", "OnnxRuntimeCPU(threads=1))":
                                "OnnxRuntimeCPU(threads=1), calibration_networks=4)"})
    done = run(code + "\nprint(type(netopt.load('runs/x', 'final')).__name__)", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("NetoptNetwork")  # a module rebuilt from the run directory alone


@pytest.mark.slow
def test_adapting_your_own_model(tmp_path: Path) -> None:
    examples = ROOT / "examples"
    train = run("import own_model; from pathlib import Path; own_model.train_checkpoint(Path('runs/digits_cnn.pt'), "
                "steps=10)", tmp_path, examples)
    assert train.returncode == 0, train.stderr[-3000:]
    code = tiny(snippets()[1], {'"60%"': '"85%"', 'ReductionSchedule("8%"': 'ReductionSchedule("15%"',
                                "short_term_steps=40, long_term_steps=200":
                                "short_term_steps=1, long_term_steps=2", "OnnxRuntimeCPU(threads=1))":
                                "OnnxRuntimeCPU(threads=1), calibration_networks=4)"})
    done = run(code, tmp_path, examples)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "own" / "final" / "model.pt2").is_file()


def test_the_readme_config_is_the_example_config() -> None:
    text = (ROOT / "README.md").read_text()
    readme = tomllib.loads(text.split("```toml\n")[1].split("```")[0])
    example = tomllib.loads((ROOT / "examples" / "own_model.toml").read_text())
    assert readme == example


PROBLEM = """
import netopt
from netopt.testing.problems import joint_problem
net = netopt.ir.Builder((3, 16, 16))
x = net.relu(net.bn(net.conv(net.input, 16, 3)))
net = net.build(net.linear(net.flatten(net.adaptive_avgpool(net.relu(net.bn(net.conv(x, 24, 3))))), 10))
problem = joint_problem(net, "60%", "95%")
"""


def test_beyond_one_machine_on_a_local_cluster(tmp_path: Path) -> None:
    code = tiny(snippets(SCALING)[0], {'Client("tcp://scheduler:8786")':
                                'Client(LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", '
                                'dashboard_address=None))',
                                "ProgressiveBarrier(executor=client)": "ProgressiveBarrier(executor=client, "
                                                                       "short_term_steps=0, long_term_steps=0)"})
    main = PROBLEM + "from distributed import LocalCluster\n" + code + "\nprint(len(result.family))"
    done = run("if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in main.splitlines()), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 2


def test_beyond_one_machine_on_postgresql(tmp_path: Path, pg: object) -> None:
    lut, studies = pg.create_database("lut_pixel8"), pg.create_database("studies")  # type: ignore[attr-defined]
    code = tiny(snippets(SCALING)[1], {'"postgresql://user:password@db:5432/lut_pixel8"': repr(lut),
                                '"postgresql://user:password@db:5432/studies"': repr(studies),
                                "trials=200": "trials=3, short_term_steps=0, long_term_steps=0"})
    done = run(PROBLEM + code + "\nprint(len(result.history))", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 3


@pytest.mark.parametrize(("name", "block"), [(name, block) for name, count in COUNTS.items() for block in range(count)])
def test_every_snippet_compiles(name: str, block: int) -> None:
    compile(snippets(name)[block], f"{name} snippet {block}", "exec")
