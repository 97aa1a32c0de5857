"""benchmarks/ledger.py: a finished benchmark run survives its machine, and a recorded run is not made again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import benchmarks.ledger
from benchmarks.ledger import Ledger
from benchmarks.quality import multirun

OVERRIDES = ["task=sst2", "loop=gold", "loop.gold_train_size=400"]


@pytest.fixture(autouse=True)
def at_commit(monkeypatch) -> None:
    monkeypatch.setattr(benchmarks.ledger, "commit", lambda: "abc1234")
    monkeypatch.setattr(benchmarks.ledger, "machine", lambda: "machine A")


def finished_run(sweep_dir: Path, job: str, acc: float) -> None:
    (sweep_dir / job).mkdir(parents=True)
    (sweep_dir / job / "summary.json").write_text(json.dumps({"loop": "gold", "test_acc": acc}))
    (sweep_dir / job / "metrics.jsonl").write_text(json.dumps({"round": 0, "test_acc": acc}) + "\n")


def test_a_recorded_run_is_restored_on_a_new_machine_instead_of_run_again(tmp_path, monkeypatch) -> None:
    path = tmp_path / "runs.jsonl"
    first = tmp_path / "machine1"
    finished_run(first / "seed0", "0_sst2_gold_seed0", 0.8)
    ledger = Ledger(path)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    multirun(first, OVERRIDES, ["0"], 1, ledger)  # finished here: reused, and recorded
    assert len(path.read_text().splitlines()) == 1

    second = tmp_path / "machine2"  # a fresh --out, the overrides in another order
    multirun(second, list(reversed(OVERRIDES)), ["0"], 1, Ledger(path))
    restored = second / "seed0" / "0_sst2_gold_seed0"
    assert json.loads((restored / "summary.json").read_text())["test_acc"] == 0.8
    assert (restored / "metrics.jsonl").read_text() == (
        first / "seed0" / "0_sst2_gold_seed0" / "metrics.jsonl"
    ).read_text()
    assert len(path.read_text().splitlines()) == 1  # not recorded twice


def test_an_unrecorded_seed_runs_and_a_finished_run_is_never_overwritten(tmp_path, monkeypatch) -> None:
    path = tmp_path / "runs.jsonl"
    out = tmp_path / "out"
    finished_run(tmp_path / "old" / "seed0", "0_sst2_gold_seed0", 0.8)
    Ledger(path).record(OVERRIDES, "0", tmp_path / "old" / "seed0")
    finished_run(out / "seed0", "0_sst2_gold_seed0", 0.7)  # this machine's own finished run differs: it stays
    launched = []

    def fake_run(cmd, **_):
        launched.append(cmd)
        finished_run(out / "seed1", "0_sst2_gold_seed1", 0.75)

    monkeypatch.setattr(subprocess, "run", fake_run)
    ledger = Ledger(path)
    multirun(out, OVERRIDES, ["0", "1"], 1, ledger)
    assert len(launched) == 1 and "seed=1" in launched[0]
    assert json.loads((out / "seed0" / "0_sst2_gold_seed0" / "summary.json").read_text())["test_acc"] == 0.7
    assert [e["seed"] for e in map(json.loads, path.read_text().splitlines())] == ["0", "1"]
    assert ledger.provenance() == "runs made at commit `abc1234` (2); on machine A (2)"


def test_a_report_names_the_machine_each_run_was_made_on(tmp_path, monkeypatch) -> None:
    """A ledger's runs come from many machines (a CPU with or without bf16 kernels differs in speed and numerics)."""
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran"))
    path = tmp_path / "runs.jsonl"
    finished_run(tmp_path / "a" / "seed0", "0_sst2_gold_seed0", 0.8)
    Ledger(path).record(OVERRIDES, "0", tmp_path / "a" / "seed0")
    old_line = json.loads(path.read_text())
    del old_line["machine"]  # as lines recorded before machines were
    with path.open("a") as f:
        f.write(json.dumps({**old_line, "seed": "1", "job": "0_sst2_gold_seed1"}) + "\n")
    monkeypatch.setattr(benchmarks.ledger, "machine", lambda: "machine B")
    ledger = Ledger(path)
    multirun(tmp_path / "b", OVERRIDES, ["0", "1"], 1, ledger)  # restored on machine B
    assert ledger.provenance() == "runs made at commit `abc1234` (2); on machine A (1), not recorded (1)"

    other = Ledger(tmp_path / "other.jsonl")  # a restored run recorded into another ledger keeps where it was made
    other.record(OVERRIDES, "0", tmp_path / "b" / "seed0")
    other.record(OVERRIDES, "1", tmp_path / "b" / "seed1")
    assert [e.get("machine") for e in other.entries] == ["machine A", None]
    multirun(tmp_path / "c", OVERRIDES, ["1"], 1, Ledger(tmp_path / "other.jsonl"))  # a line whose machine is None
    assert Ledger(tmp_path / "other.jsonl").entries[1]["machine"] is None


def test_the_machine_names_its_cores_and_whether_its_cpu_has_bf16_kernels() -> None:
    import os

    import benchmarks.results as results
    from s3.hardware import bf16_is_native

    described = results.machine()
    assert described.startswith(f"{len(os.sched_getaffinity(0))} CPU cores (")
    assert ("no bf16 kernels" in described) != bf16_is_native("cpu") and "bf16 kernels" in described


