"""examples/long_run.py runs end to end over stdio: two handoffs, completion, chain, resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "long_run.py"


@pytest.mark.slow
def test_the_long_run_example_crosses_the_threshold_twice_and_resumes() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert text.count("-> handoff: thread") == 2
    assert text.count("[thread_continued]") == 2
    assert "chain of" in text and "3 threads" in text and "4 threads" in text
    assert "in the Anthropic shape" in text and "resumed thread" in text
    assert "running    resume" in text
