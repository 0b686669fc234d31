"""An agent (`netopt agent`) started in a process of its own for a test, on a free loopback port."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Agent:
    process: subprocess.Popen[str]
    url: str
    host: str
    port: int
    log: Path


def start_agent(code: str, env: dict[str, str], log: Path, seconds: float = 60.0) -> Agent:
    """Run `code` (which serves an agent) and wait for the URL it says it listens on; its stderr goes to `log`."""
    with log.open("w") as err:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True,
                                   env=env, cwd=ROOT)
    assert process.stdout is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline() if select.select([process.stdout], [], [], 0.5)[0] else ""
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].strip()
            parts = urlsplit(url)
            return Agent(process, url, str(parts.hostname), int(parts.port or 0), log)
    process.kill()
    raise AssertionError(f"the agent did not start within {seconds} s (exit code {process.poll()}): "
                         f"{log.read_text()[-500:]}")


def stop_agent(agent: Agent) -> None:
    agent.process.terminate()
    try:
        agent.process.wait(10)
    except subprocess.TimeoutExpired:
        agent.process.kill()
        agent.process.wait(10)
