"""Loading real tasks, the custom CSV task, stratified sampling and the promised errors on bad files."""

import json

import pytest
from hydra.utils import instantiate

from conftest import TEST_DATA, compose_config
from s3.config import UserError
from s3.data import DataError, load_real_data, load_split, stratified_sample

COUNTS = {  # from ../shared/data/README.md
    "sst2": {"train": 67349, "validation": 872, "test": 1821},
    "imdb": {"train": 2000, "validation": 1000, "test": 25000},
    "rte": {"train": 2190, "validation": 300, "test": 277},
    "qnli": {"train": 8833, "validation": 1000, "test": 5463},
}


def task(name="sst2", **overrides):
    cfg = compose_config([f"task={name}"])
    t = instantiate(cfg.task)
    for k, v in overrides.items():
        setattr(t, k, v)
    return t


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_task_counts(name, data_dir):
    t = task(name)
    for split, n in COUNTS[name].items():
        rows = load_split(t, split, data_dir)
        assert len(rows) == n
        assert all(isinstance(r["label"], int) and 0 <= r["label"] < len(t.labels) for r in rows[:100])
        assert all(r[f] for r in rows[:100] for f in t.fields)


def test_sst2_label_balance(data_dir):
    rows = load_split(task("sst2"), "validation", data_dir)
    assert sum(r["label"] == 0 for r in rows) == 428


def test_custom_csv_task():
    t = task("custom_example")
    rows = load_split(t, "train", TEST_DATA)
    assert len(rows) == 80 and {r["label"] for r in rows} == {0, 1}
    assert rows[0]["text"] and rows[0]["id"] == "train-0"


def test_gold_val_is_stratified_and_seeded(data_dir):
    t = task("sst2")
    a = load_real_data(t, data_dir, 200, 300, seed=0)
    b = load_real_data(t, data_dir, 200, 300, seed=0)
    c = load_real_data(t, data_dir, 200, 300, seed=1)
    assert [r["id"] for r in a.gold_val] == [r["id"] for r in b.gold_val]
    assert [r["id"] for r in a.gold_val] != [r["id"] for r in c.gold_val]
    assert len(a.gold_val) == 200 and sum(r["label"] == 0 for r in a.gold_val) in (98, 99)  # 428/872 of 200
    # the test cap does not depend on the run seed: every seed is scored on the same rows
    assert [r["id"] for r in a.test] == [r["id"] for r in c.test] and len(a.test) == 300


def test_the_leak_guard_protects_the_whole_test_split_when_scoring_is_capped(data_dir):
    t = task("sst2")
    capped, whole = load_real_data(t, data_dir, 200, 300, seed=0), load_real_data(t, data_dir, 200, None, seed=0)
    assert len(capped.test) == 300 and len(whole.test) == 1821
    assert {r["id"] for r in whole.test} <= {r["id"] for r in capped.protected}
    assert len(whole.protected) == 200 + 1821


def test_selection_rows_are_a_stratified_held_out_slice_of_the_gold_set(data_dir):
    t = task("sst2")
    whole = load_real_data(t, data_dir, 200, 300, seed=0)
    split = load_real_data(t, data_dir, 200, 300, seed=0, selection_fraction=0.25)
    assert whole.select == [] and whole.selection == whole.gold_val
    learn, select = {r["id"] for r in split.gold_val}, {r["id"] for r in split.select}
    assert len(learn) == 150 and len(select) == 50 and not learn & select
    assert learn | select == {r["id"] for r in whole.gold_val}  # the same 200 gold labels, split
    assert sum(r["label"] for r in split.select) in (25, 26) and split.selection == split.select
    again = load_real_data(t, data_dir, 200, 300, seed=0, selection_fraction=0.25)
    assert [r["id"] for r in again.select] == [r["id"] for r in split.select]
    with pytest.raises(UserError, match="selection_fraction"):
        load_real_data(t, data_dir, 1, 300, seed=0, selection_fraction=0.25)  # rounds to no held-out row


def test_stratified_sample_proportions():
    rows = [{"label": 0}] * 70 + [{"label": 1}] * 30
    picked = stratified_sample(rows, 10, seed=3)
    assert sum(r["label"] == 1 for r in picked) == 3


def write(tmp_path, name, text):
    folder = tmp_path / "sst2"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return tmp_path