def test_a_run_is_found_in_the_ledger_by_the_overrides_as_hydra_reads_them(tmp_path, monkeypatch) -> None:
    """``False`` and ``false``, or a repeated key, are one run to Hydra, so one run to the ledger."""
    path = tmp_path / "runs.jsonl"
    finished_run(tmp_path / "old" / "seed0", "0_sst2_gold_seed0", 0.8)
    Ledger(path).record([*OVERRIDES, "gap.vs_train=false"], "0", tmp_path / "old" / "seed0")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    asked = ["loop.gold_train_size=200", *OVERRIDES, "gap.vs_train=False"]  # the last gold_train_size counts
    multirun(tmp_path / "out", asked, ["0"], 1, Ledger(path))
    assert (
        json.loads((tmp_path / "out" / "seed0" / "0_sst2_gold_seed0" / "summary.json").read_text())["test_acc"] == 0.8
    )
    assert len(path.read_text().splitlines()) == 1


def test_without_running_only_what_is_recorded_is_restored(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran"))
    multirun(tmp_path / "out", OVERRIDES, ["0"], 1, Ledger(tmp_path / "runs.jsonl"), run=False)
    assert not list((tmp_path / "out").rglob("summary.json"))


def made_by_hydra(sweep_dir: Path, job: str, overrides: list[str]) -> None:
    """A finished run as run.py leaves it: Hydra's record of its overrides (booleans as Hydra spells them)."""
    finished_run(sweep_dir, job, 0.8)
    (sweep_dir / job / ".hydra").mkdir()
    (sweep_dir / job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_a_run_made_with_other_overrides_is_refused_not_reused(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran"))
    path = tmp_path / "runs.jsonl"
    out = tmp_path / "out"
    made_by_hydra(out / "seed0", "0_sst2_gold_seed0", ["task=sst2", "loop=gold", "loop.gold_train_size=200", "seed=0"])
    with pytest.raises(SystemExit, match="loop.gold_train_size=200 loop.gold_train_size=400"):
        multirun(out, OVERRIDES, ["0"], 1, Ledger(path))
    assert not path.exists()  # nothing recorded under the other key

    same = [*OVERRIDES, "gap.vs_train=False", "seed=1"]  # as Hydra records `gap.vs_train=false`
    made_by_hydra(out / "seed1", "0_sst2_gold_seed1", same)
    multirun(out, [*OVERRIDES, "gap.vs_train=false"], ["1"], 1, Ledger(path))
    assert "reusing" in capsys.readouterr().out and len(path.read_text().splitlines()) == 1


def test_a_restored_run_keeps_its_key_and_is_refused_under_another(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran"))
    path = tmp_path / "runs.jsonl"
    finished_run(tmp_path / "old" / "seed0", "0_sst2_gold_seed0", 0.8)
    Ledger(path).record(OVERRIDES, "0", tmp_path / "old" / "seed0")
    multirun(tmp_path / "out", OVERRIDES, ["0"], 1, Ledger(path))  # restored into a fresh --out
    other = [*OVERRIDES[:-1], "loop.gold_train_size=200"]
    with pytest.raises(SystemExit, match="holds a run made with other overrides"):
        multirun(tmp_path / "out", other, ["0"], 1, Ledger(path))


def test_a_repeated_key_and_hydras_own_settings_are_read_as_the_run_got_them(tmp_path, monkeypatch, capsys) -> None:
    """The sweeper keeps a repeated key's last value and records Hydra's own settings elsewhere: still the same run."""
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran"))
    out = tmp_path / "out"
    made_by_hydra(out / "seed0", "0_sst2_gold_seed0", ["task=sst2", "loop=gold", "loop.gold_train_size=200", "seed=0"])
    asked = [*OVERRIDES, "loop.gold_train_size=200", "hydra/launcher=basic"]  # --extra repeating the budget's key
    multirun(out, asked, ["0"], 1, Ledger(tmp_path / "runs.jsonl"))
    assert "reusing" in capsys.readouterr().out


def test_a_run_recorded_after_another_is_not_marked_dirty_by_the_ledger(tmp_path, monkeypatch) -> None:
    """The ledger and RESULTS.md change as a benchmark goes on; only a change to anything else is ``-dirty``."""
    import benchmarks.results as results

    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    for name in ("benchmarks/RESULTS.md", "benchmarks/runs.jsonl", "code.py"):
        (repo / name).write_text("")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    monkeypatch.setattr(results, "RESULTS", repo / "benchmarks" / "RESULTS.md")
    monkeypatch.setattr(results, "LEDGER", repo / "benchmarks" / "runs.jsonl")
    (repo / "benchmarks" / "runs.jsonl").write_text('{"seed": "0"}\n')
    (repo / "benchmarks" / "RESULTS.md").write_text("# results\n")
    assert not results.commit().endswith("-dirty") and len(results.commit()) >= 7
    (repo / "code.py").write_text("x = 1\n")
    assert results.commit().endswith("-dirty")
