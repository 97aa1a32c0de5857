"""Shared test helpers: the real data folder, composing the real config, running run.py for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("S3_DATA_DIR", REPO.parent / "shared" / "data"))
TEST_DATA = REPO / "tests" / "data"

from s3.config import compose_config  # noqa: E402,F401  (also registers the resolvers)
from s3.llm import LLM, ChatRequest, Completion  # noqa: E402


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in a subprocess, as a user runs it."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (DATA_DIR / "sst2" / "test.jsonl").is_file(), f"real data not found at {DATA_DIR}; set S3_DATA_DIR"
    return DATA_DIR


class NoLLM(LLM):
    """Fails the test if the run gets as far as asking the LLM."""

    name = "no-llm"

    def _generate_units(self, units: Sequence[ChatRequest]) -> list[Completion]:
        raise AssertionError("the LLM was called")
