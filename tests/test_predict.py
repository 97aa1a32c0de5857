"""``python -m s3.predict``: a run's saved classifier labels new rows exactly as the run itself did."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, read_jsonl, run_cli
from s3.config import compose_config
from s3.data import load_real_data

GOLD = [
    "loop=gold",
    "loop.gold_train_size=96",
    "loop.num_gold_val=40",
    "loop.max_test=60",
    "small_model.max_epochs=1",
    "logger=none",
]


def predict(*args):
    return subprocess.run(
        [sys.executable, "-m", "s3.predict", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def gold_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("gold") / "run"
    proc = run_cli([*GOLD, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_reproduces_the_runs_test_predictions(gold_run, data_dir, tmp_path):
    cfg = compose_config([*GOLD, f"paths.data_dir={data_dir}"])
    from hydra.utils import instantiate

    task = instantiate(cfg.task)
    real = load_real_data(task, data_dir, cfg.loop.num_gold_val, cfg.loop.max_test, cfg.seed)
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "extra": 1}) + "\n" for r in real.test))
    out = tmp_path / "pred.jsonl"
    proc = predict(gold_run, test_file, "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mine, runs = read_jsonl(out), read_jsonl(gold_run / "test_predictions.jsonl")
    assert len(mine) == len(real.test) and mine == runs  # labels and every probability, bit for bit
    assert set(mine[0]) == {"id", "text", "label", "probs"} and set(mine[0]["probs"]) == {"negative", "positive"}
    acc = sum(m["label"] == task.labels[r["label"]] for m, r in zip(mine, real.test)) / len(mine)
    summary = json.loads((gold_run / "summary.json").read_text())
    assert abs(acc - summary["test_acc"]) < 1e-6  # the summary holds a float32 from torchmetrics
    # the model folder itself works too, and an existing output is not overwritten without --overwrite
    again = predict(gold_run / "model", test_file, "-o", out)
    assert again.returncode == 2 and "exists" in again.stderr and read_jsonl(out) == runs


def test_csv_input_to_stdout(gold_run, tmp_path):
    f = tmp_path / "rows.csv"
    f.write_text('text,label\n"a wonderful , moving film",x\n"dull and lifeless",y\n')
    proc = predict(gold_run, f)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a wonderful , moving film", "dull and lifeless"]
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-5 for r in rows)


def test_run_dir_without_a_model_is_one_line(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"text": "fine"}\n')
    proc = predict(tmp_path, tmp_path / "rows.jsonl")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no saved classifier" in proc.stderr


def test_wrong_columns_name_file_and_line(gold_run, tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "fine"}\n{"sentence": "no text column"}\n')
    proc = predict(gold_run, f)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        f"error: {f}:2: missing column 'text' (this classifier reads ['text']; have ['sentence'])"
    )
