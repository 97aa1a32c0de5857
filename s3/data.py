"""Tasks and real data: local jsonl/csv/parquet files first, the Hugging Face Hub as a fallback.

A row is a plain dict: the task's input fields (``text`` or ``text1``/``text2``), an integer
``label`` and a string ``id``. Every loader validates what it reads and fails with one line that
names the file and the line, because a silently skipped row makes runs incomparable.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3.config import UserError

SPLITS = ("train", "validation", "test")
FORMATS = ("jsonl", "csv", "parquet")
TEST_CAP_SEED = 0


class DataError(UserError):
    """Bad or missing data; the message is meant to be shown to the user as is."""


@dataclass
class HubSource:
    """Where users with internet get the same task: ``datasets.load_dataset(path, name)``."""

    path: str
    name: str | None = None
    splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split (may slice)
    columns: dict[str, str] = field(default_factory=dict)  # our field -> hub column


@dataclass
class Task:
    """What a task is: its input fields, label names and how it is described to the LLM."""

    name: str
    description: str
    example_kind: str  # "movie review", "premise/hypothesis pair": used inside prompts
    labels: list[str]
    fields: list[str] = field(default_factory=lambda: ["text"])
    field_labels: dict[str, str] = field(default_factory=dict)  # field -> prose name in prompts
    label_column: str = "label"
    text_columns: dict[str, str] = field(default_factory=dict)  # our field -> column in local files
    label_descriptions: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)  # templates, see conf/prompts/ and s3/prompts.py
    max_tokens: int = 160  # LLM tokens that fit one example (a task config may set its own)
    context_field: str | None = None  # pair tasks, loop.pair_context=train: the field a real train text fills
    # (None: the first); the LLM writes the other one
    patterns: dict[str, str] = field(default_factory=dict)  # field -> a regular expression every example's text
    # in that field matches (re.search), e.g. {text: '\?\s*$'} for questions; synthetic rows that do not are dropped
    hub: HubSource | None = None

    def __post_init__(self) -> None:
        self.fields = list(self.fields)
        self.labels = list(self.labels)
        if self.fields not in (["text"], ["text1", "text2"]):
            raise DataError(f"task {self.name}: fields must be [text] or [text1, text2], got {self.fields}")
        if len(self.labels) < 2:
            raise DataError(f"task {self.name}: needs at least two labels, got {self.labels}")
        self.field_labels = {f: self.field_labels.get(f, f) for f in self.fields}
        if self.context_field is not None and self.context_field not in self.fields:
            raise DataError(f"task {self.name}: context_field must be one of {self.fields}, got {self.context_field!r}")
        for f, pattern in self.patterns.items():
            if f not in self.fields:
                raise DataError(f"task {self.name}: patterns.{f}: no such field (fields: {self.fields})")
            try:
                re.compile(pattern)
            except re.error as err:
                raise DataError(
                    f"task {self.name}: patterns.{f}: {pattern!r} is not a regular expression ({err})"
                ) from None
        if isinstance(self.hub, Mapping):
            self.hub = HubSource(**self.hub)

    @property
    def is_pair(self) -> bool:
        return len(self.fields) == 2

    @property
    def given_field(self) -> str:
        """Pairs on real contexts (loop.pair_context=train): the field a real train text fills."""
        return self.context_field or self.fields[0]

    @property
    def written_field(self) -> str:
        """Pairs on real contexts: the field the LLM writes (the other one)."""
        return next(f for f in self.fields if f != self.given_field)

    def text_of(self, row: Mapping[str, Any]) -> str:
        """One string per example (pairs joined), for embeddings, dedup and leak checks."""
        return " [SEP] ".join(str(row[f]) for f in self.fields)

    def parse_record(self, record: Mapping[str, Any], where: str, default_id: str) -> dict[str, Any]:
        """One row from one record of a data file (``where`` names it in errors)."""
        return _make_row(record, self, where, default_id)

    def with_columns(self, columns: Mapping[str, str]) -> Task:
        """The same task reading other column names (a Hub dataset's)."""
        text_columns = {f: columns.get(f, f) for f in self.fields}
        return Task(
            **{
                **self.__dict__,
                "text_columns": text_columns,
                "label_column": columns.get("label", "label"),
                "hub": None,
            }
        )


def _column_map(task: Task) -> dict[str, str]:
    return {f: task.text_columns.get(f, f) for f in task.fields}


def _parse_label(value: Any, task: Task, where: str) -> int:
    """Accept an index (int or digit string) or a label name; anything else is an error."""
    if isinstance(value, bool):
        raise DataError(f"{where}: label {value!r} is not one of {task.labels}")
    if isinstance(value, (int, float)) and float(value).is_integer() and 0 <= int(value) < len(task.labels):
        return int(value)
    if isinstance(value, str):
        v = value.strip()
        if v.isdigit() and int(v) < len(task.labels):
            return int(v)
        lowered = [name.lower() for name in task.labels]
        if v.lower() in lowered:
            return lowered.index(v.lower())
    raise DataError(f"{where}: label {value!r} is not one of {task.labels} (or their indices)")


def _make_row(record: Mapping[str, Any], task: Task, where: str, default_id: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for f, column in _column_map(task).items():
        if column not in record:
            raise DataError(f"{where}: missing column {column!r} (have {sorted(map(str, record))})")
        value = record[column]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: column {column!r} must be a non-empty string, got {value!r}")
        row[f] = value.strip()
    if task.label_column not in record:
        raise DataError(f"{where}: missing label column {task.label_column!r} (have {sorted(map(str, record))})")
    row["label"] = _parse_label(record[task.label_column], task, where)
    row["id"] = str(record.get("id", default_id))
    return row


def _read_jsonl(path: Path, task: Task, split: str) -> Iterator[tuple[dict[str, Any], str]]:
    with path.open("rb") as fh:
        for lineno, line in enumerate(_lines(fh, path), start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield task.parse_record(record, where, f"{split}-{lineno - 1}"), where


def _lines(fh: Any, path: Path) -> Iterator[str]:
    """The lines of a file opened in binary mode, decoded one by one: bytes that are not UTF-8 are one error
    naming their line (a text-mode file decodes in chunks and cannot say which line)."""
    for lineno, raw in enumerate(fh, start=1):
        try:
            yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{lineno}: not UTF-8 text ({err.reason}); save the file as UTF-8") from None


CSV_FIELD_LIMIT = 16 * 2**20  # characters per field (the csv module's default is 128 KiB)


def _read_csv(path: Path, task: Task, split: str) -> Iterator[tuple[dict[str, Any], str]]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with path.open("rb") as fh:
        reader = csv.DictReader(_lines(fh, path))
        # line numbers count the header as line 1, as an editor shows them
        i = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
            where = f"{path}:{reader.line_num}"
            yield task.parse_record(record, where, f"{split}-{i}"), where
            i += 1


def _read_parquet(path: Path, task: Task, split: str) -> Iterator[tuple[dict[str, Any], str]]:
    import pyarrow.parquet as pq

    for i, r in enumerate(pq.read_table(path).to_pylist()):
        yield task.parse_record(r, f"{path}:row {i}", f"{split}-{i}"), f"{path}:row {i}"


def _unique_ids(rows_at: Iterable[tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
    """Rows in order; an id seen twice is an error naming both places (provenance points at rows by id)."""
    seen: dict[str, str] = {}
    rows = []
    for row, where in rows_at:
        if row["id"] in seen:
            raise DataError(f"{where}: id {row['id']!r} is used twice (first at {seen[row['id']]})")
        seen[row["id"]] = where
        rows.append(row)
    return rows


_READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}


def local_split_path(task: Task, split: str, data_dir: str | Path) -> Path | None:
    folder = Path(data_dir) / task.name
    for fmt in FORMATS:
        path = folder / f"{split}.{fmt}"
        if path.is_file():
            return path
    return None


def _load_from_hub(task: Task, split: str) -> list[dict[str, Any]]:
    import datasets

    hub = task.hub
    assert hub is not None
    ds = datasets.load_dataset(hub.path, hub.name, split=hub.splits.get(split, split))
    hub_task = task.with_columns(hub.columns)
    return [hub_task.parse_record(r, f"hub {hub.path}:{split}:{i}", f"hub-{split}-{i}") for i, r in enumerate(ds)]


def load_split(task: Task, split: str, data_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of one split: the local file when present, else the Hub; one clear error otherwise."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = local_split_path(task, split, data_dir)
    if path is not None:
        rows = _unique_ids(_READERS[path.suffix.lstrip(".")](path, task, split))
    else:
        looked = Path(data_dir) / task.name / f"{split}.{{{','.join(FORMATS)}}}"
        if task.hub is None:
            raise DataError(
                f"no {split} data for task {task.name!r}: looked for {looked}; "
                "set S3_DATA_DIR (or paths.data_dir=...) to the folder holding <task>/<split>.jsonl"
            )
        try:
            rows = _load_from_hub(task, split)
        except Exception as err:  # offline, unknown dataset, ...: say where we looked, once
            raise DataError(
                f"no {split} data for task {task.name!r}: looked for {looked} and the Hub "
                f"dataset {task.hub.path!r} failed ({type(err).__name__}: {str(err)[:200]}); "
                "set S3_DATA_DIR (or paths.data_dir=...) to a local copy"
            ) from None
    if not rows:
        raise DataError(f"task {task.name!r}: the {split} split is empty ({path or 'hub'})")
    return rows


def stratified_sample(rows: Sequence[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """``n`` rows with label proportions as in ``rows`` (largest remainder), reproducible from ``seed``.

    ``n=None`` or ``n >= len(rows)`` returns every row, shuffled with the same seed.
    """
    rng = random.Random(seed)
    if n is None or n >= len(rows):
        out = list(rows)
        rng.shuffle(out)
        return out
    by_label: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:  # rows without a label (question answering) are one stratum
        by_label[row.get("label", 0)].append(row)
    labels = sorted(by_label)
    exact = {lab: n * len(by_label[lab]) / len(rows) for lab in labels}
    quota = {lab: int(exact[lab]) for lab in labels}
    for lab in sorted(labels, key=lambda lab: exact[lab] - quota[lab], reverse=True)[: n - sum(quota.values())]:
        quota[lab] += 1
    picked = []
    for lab in labels:
        pool = list(by_label[lab])
        rng.shuffle(pool)
        picked.extend(pool[: quota[lab]])
    rng.shuffle(picked)
    return picked


def label_counts(rows: Sequence[Mapping[str, Any]], task: Task) -> dict[str, int]:
    counts = {name: 0 for name in task.labels}
    for row in rows:
        counts[task.labels[row["label"]]] += 1
    return counts


@dataclass
class RealData:
    """The real data one run sees: the gold validation rows S3 learns from, the held-out selection rows, the test set.

    ``gold_val`` is what S3 learns from: its errors are shown to the LLM and the gold label check is fitted on it.
    ``select`` is held out from all of that and only chooses the best epoch and gives ``select_acc``; after error
    extrapolation the model has trained on paraphrases of ``gold_val`` rows, so their accuracy flatters it.
    """

    gold_val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    train: list[dict[str, Any]] | None = None  # only loaded for the gold baseline / GoldGen
    select: list[dict[str, Any]] = field(default_factory=list)  # empty: gold_val also selects (the paper)
    test_split: list[dict[str, Any]] = field(default_factory=list)  # the whole test split when ``test`` is capped

    @property
    def protected(self) -> list[dict[str, Any]]:
        """Every real evaluation row a synthetic row must not copy: gold (both parts) and the whole test split."""
        return self.gold_val + self.select + (self.test_split or self.test)

    @property
    def selection(self) -> list[dict[str, Any]]:
        """The rows that choose the best epoch."""
        return self.select or self.gold_val


def load_real_data(
    task: Task,
    data_dir: str | Path,
    num_gold_val: int | None,
    max_test: int | None,
    seed: int,
    need_train: bool = False,
    selection_fraction: float = 0.0,
    gold_split: str = "validation",
) -> RealData:
    """Gold validation = a label-stratified, seeded sample of ``gold_split`` (the validation split; ``train`` is the
    paper's setting), of which a stratified ``selection_fraction`` is held out for model selection; test capped
    by ``max_test``."""
    validation = load_split(task, gold_split, data_dir)
    if num_gold_val is not None and num_gold_val > len(validation):
        raise UserError(
            f"loop.num_gold_val={num_gold_val} but the {task.name} {gold_split} split has {len(validation)} rows"
        )
    gold = stratified_sample(validation, num_gold_val, seed)
    n_select = round(selection_fraction * len(gold))
    if selection_fraction > 0 and not 0 < n_select < len(gold):
        raise UserError(
            f"loop.selection_fraction={selection_fraction} of {len(gold)} gold rows leaves no rows to "
            "select on or none to learn from; change loop.num_gold_val or loop.selection_fraction"
        )
    select = stratified_sample(gold, n_select, seed) if n_select else []
    held_out = {id(r) for r in select}
    gold_val = [r for r in gold if id(r) not in held_out]
    test = test_split = load_split(task, "test", data_dir)
    if max_test is not None and max_test < len(test):
        # fixed seed, not the run seed: every method and seed is scored on the same test rows
        test = stratified_sample(test, max_test, TEST_CAP_SEED)
    train = None
    if need_train:  # with gold_split=train, minus the held-out rows: they never become prompt material either
        train = (
            [r for r in validation if id(r) not in held_out]
            if gold_split == "train"
            else load_split(task, "train", data_dir)
        )
    return RealData(
        gold_val=gold_val,
        test=test,
        train=train,
        select=select,
        test_split=test_split if test is not test_split else [],
    )
