"""End to end through run.py: real MiniLM training on real SST-2, files, W&B offline runs, multirun, errors."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, TEST_DATA, read_jsonl, run_cli

SMALL = ["loop=gold", "loop.max_test=300", "small_model.max_epochs=2"]


@pytest.mark.slow
def test_gold_run_beats_chance_and_writes_artifacts(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            *SMALL,
            "loop.gold_train_size=800",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "sst2" and summary["loop"] == "gold"
    assert summary["test_acc"] > 0.70, summary
    assert summary["wall_seconds"] > 0 and summary["n_test"] == 300
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0]
    for key in ("n_train", "val_acc", "val_f1", "test_acc", "test_f1", "train_seconds"):
        assert key in rows[0]
    assert rows[0]["n_train"] == 800
    errors = read_jsonl(run_dir / "errors.jsonl")
    assert summary["n_gold_val"] == 200 and summary["n_select"] == 50  # a quarter held out for model selection
    assert len(errors) == rows[0]["n_errors"] == round((1 - rows[0]["val_acc"]) * 150)
    assert all(e["pred"] != e["label"] and e["prob_pred"] >= 0.5 and e["text"] for e in errors)
    # W&B offline run inside the run dir, with the config logged
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    blob = next(offline[0].glob("run-*.wandb")).read_bytes()
    assert b"gold_train_size" in blob  # the config was logged
    assert b"epochs/round_0/val_acc" in blob and b"epochs/round_0/train_loss" in blob  # the training curve
    assert b"sst2-gold-smollm2-s0-model" in blob  # the classifier as a model artifact
    curve = read_jsonl(run_dir / "epochs.jsonl")
    assert [c["epoch"] for c in curve] == [0, 1] and curve[-1]["steps"] == 2 * 50  # 800 rows, batches of 16
    assert abs(max(c["val_acc"] for c in curve) - rows[0]["select_acc"]) < 1e-9  # the epoch is chosen on these
    assert "max_tokens: 64" in (run_dir / "config.yaml").read_text()  # a count, not a secret: not redacted
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "model" / "head.safetensors").is_file()
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_multirun_gives_separate_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "task=sst2,rte",
            *SMALL,
            "loop.gold_train_size=200",
            "small_model.max_epochs=1",
            "loop.max_test=100",
            "loop.num_gold_val=60",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert [d.name for d in run_dirs] == ["0_sst2_gold_seed0", "1_rte_gold_seed0"]  # nothing else swept
    assert {json.loads((d / "summary.json").read_text())["task"] for d in run_dirs} == {"sst2", "rte"}
    names = set()
    for d in run_dirs:
        offline = list((d / "wandb").glob("offline-run-*"))
        assert len(offline) == 1
        names.add(offline[0].name)
        blob = next(offline[0].glob("run-*.wandb")).read_bytes()
        assert f"sweep-{sweep.name}".encode() in blob  # one W&B group for the whole sweep
        task = json.loads((d / "summary.json").read_text())["task"]
        assert f"{task}-gold-smollm2-s0".encode() in blob  # run name from the Hydra choices
    assert len(names) == 2
    # the offline report builds from these real run dirs alone
    report = subprocess.run(
        [sys.executable, "-m", "s3.report", str(sweep)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr[-2000:]
    table = (sweep / "report.md").read_text()
    assert "| sst2 | gold | 1 |" in table and "| rte | gold | 1 |" in table
    assert (sweep / "final_test_acc.png").stat().st_size > 0 and (sweep / "acc_per_round.png").stat().st_size > 0


@pytest.mark.slow
def test_custom_csv_task_runs(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "task=custom_example",
            f"paths.data_dir={TEST_DATA}",
            "loop=gold",
            "loop.num_gold_val=20",
            "small_model.max_epochs=1",
            "logger=none",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "custom_example" and summary["n_gold_val"] == 20 and summary["n_test"] == 32
    assert not (run_dir / "wandb").exists()


def test_missing_data_is_one_clear_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        ["loop=gold", f"paths.data_dir={tmp_path / 'nowhere'}", "logger=none", f"hydra.run.dir={run_dir}"],
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no validation data for task 'sst2': looked for") and "S3_DATA_DIR" in last
    assert not (run_dir / "summary.json").exists() and not (run_dir / "metrics.jsonl").exists()


def test_unknown_task_lists_choices(tmp_path):
    proc = run_cli(["task=nope", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode != 0
    assert "Could not find 'task/nope'" in proc.stderr and "sst2" in proc.stderr


def test_secrets_on_the_command_line_are_refused_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["loop=gold", "logger=none", f"hydra.run.dir={run_dir}", "+logger.api_key=sk-THIS-IS-SECRET"])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "environment variable" in proc.stderr and "Traceback" not in proc.stderr
    assert "THIS-IS-SECRET" not in proc.stderr + proc.stdout and "pw@" not in proc.stderr + proc.stdout
    assert not run_dir.exists()  # Hydra never started: no .hydra/ with the secret in it


@pytest.mark.slow
def test_a_bad_job_fails_alone_in_a_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "loop=gold",
            "loop.num_gold_val=5000,20",  # the first job asks for more gold rows than the split has
            "loop.gold_train_size=60",
            "loop.max_test=50",
            "small_model.max_epochs=1",
            "logger=none",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert "error: loop.num_gold_val=5000" in proc.stderr
    summaries = [json.loads(p.read_text()) for p in sweep.rglob("summary.json")]
    assert len(summaries) == 1 and summaries[0]["n_gold_val"] == 20  # the second job still ran
    assert proc.returncode != 0  # and the sweep as a whole reports the failure


@pytest.mark.parametrize(
    "overrides, names",
    [
        (["small_model=distilbert"], "small_model=distilbert: cannot load 'distilbert-base-uncased'"),
        (["llm=transformers", "llm.model=no-such-org/no-such-llm"], "llm: cannot load 'no-such-org/no-such-llm'"),
    ],
    ids=["small-model-not-here", "llm-not-here"],
)
def test_missing_models_are_one_line_before_any_llm_work(tmp_path, overrides, names):
    run_dir = tmp_path / "run"
    proc = run_cli(
        ["loop=s3", "logger=none", f"hydra.run.dir={run_dir}", *overrides],
        env={"HF_HUB_OFFLINE": "1", "S3_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {names}"), last
    assert not (run_dir / "rounds").exists() and not (tmp_path / "cache" / "llm").exists()  # no LLM answer made
