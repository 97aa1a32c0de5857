"""``benchmarks/RESULTS.md``: each benchmark owns one section (command, commit, date, its tables) and rewrites it."""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
LEDGER = RESULTS.parent / "runs.jsonl"  # finished runs: benchmarks/ledger.py
HEADER = (
    "# Benchmark results\n\nWritten by the scripts in `benchmarks/` (each rewrites its own section); "
    "figures are from the machine named in each section.\n"
)


def commit() -> str:
    """The checked-out commit, with ``-dirty`` when tracked files differ from it, other than the two the benchmarks
    write themselves (the ledger and RESULTS.md: a run recorded after another is not "dirty" for that)."""
    repo = RESULTS.parents[1]
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    written = [f":(exclude){p.relative_to(repo)}" for p in (RESULTS, LEDGER)]
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *written],
        cwd=repo,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{sha}{'-dirty' if dirty else ''}" or "unknown"


def command_line() -> str:
    """This benchmark's command as typed, quoted so that it can be pasted back (an argument with spaces)."""
    return "python " + shlex.join(sys.argv)


@functools.cache
def machine() -> str:
    """What a figure was measured on: the cores, the CPU and whether it has bf16 kernels (which sets the ``auto``
    precision, and with it speed and numerics), and the GPUs."""
    import torch

    from s3.hardware import bf16_is_native

    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else []
    cpu = names[0].strip() if names else platform.processor() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = torch.cuda.device_count()
    gpu = f"{gpus} × {torch.cuda.get_device_name(0)}" if gpus else "no GPU"
    return f"{cores} CPU cores ({cpu}, {'' if bf16_is_native('cpu') else 'no '}bf16 kernels), {gpu}"


def write_section(name: str, title: str, command: str, body: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = (
        f"{start}\n## {title}\n\n`{command}`\n\ncommit `{commit()}`, {dt.date.today().isoformat()}, "
        f"{machine()}\n\n{body.strip()}\n{end}"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text.rstrip()}\n\n{section}\n"
    RESULTS.write_text(text)


def kept_row(task: str, setting: str, batch: Any, reasons: int = 3) -> tuple[float, str]:
    """A synthesis batch's kept share and its table row: task, setting, answers, kept, share, largest drops."""
    share = len(batch.rows) / max(batch.generated, 1)
    drops = ", ".join(f"{k} {v}" for k, v in batch.drops.most_common(reasons))
    return share, f"| {task} | {setting} | {batch.generated} | {len(batch.rows)} | {100 * share:.0f}% | {drops} |"
