"""examples/steering.py end to end: a parent steers a running worker process over real stdio."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from conftest import PYTHON

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "steering.py"


async def test_the_parent_steers_the_running_child(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = tmp_path / "outcome.json"
    cmd = [PYTHON, str(EXAMPLE), "--root", str(tmp_path / "root"), "--json", str(out)]
    with anyio.fail_after(300):  # four Python processes on a small machine: a bound, not a timing check
        done = await anyio.run_process(cmd, env=cli_env, check=False)
    log = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, log
    outcome = json.loads(out.read_text())
    result = outcome["outcome"]["result"]
    assert result["steered_by"] == outcome["parent"]
    assert result["instruction"].startswith("Stop exploring")
    assert "message from thread" in log
