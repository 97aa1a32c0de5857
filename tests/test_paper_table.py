"""benchmarks/paper_table.py: every cell is a valid run config, and the table reads finished runs correctly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from benchmarks.paper_table import COLUMNS, METHODS, PAPER, TASKS, cell_overrides, collect, paired_gap, table
from s3.config import compose_config
from s3.loop_config import loop_config

ARGS = argparse.Namespace(
    budget=400, seed_size=200, rounds=2, gold_rows=None, qa_min_steps=300, extra="", cell_extra=[]
)


@pytest.mark.parametrize("task", TASKS)
def test_every_cell_composes_into_a_valid_run(task) -> None:
    for method in METHODS:
        cfg = compose_config(cell_overrides(task, method, ARGS))
        loop = loop_config(cfg.loop)
        assert loop.name == method and instantiate(cfg.task).name == task
        if method != "gold":
            assert loop.total_budget == 400
        if method == "s3":
            assert (loop.seed_size, loop.rounds, loop.max_new_per_round) == (200, 2, 100)


def write_summary(out: Path, task: str, method: str, seed: int, n_train: int = 400, **scores: float) -> None:
    d = out / task / method / f"seed{seed}" / f"0_{task}_{method}_seed{seed}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(
        json.dumps({"task": task, "loop": method, "seed": seed, "n_train": n_train, **scores})
    )


def test_the_table_puts_ours_beside_the_papers_and_averages_the_five_columns(tmp_path) -> None:
    for method, base in (("zerogen", 0.70), ("s3", 0.80)):
        for seed in (0, 1):
            for task in ("imdb", "qnli", "rte"):
                write_summary(tmp_path, task, method, seed, test_acc=base + 0.02 * seed)
            write_summary(tmp_path, "adqa", method, seed, test_em=base / 10, test_f1=base / 5)
    write_summary(tmp_path, "rte", "gold", 0, n_train=539, test_acc=0.6)  # a row with one column only
    found = collect(tmp_path, list(TASKS), ["gold", "zerogen", "s3"], ["0", "1"])
    lines, averages = table(found, list(TASKS), ["gold", "zerogen", "s3"])
    s3_row = next(line for line in lines if line.startswith("| s3 |"))
    assert "81.0 ± 1.4 [2] (89.55)" in s3_row and "(34.40)" in s3_row  # imdb mean of 80 and 82; the paper's F1
    assert averages["s3"] == pytest.approx((81 * 3 + 8 + 16) / 5)  # AdQA EM 8, F1 16 on both seeds
    assert "gold" not in averages and "| gold | – (92.30)" in lines[2]  # incomplete: no average
    assert "| 60.0 [1] (71.50) |" in lines[2] and lines[2].endswith("| 539 |")  # one run: no spread shown
    paper_s3 = sum(PAPER["s3"][c][0] for c in COLUMNS) / 5
    assert f"({paper_s3:.2f})" in s3_row


def test_the_gap_compares_each_column_on_the_seeds_both_rows_have(tmp_path) -> None:
    for seed in (0, 1, 2):
        for method, base in (("goldgen", 0.50), ("s3", 0.60)):
            if method == "goldgen" and seed == 2:
                continue  # a seed only s3 has run: its own high score must not count as a lead
            for task in ("imdb", "qnli", "rte"):
                write_summary(tmp_path, task, method, seed, test_acc=base + 0.1 * seed)
            write_summary(tmp_path, "adqa", method, seed, n_train=300 + seed, test_em=base / 10, test_f1=base / 5)
    found = collect(tmp_path, list(TASKS), ["goldgen", "s3"], ["0", "1", "2"])
    gap, shared = paired_gap(found, "s3", "goldgen")
    assert shared == [2] * 5
    assert gap == pytest.approx((10 * 3 + 1 + 2) / 5)  # the two rows' table averages differ by more
    _, averages = table(found, list(TASKS), ["goldgen", "s3"])
    assert averages["s3"] - averages["goldgen"] > gap + 1
    assert next(line for line in table(found, list(TASKS), ["s3"])[0] if "| s3 |" in line).endswith("| 300–400 |")
    assert paired_gap(found, "s3", "zerogen")[0] != paired_gap(found, "s3", "zerogen")[0]  # no baseline: nan


def test_the_quality_benchmarks_adqa_runs_are_the_tables_cells() -> None:
    """`quality.py --task adqa --gold-rows all --max-test 1500 --extra small_model.min_steps=300` makes the runs the
    table's AdQA cells read from the ledger (its key: the overrides in any order)."""
    from benchmarks.ledger import key
    from benchmarks.quality import method_overrides

    args = argparse.Namespace(**{**vars(ARGS), "gold_rows": "400,adqa:all"})  # the others: gold on 400 rows
    for method in ("gold", "zerogen", "goldgen", "s3"):
        quality = method_overrides(
            "adqa", method, budget=400, seed_size=200, rounds=2, gold_rows="all", max_test=1500,
            extra=["small_model.min_steps=300"],
        )  # fmt: skip
        assert key(quality) == key(cell_overrides("adqa", method, args))


def test_a_cells_own_overrides_reach_that_cell_only() -> None:
    args = argparse.Namespace(**{**vars(ARGS), "cell_extra": ["imdb/goldgen=llm=smollm2_vllm llm.max_model_len=4096"]})
    own = cell_overrides("imdb", "goldgen", args)
    assert {"llm=smollm2_vllm", "llm.max_model_len=4096"} <= set(own)
    assert compose_config(own).llm.max_model_len == 4096
    assert "llm=smollm2_vllm" not in cell_overrides("imdb", "zerogen", args) + cell_overrides("qnli", "goldgen", args)
    for bad in ("imdb/goldgen=", "imbd/goldgen=llm=smollm2_vllm", "imdb=llm=smollm2_vllm"):
        with pytest.raises(ValueError, match="--cell-extra"):
            cell_overrides("imdb", "goldgen", argparse.Namespace(**{**vars(ARGS), "cell_extra": [bad]}))


def test_gold_rows_per_task() -> None:
    from benchmarks.paper_table import gold_rows

    assert gold_rows("400,adqa:all", "adqa") == "all" and gold_rows("400,adqa:all", "qnli") == "400"
    assert (
        gold_rows("all", "sst2") == "all" and gold_rows("adqa:all", "sst2") is None and gold_rows(None, "rte") is None
    )


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "imdb"])
def test_the_quality_benchmarks_default_runs_are_the_tables_cells(task: str) -> None:
    """`quality.py --task <task>` at its defaults (test rows <= 1000, gold on --budget rows) makes the cells
    `paper_table.py` reads, so neither benchmark re-makes the other's runs."""
    from benchmarks.ledger import key
    from benchmarks.quality import method_overrides

    for method in ("gold", "zerogen", "goldgen", "s3"):
        quality = method_overrides(
            task, method, budget=400, seed_size=200, rounds=2, gold_rows=None, max_test=1000, extra=[]
        )
        assert key(quality) == key(cell_overrides(task, method, ARGS))


def test_the_command_written_to_results_can_be_pasted_back(monkeypatch) -> None:
    """A `--cell-extra` value holds spaces: the RESULTS.md command line quotes it, so pasting it runs the same cells."""
    import shlex

    from benchmarks.results import command_line

    argv = ["benchmarks/paper_table.py", "--cell-extra", "imdb/goldgen=llm=smollm2_vllm llm.max_model_len=4096"]
    monkeypatch.setattr("sys.argv", argv)
    assert shlex.split(command_line()) == ["python", *argv]
