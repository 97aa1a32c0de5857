"""Report tests on fake run dirs in the harness's on-disk format.

The fake runs are built by ``write_run`` with exactly the files run.py writes (config.yaml, metrics.jsonl,
summary.json); a test over real runs only needs a different ``runs_root`` fixture feeding the same checks.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s3.report import build_report, group_runs, load_runs, summary_table

REPO = Path(__file__).resolve().parents[1]
TASKS = ("sst2", "rte")
METHODS = ("s3", "gold")
SEEDS = (0, 1)
ROUNDS = 3


def fake_accuracy(task: str, method: str, seed: int, rnd: int) -> float:
    base = {"sst2": 0.80, "rte": 0.60}[task] + {"s3": 0.0, "gold": 0.05}[method]
    return base + 0.02 * rnd + 0.01 * seed


def write_run(root: Path, task: str, method: str, seed: int) -> Path:
    """One run dir as run.py writes it; ``gold`` has a single round-0 row, ``s3`` several plus a synthesis-only row."""
    run = root / f"task={task},loop={method},seed={seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"task:\n  name: {task}\nloop:\n  name: {method}\nseed: {seed}\n")
    rounds = range(1) if method == "gold" else range(ROUNDS + 1)
    rows = []
    for r in rounds:
        acc = fake_accuracy(task, method, seed, r)
        row = {
            "round": r,
            "n_train": 100 * (r + 1),
            "val_acc": acc,
            "val_f1": acc - 0.01,
            "test_acc": acc - 0.02,
            "test_f1": acc - 0.03,
            "train_seconds": 1.5,
        }
        if method != "gold":
            row |= {"gap/mauve": 0.5 + 0.1 * r, "gap/c2st_auc": 0.9 - 0.1 * r, "div/distinct2": 0.7, "llm/tokens": 1000}
        rows.append(row)
    if method != "gold":
        rows.append({"round": ROUNDS + 1, "n_train": 100 * (ROUNDS + 2), "gap/mauve": 0.95})  # synthesis-only row
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last = rows[len(rounds) - 1]
    summary = {
        "val_acc": last["val_acc"],
        "test_acc": last["test_acc"],
        "test_f1": last["test_f1"],
        "wall_seconds": 12.0,
        "task": task,
        "loop": method,
        "seed": seed,
        "llm": "fake",
        "n_train": last["n_train"],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    """A Hydra-multirun-like tree: 2 tasks × 2 methods × 2 seeds, plus noise that is not a run dir."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    for task in TASKS:
        for method in METHODS:
            for seed in SEEDS:
                write_run(root, task, method, seed)
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "summary.json").write_text("{}")  # no metrics.jsonl -> ignored
    return root


def expected_final(task: str, method: str, key_offset: float) -> tuple[float, float]:
    last = 0 if method == "gold" else ROUNDS
    vals = [fake_accuracy(task, method, s, last) - key_offset for s in SEEDS]
    return float(np.mean(vals)), float(np.std(vals, ddof=1))


def test_loads_and_groups(runs_root: Path) -> None:
    runs = load_runs([runs_root])
    assert len(runs) == len(TASKS) * len(METHODS) * len(SEEDS)
    assert list(group_runs(runs)) == [(t, m) for t in ("sst2", "rte") for m in ("s3", "gold")]


def test_table_rows_and_means(runs_root: Path) -> None:
    table = summary_table(load_runs([runs_root]))
    assert [(r["task"], r["method"]) for r in table] == [(t, m) for t in TASKS for m in METHODS]
    for row in table:
        assert row["n_runs"] == len(SEEDS)
        for key, off in (("val_acc", 0.0), ("test_acc", 0.02), ("test_f1", 0.03)):
            m, s = expected_final(row["task"], row["method"], off)
            assert math.isclose(row[key][0], m, abs_tol=1e-9) and math.isclose(row[key][1], s, abs_tol=1e-9)


def check_report(out: Path, md: str, groups: list[tuple[str, str]], curve_pngs: set[str]) -> None:
    """Checks that hold for any set of runs (fake or real): files exist, one table row per (task, method)."""
    assert (out / "report.md").read_text() == md
    pngs = {p.name for p in out.glob("*.png")}
    assert {"acc_per_round.png", "final_test_acc.png"} | curve_pngs <= pngs
    assert all((out / p).stat().st_size > 1000 for p in pngs)
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    assert [tuple(c.strip() for c in line.split("|")[1:3]) for line in table_rows] == groups