def test_bad_json_line_names_file_and_line(tmp_path):
    good = json.dumps({"text": "fine", "label": 1})
    d = write(tmp_path, "validation.jsonl", f"{good}\n{good}\n{{not json\n")
    with pytest.raises(DataError, match=r"validation\.jsonl:3: not valid JSON"):
        load_split(task("sst2"), "validation", d)


def test_missing_column_names_file_and_line(tmp_path):
    d = write(
        tmp_path,
        "validation.jsonl",
        json.dumps({"text": "a", "label": 0}) + "\n" + json.dumps({"sentence": "b", "label": 0}) + "\n",
    )
    with pytest.raises(DataError, match=r"validation\.jsonl:2: missing column 'text'"):
        load_split(task("sst2"), "validation", d)


def test_label_outside_label_set(tmp_path):
    d = write(tmp_path, "validation.jsonl", json.dumps({"text": "a", "label": 7}) + "\n")
    with pytest.raises(DataError, match=r"validation\.jsonl:1: label 7 is not one of"):
        load_split(task("sst2"), "validation", d)


def test_bad_csv_label(tmp_path):
    folder = tmp_path / "custom_example"
    folder.mkdir()
    (folder / "test.csv").write_text("message,category\nhello there,question\nit broke,feature_request\n")
    with pytest.raises(DataError, match=r"test\.csv:3: label 'feature_request'"):
        load_split(task("custom_example"), "test", tmp_path)


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=r"looked for .*custom_example/test\..*S3_DATA_DIR"):
        load_split(task("custom_example"), "test", tmp_path)


def test_missing_data_without_hub_access(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"looked for .*sst2/validation.* and the Hub dataset 'nyu-mll/glue' failed"):
        load_split(task("sst2"), "validation", tmp_path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("validation.csv", b"text,label\ngood film,1\nbad\xff\xfe film,0\n", r"validation\.csv:3: not UTF-8 text"),
        (
            "validation.jsonl",
            b'{"text": "a", "label": 0}\n{"text": "\xff", "label": 1}\n',
            r"validation\.jsonl:2: not UTF-8",
        ),
        ("validation.csv", b"sentence,score\nfine,1,extra\n", r"validation\.csv:2: missing column 'text'"),
        (
            "validation.jsonl",
            b'{"text": "a", "label": 0, "id": "x"}\n{"text": "b", "label": 1, "id": "x"}\n',
            r"validation\.jsonl:2: id 'x' is used twice \(first at .*validation\.jsonl:1\)",
        ),
    ],
    ids=["csv-not-utf8", "jsonl-not-utf8", "csv-no-label-column-extra-field", "duplicate-id"],
)
def test_malformed_files_are_one_line_naming_file_and_line(tmp_path, name, content, message):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / name).write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        load_split(task("sst2"), "validation", tmp_path)
    assert "\n" not in str(err.value)


def test_a_huge_csv_field_is_read(tmp_path):
    big = "word " * 200_000  # 1 MB, past the csv module's default field limit
    d = write(tmp_path, "validation.csv", f'text,label\n"{big}",1\nshort one,0\n')
    rows = load_split(task("sst2"), "validation", d)
    assert len(rows) == 2 and len(rows[0]["text"]) > 900_000


def test_asking_for_more_gold_rows_than_the_split_has_is_an_error(data_dir):
    with pytest.raises(UserError, match="num_gold_val=5000 but the sst2 validation split has 872 rows"):
        load_real_data(task("sst2"), data_dir, 5000, 300, seed=0)


def test_the_papers_gold_set_from_train_keeps_its_held_out_rows_out_of_synthesis(data_dir):
    """loop.gold_split=train: the gold rows come from the train split, and the train rows synthesis may show
    (pair contexts, QA passages) leave out the held-out selection rows."""
    task = instantiate(compose_config(["task=rte"]).task)
    real = load_real_data(task, data_dir, 40, 50, 0, need_train=True, selection_fraction=0.25, gold_split="train")
    train_ids = {r["id"] for r in real.train}
    assert {r["id"] for r in real.gold_val} <= train_ids and not {r["id"] for r in real.select} & train_ids
    assert {r["id"] for r in real.gold_val + real.select} <= {r["id"] for r in load_split(task, "train", data_dir)}
