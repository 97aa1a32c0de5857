"""The S3 loop end to end with the real embedded LLM (SmolLM2) and real MiniLM training, on a tiny budget."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import DATA_DIR, REPO, read_jsonl, run_cli
from s3.embed import SentenceEmbedder
from s3.parsing import normalize

TINY = [
    "loop=s3",
    "loop.seed_size=24",
    "loop.per_error=1",
    "loop.max_new_per_round=12",
    "loop.num_gold_val=40",
    "loop.max_test=100",
    "loop.sampling.max_tokens=64",
    "loop.rationale_samples=1",
    "small_model.max_epochs=2",
    "gap.vs_train=false",
    "logger=none",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One LLM cache for the module: the resumed run must find what the uninterrupted run generated."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("full")
    proc = run_cli([*TINY, "loop.rounds=2", f"hydra.run.dir={run_dir}"], env={"S3_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


@pytest.mark.slow
def test_rounds_metrics_and_provenance(full_run):
    rows = read_jsonl(full_run / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows:
        for key in (
            "n_new",
            "n_train",
            "val_acc",
            "val_f1",
            "test_acc",
            "test_f1",
            "n_errors",
            "train_seconds",
            "drop/refusal",
            "drop/leak",
            "drop/off_source",
            "drop/gold_disagree",
            "gold_check_cv_acc",
            "llm/backend_calls",
            "gap/mauve",
            "div/distinct2",
        ):
            assert key in r, key
    assert rows[0]["n_train"] > 0 and rows[1]["n_train"] == rows[0]["n_train"] + rows[1]["n_new"]
    round0_errors = {e["id"] for e in read_jsonl(full_run / "rounds" / "round_0" / "errors.jsonl")}
    train1 = read_jsonl(full_run / "rounds" / "round_1" / "train.jsonl")
    added = [r for r in train1 if r["round"] == 1]
    assert added and len(added) == rows[1]["n_new"]
    for r in added:
        assert r["source"].startswith("extrapolated-from-") and r["source"].split("from-", 1)[1] in round0_errors
        assert len(r["prompt_hash"]) == 16
    assert all(r["source"] == "rationale" for r in train1 if r["round"] == 0)
    summary = json.loads((full_run / "summary.json").read_text())
    assert (
        summary["loop"] == "s3"
        and summary["llm"]["backend_calls"] > 0
        and summary["llm"]["precision"] in {"float32", "bfloat16"}
        and summary["n_train"] == rows[-1]["n_train"]
    )
    assert json.loads((full_run / "rounds" / "round_0" / "rationales.json").read_text())["labels"]


@pytest.mark.slow
def test_extrapolated_rows_are_like_their_source_error(full_run, cache_dir):
    config = (full_run / "config.yaml").read_text()
    threshold = float(next(ln.split(":")[1] for ln in config.splitlines() if "min_source_similarity" in ln))
    assert threshold > 0  # the default config checks it
    errors = {
        e["id"]: e["text"] for k in range(2) for e in read_jsonl(full_run / "rounds" / f"round_{k}" / "errors.jsonl")
    }
    added = [r for r in read_jsonl(full_run / "rounds" / "round_2" / "train.jsonl") if r["round"] > 0]
    embedder = SentenceEmbedder(cache_dir=str(cache_dir / "embeddings"))
    new = embedder.embed([r["text"] for r in added])
    source = embedder.embed([errors[r["source"].split("from-", 1)[1]] for r in added])
    assert added and ((new * source).sum(1) >= threshold - 1e-6).all()


@pytest.mark.slow
def test_no_test_text_in_any_prompt(full_run):
    test_rows = [json.loads(line) for line in (DATA_DIR / "sst2" / "test.jsonl").read_text().splitlines()]
    test_texts = {normalize(r["text"]) for r in test_rows if len(r["text"].split()) >= 4}
    prompts = [
        m["content"]
        for k in range(3)
        for p in read_jsonl(full_run / "rounds" / f"round_{k}" / "prompts.jsonl")
        for m in p["messages"]
    ]
    assert prompts
    joined = "\n".join(normalize(p) for p in prompts)
    assert not [t for t in test_texts if t in joined]
    # ...while the gold validation errors did reach the extrapolation prompts (the check can fail)
    errors = read_jsonl(full_run / "rounds" / "round_0" / "errors.jsonl")
    assert any(normalize(e["text"]) in joined for e in errors)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, full_run, cache_dir):
    run_dir = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "offline", "S3_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *TINY, "loop.rounds=2", f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 900
    while not (run_dir / "rounds" / "round_1" / "metrics.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before round 1 was written"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists()
    resumed = run_cli([*TINY, "loop.rounds=2", f"hydra.run.dir={run_dir}"], env={"S3_CACHE_DIR": str(cache_dir)})
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming after round 1" in resumed.stderr + resumed.stdout + (run_dir / "run.log").read_text()
    assert [r["round"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1, 2]
    final = (run_dir / "rounds" / "round_2" / "train.jsonl").read_text()
    assert final == (full_run / "rounds" / "round_2" / "train.jsonl").read_text()


@pytest.mark.slow
def test_pair_task_runs_one_round(tmp_path, cache_dir):
    run_dir = tmp_path / "rte"
    overrides = [o for o in TINY if o != "logger=none"]  # this one also logs to W&B (offline)
    proc = run_cli(
        [
            "task=rte",
            *overrides,
            "loop.rounds=1",
            "loop.seed_size=12",  # pairs are the slowest rows to write and to label-check: a smaller budget
            "loop.max_new_per_round=6",
            "loop.sampling.max_tokens=96",
            f"hydra.run.dir={run_dir}",
        ],
        env={"S3_CACHE_DIR": str(cache_dir)},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[0]["round"] == 0 and rows[0]["n_train"] > 0
    assert all(r["round_seconds"] >= r["train_seconds"] for r in rows)
    train = read_jsonl(run_dir / "rounds" / f"round_{rows[-1]['round']}" / "train.jsonl")
    assert all(r["text1"] and r["text2"] for r in train)
    # per-round metrics and each round's synthetic set (as an Artifact) went to the W&B run
    blob = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    assert b"gap/mauve" in blob and b"rte-s3-smollm2-s0-synthetic-0" in blob


@pytest.mark.slow
def test_run_leaves_model_dataset_and_training_curves(full_run):
    import datasets

    summary = json.loads((full_run / "summary.json").read_text())
    meta = json.loads((full_run / "model" / "s3_classifier.json").read_text())
    assert meta["pooling"] == "mean" and meta["labels"] == ["negative", "positive"] and meta["round"] == 2
    assert json.loads((full_run / "model" / "config.json").read_text())["id2label"] == {
        "0": "negative",
        "1": "positive",
    }
    assert len(read_jsonl(full_run / "test_predictions.jsonl")) == summary["n_test"]
    curves = read_jsonl(full_run / "epochs.jsonl")
    assert [(c["round"], c["epoch"]) for c in curves] == [(k, e) for k in range(3) for e in range(2)]
    assert all(c["train_loss"] > 0 and 0 <= c["val_acc"] <= 1 for c in curves)
    ds = datasets.load_dataset(str(full_run / "dataset"), split="train")
    final_rows = read_jsonl(full_run / "rounds" / "round_2" / "train.jsonl")
    assert len(ds) == summary["n_train"] == len(final_rows)
    assert ds.features["label"].names == ["negative", "positive"]
    assert ds[0]["text"] == final_rows[0]["text"] and set(ds["round"]) == {0, 1, 2}
    card = (full_run / "dataset" / "README.md").read_text()
    assert card.startswith("---\ntask_categories:") and "| method | s3 |" in card and "gap/mauve" in card