def test_build_report_writes_pngs_and_markdown(runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    path, md = build_report([runs_root], out)
    assert path == out / "report.md"
    check_report(
        out, md, [(t, m) for t in TASKS for m in METHODS], {"gap_mauve.png", "gap_c2st_auc.png", "div_distinct2.png"}
    )
    m, s = expected_final("sst2", "s3", 0.02)
    assert "| sst2 | s3 | 2 | " in md and f"{m * 100:.1f} ± {s * 100:.1f}" in md


def test_default_out_is_next_to_input(runs_root: Path) -> None:
    path, _ = build_report([runs_root])
    assert path.parent == runs_root.resolve()


def test_cli_prints_table(runs_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "s3.report", str(runs_root), "--out", str(tmp_path / "cli")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| task | method | n runs |" in proc.stdout and "| rte | gold | 2 |" in proc.stdout
    assert (tmp_path / "cli" / "report.md").is_file()


def test_cli_no_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "s3.report", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1 and "no run dirs" in proc.stderr


def test_runs_of_one_sweep_are_told_apart_by_what_was_swept():
    from s3.config import swept_keys, variant_of

    swept = swept_keys(["task=sst2", "loop=s3,zerogen", "loop.per_error=1,2", "seed=0,1", "loop.max_test=300"])
    assert swept == {"loop", "loop.per_error", "seed"}
    job = ["task=sst2", "loop=s3", "loop.per_error=2", "seed=1", "loop.max_test=300"]
    assert variant_of(job, swept) == "loop.per_error=2"  # task, loop and seed are in every name already
    assert variant_of(["loop=s3", "+experiment=no_balance", "seed=0"], None) == "experiment=no_balance"  # agent
    assert variant_of(job, {"seed"}) == ""


def test_report_keeps_variants_of_a_method_apart(tmp_path):
    for variant, seed, acc in (
        ("loop.per_error=1", 0, 0.7),
        ("loop.per_error=2", 0, 0.8),
        ("loop.per_error=2", 1, 0.9),
    ):
        d = tmp_path / f"{variant}-{seed}"
        d.mkdir()
        (d / "summary.json").write_text(
            json.dumps({"task": "sst2", "loop": "s3", "seed": seed, "variant": variant, "test_acc": acc})
        )
        (d / "metrics.jsonl").write_text(json.dumps({"round": 0, "test_acc": acc}) + "\n")
    table = {row["method"]: row for row in summary_table(load_runs([tmp_path]))}
    assert set(table) == {"s3 [loop.per_error=1]", "s3 [loop.per_error=2]"}
    assert table["s3 [loop.per_error=2]"]["n_runs"] == 2


def test_report_splits_a_method_by_every_setting_its_runs_differ_in(tmp_path):
    """Two commands with different settings (no sweep, so no `variant`) are not averaged as if seeds."""
    for per_error, rounds, seed, acc in ((1, 2, 0, 0.7), (2, 2, 0, 0.8), (2, 2, 1, 0.9), (2, 3, 0, 0.6)):
        d = tmp_path / f"run-{per_error}-{rounds}-{seed}"
        d.mkdir()
        (d / "config.yaml").write_text(
            f"task:\n  name: sst2\nloop:\n  name: s3\n  per_error: {per_error}\n  rounds: {rounds}\nseed: {seed}\n"
            f"paths:\n  data_dir: /data/{seed}\n"  # where the data was is not a setting
        )
        (d / "summary.json").write_text(json.dumps({"task": "sst2", "loop": "s3", "seed": seed, "test_acc": acc}))
        (d / "metrics.jsonl").write_text(json.dumps({"round": 0, "test_acc": acc}) + "\n")
    table = {row["method"]: row for row in summary_table(load_runs([tmp_path]))}
    assert set(table) == {
        "s3 [loop.per_error=1, loop.rounds=2]",
        "s3 [loop.per_error=2, loop.rounds=2]",
        "s3 [loop.per_error=2, loop.rounds=3]",
    }
    assert table["s3 [loop.per_error=2, loop.rounds=2]"]["n_runs"] == 2
    _, md = build_report([tmp_path])
    assert "shown apart: s3 [loop.per_error=1, loop.rounds=2]" in md


def test_a_sweep_jobs_dir_names_what_the_sweep_varies(tmp_path):
    """conf/config.yaml's sweep subdir: `<num>_<task>_<loop>_seed<k>` plus the job's swept overrides."""
    from omegaconf import OmegaConf

    from s3.config import sweep_variant

    assert sweep_variant(str(tmp_path), ["loop.per_error=2"]) == ""  # no multirun.yaml: not a recorded sweep
    sweep = ["task=sst2", "loop=s3,zerogen", "loop.per_error=1,2", "seed=0,1", "paths.data_dir=/x/y"]
    OmegaConf.save({"hydra": {"overrides": {"task": sweep}}}, tmp_path / "multirun.yaml")
    job = ["task=sst2", "loop=s3", "loop.per_error=2", "seed=1", "paths.data_dir=/x/y"]
    assert sweep_variant(str(tmp_path), job) == "_loop.per_error=2"
    OmegaConf.save({"hydra": {"overrides": {"task": ["paths.data_dir=/a,/b/c"]}}}, tmp_path / "multirun.yaml")
    assert sweep_variant(str(tmp_path), ["paths.data_dir=/b/c"]) == "_paths.data_dir=-b-c"  # no folders in a name
