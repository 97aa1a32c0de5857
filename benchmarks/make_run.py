"""A newcomer's first run: a fresh clone, an empty cache, ``make run``; how long it takes and what the LLM's answers
were worth.

Clones this repository (its committed HEAD) into a new folder beside it and runs the set-up ``make run`` needs
(``make setup-core``; ``make setup``, everything, for an LLM that needs an extra such as vLLM) and ``make run`` there
as a new user would: an empty ``S3_CACHE_DIR`` (no cached LLM answer, no converted model), no other ``S3_*``
or ``WANDB_*`` settings, and the data beside this checkout (``../shared/data``) as ``S3_DATA_DIR``.
Every line of its output is timestamped as it arrives. Reported, per run:
- **setup / run / total**: seconds of the set-up, of ``run.py`` (to its last line) and of both;
- **first output / first progress**: seconds from ``make run``'s start (after setup) to the harness's first log
  line (``[s3.…]``, e.g. the one-off model conversion) and to its first progress line (an LLM phase's);
- **answers kept**: rows added over LLM answers generated, all rounds (``metrics.jsonl``: n_new / n_generated);
- **test acc** of the final round.
``--llm smollm2_vllm`` (any ``llm=`` choice) passes ``RUN_ARGS`` to compare backends on the same run.
``--write`` keeps the rows of LLMs not run this time, each with the commit and date it was measured at.
Last line: make_run_seconds=<total of the first run>.

    .venv/bin/python benchmarks/make_run.py [--llm smollm2,smollm2_vllm] [--keep] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results import RESULTS, commit, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN_DIR = re.compile(r"done: .*\((?P<dir>[^()]+)\)\s*$")
HEADER = (
    "| llm | commit | date | setup s | run s | total s | first output s | first progress s | LLM answers | rows kept "
    "| kept share | test acc |"
)


def earlier_rows(skip: set[str]) -> list[str]:
    """The make_run table rows already in RESULTS.md for LLMs not in ``skip`` (rows written before the table had
    commit and date columns get the section's)."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    section = re.search(r"<!-- make_run:start -->(.*?)<!-- make_run:end -->", text, re.S)
    if not section:
        return []
    stamp = re.search(r"commit `([^`]+)`, (\S+),", section.group(1))
    rows = []
    for line in section.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or cells[0] in ("llm", *skip) or set(cells[0]) <= set("-"):
            continue
        if len(cells) == HEADER.count("|") - 3 and stamp:  # no commit and date cells yet
            cells[1:1] = [f"`{stamp.group(1)}`", stamp.group(2)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def timed_lines(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> list[tuple[float, str]]:
    """Run ``cmd``, echo and log its output, and return (seconds since start, line) for every line."""
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with (
        subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,
        log.open("a") as out,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            t = time.perf_counter() - start
            lines.append((t, line.rstrip("\n")))
            out.write(f"[{t:8.1f}s] {line}")
            print(f"[{t:8.1f}s] {line}", end="", flush=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode} (log: {log})")
    return lines


CORE_LLMS = {"smollm2"}  # the LLMs `make setup-core` installs (`make run` sets up only that)


def one_run(llm: str, workdir: Path) -> dict[str, object]:
    clone = workdir / f"s3-make-run-{llm}"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    cache = workdir / f"cache-{llm}"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "WANDB_", "VIRTUAL_ENV", "OMP_", "MKL_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)  # a new user's
    env.update(S3_CACHE_DIR=str(cache), S3_DATA_DIR=str(REPO.parent / "shared" / "data"))
    log = workdir / f"make_run-{llm}.log"
    setup = timed_lines(["make", "setup-core" if llm in CORE_LLMS else "setup"], clone, env, log)
    run = timed_lines(["make", "run", f"RUN_ARGS=llm={llm}"], clone, env, log)
    first_output = next(t for t, line in run if "][s3." in line)
    first_progress = next(t for t, line in run if "][s3.progress]" in line)
    run_dir = next(Path(m["dir"]) for _, line in run if (m := RUN_DIR.search(line)))
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    generated, kept = sum(r["n_generated"] for r in rounds), sum(r["n_new"] for r in rounds)
    return {
        "llm": llm,
        "setup_s": setup[-1][0] if setup else 0.0,
        "run_s": run[-1][0],
        "total_s": (setup[-1][0] if setup else 0.0) + run[-1][0],
        "first_output_s": first_output,
        "first_progress_s": first_progress,
        "answers": generated,
        "kept": kept,
        "test_acc": rounds[-1]["test_acc"],
        "log": str(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="smollm2", help="comma-separated llm= choices, one fresh run each")
    parser.add_argument("--keep", action="store_true", help="keep the clones, caches and logs")
    parser.add_argument("--write", action="store_true", help="rewrite the make_run section of RESULTS.md")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="s3-make-run-", dir=REPO.parent))
    try:
        results = [one_run(llm, workdir) for llm in args.llm.split(",")]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    today = time.strftime("%Y-%m-%d")
    for r in results:
        lines.append(
            f"| {r['llm']} | `{commit()}` | {today} | {r['setup_s']:.0f} | {r['run_s']:.0f} | {r['total_s']:.0f} | {r['first_output_s']:.0f} "
            f"| {r['first_progress_s']:.0f} "
            f"| {r['answers']} | {r['kept']} | {r['kept'] / max(1, r['answers']):.1%} | {100 * r['test_acc']:.1f} |"
        )
    print("\n".join(lines))
    table = "\n".join([*lines, *earlier_rows({r["llm"] for r in results})])
    if args.write:
        write_section(
            "make_run",
            "make run on a fresh clone (empty cache)",
            "python " + " ".join(["benchmarks/make_run.py", *sys.argv[1:]]),
            "Targets: total ≤ 600 s, kept share ≥ 50%, first progress ≤ 30 s (issue 16).\n\n" + table,
        )
    print(f"make_run_seconds={results[0]['total_s']:.1f}")


if __name__ == "__main__":
    main()
