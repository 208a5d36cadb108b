"""Running a benchmark in --smoke mode, and reading the tables it prints (the bench smoke tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MINILM = REPO.parent / "shared" / "models" / "minilm-sst2"

needs_minilm = pytest.mark.skipif(
    not (MINILM / "config.json").is_file(), reason="team kit model minilm-sst2 not found beside the repo"
)


def run_bench(command: str, out: Path, *options: str) -> dict[str, Any]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-m", "bench", command, "--smoke", "--out", str(out), *options],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert (out / f"{command}.txt").is_file()
    return json.loads((out / f"{command}.json").read_text())


def table_cells(text: str) -> list[list[str]]:
    """The cells of each line of a written table (`|`-separated or space-aligned), header rows too."""
    return [[c for c in line.replace("|", " ").split() if c] for line in text.splitlines() if line.strip()]


def printed_row(cells: list[list[str]], first: str) -> list[str]:
    """The one table row whose first cell is `first`."""
    (row,) = [r for r in cells if r and r[0] == first]
    return row
