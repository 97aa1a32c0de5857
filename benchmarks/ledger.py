"""Finished benchmark runs kept in the repository, so a benchmark longer than one machine's life continues on the next.

A full quality or Table 2 benchmark is many hours of CPU, more than one session's machine lives; its ``--out`` dir
goes with the machine. The ledger (``benchmarks/runs.jsonl``, committed) keeps one line per finished run: the
run's overrides and seed, its job dir, the commit and machine it ran at, and its small result files (``summary.json``,
``metrics.jsonl``). A run is found by its overrides as Hydra reads them (in any order, ``false`` as ``False``).
Benchmarks share it: a run two of them ask for is made once. ``multirun`` restores recorded runs into ``--out``
instead of running them again, and records each run it finishes, so the reports read ``--out`` as before. Runs
recorded at other commits are listed in the report; to measure a change, start a new ledger (``--ledger PATH``) or
none (``--ledger none``).
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from benchmarks.results import LEDGER, commit, machine

RESULT_FILES = ("summary.json", "metrics.jsonl")


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = (
            [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        )
        self.used: Counter[str] = Counter()  # commit -> runs restored or recorded by this benchmark
        self.machines: Counter[str] = Counter()  # the machines those runs were made on

    def _runs(self, overrides: list[str], seed: str) -> list[dict]:
        want = parsed_overrides(overrides)
        return [e for e in self.entries if e["seed"] == str(seed) and parsed_overrides(e["key"].split()) == want]

    def restore(self, overrides: list[str], seed: str, sweep_dir: Path) -> None:
        """Write the recorded runs of this multirun seed into ``sweep_dir``, where a finished one is not already."""
        for entry in self._runs(overrides, seed):
            job_dir = sweep_dir / entry["job"]
            if not (job_dir / "summary.json").exists():
                job_dir.mkdir(parents=True, exist_ok=True)
                for name, text in entry["files"].items():
                    (job_dir / name).write_text(text)
                (job_dir / "ledger_commit").write_text(entry["commit"])
                if entry.get("machine"):  # unknown on lines recorded before machines were
                    (job_dir / "ledger_machine").write_text(entry["machine"])
                (job_dir / "ledger_key").write_text(entry["key"])

    def record(self, overrides: list[str], seed: str, sweep_dir: Path) -> None:
        """Add this multirun seed's finished runs that are not yet recorded (appended: nothing recorded is rewritten)."""
        known = {e["job"]: e for e in self._runs(overrides, seed)}
        new = []
        for summary in sorted(sweep_dir.rglob("summary.json")):
            job = str(summary.parent.relative_to(sweep_dir))
            if job in known:
                self._count(known[job])
                continue
            files = {n: (summary.parent / n).read_text() for n in RESULT_FILES if (summary.parent / n).exists()}
            ran_at, ran_on = summary.parent / "ledger_commit", summary.parent / "ledger_machine"
            restored = ran_at.exists()  # from another ledger: made at its commit, on its machine (where recorded)
            new.append(
                {
                    "key": key(overrides),
                    "seed": str(seed),
                    "job": job,
                    "commit": ran_at.read_text() if restored else commit(),
                    "machine": (ran_on.read_text() if ran_on.exists() else None) if restored else machine(),
                    "files": files,
                }
            )
            self._count(new[-1])
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.writelines(json.dumps(e) + "\n" for e in new)
            self.entries += new

    def _count(self, entry: dict) -> None:
        self.used[entry["commit"]] += 1
        self.machines[entry.get("machine") or "not recorded"] += 1

    def provenance(self) -> str:
        """One line for the report: which commits and machines the runs it reads were made at."""
        return (
            "runs made at commit "
            + ", ".join(f"`{c}` ({n})" for c, n in self.used.most_common())
            + "; on "
            + ", ".join(f"{m} ({n})" for m, n in self.machines.most_common())
        )


def key(overrides: list[str]) -> str:
    return " ".join(sorted(overrides))


def parsed_overrides(overrides: list[str]) -> dict[str, str]:
    """Overrides as a run gets them: values as Hydra reads them (``gap.vs_train=false`` as given equals
    ``gap.vs_train=False`` as Hydra records it), the last of a repeated key (as the sweeper keeps), Hydra's own
    settings (``hydra/launcher=…``, not in a run's record) left out."""
    return dict(_parsed(tuple(overrides)))


@cache  # the ledger compares each of its entries with every multirun asked for
def _parsed(overrides: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    return tuple((o.get_key_element(), repr(o.value())) for o in parsed if not o.is_hydra_override())


def open_ledger(value: str | None) -> Ledger | None:
    """``--ledger``: a path, ``none``, or (unset) ``benchmarks/runs.jsonl``."""
    if value == "none":
        return None
    return Ledger(Path(value) if value else LEDGER)


LEDGER_HELP = "finished runs kept across machines: a path, or none (default: benchmarks/runs.jsonl)"
