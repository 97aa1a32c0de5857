"""Label new text with the classifier a run produced, or answer questions with its QA model.

    python -m s3.predict <run_dir or model dir> <file.jsonl|file.csv> [-o predictions.jsonl]

The input needs the task's text columns (``text``, or ``text1`` and ``text2`` for pair tasks; ``context`` and
``question`` for extractive QA); other columns are ignored except ``id``, which is copied. One JSON object per
input row comes out, in input order, in the format of the run's own ``test_predictions.jsonl``: its id and text,
the predicted ``label`` name and ``probs`` (every label's probability); for QA its id, question and ``answer``
(a span of its context).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from s3.artifacts import MODEL_DIR, prediction_rows
from s3.atomic import atomic_write_jsonl
from s3.classifier import META_FILE, Classifier
from s3.config import UserError
from s3.qa import QA_FIELDS
from s3.qa_model import META_FILE as QA_META_FILE
from s3.qa_model import QAModel

FORMATS = (".jsonl", ".csv")


def model_dir(path: str | Path) -> Path:
    """The model folder itself, or ``<run_dir>/model``; one clear error when neither holds a classifier."""
    path = Path(path)
    for candidate in (path, path / MODEL_DIR):
        if (candidate / META_FILE).is_file() or (candidate / QA_META_FILE).is_file():
            return candidate
    if not path.exists():
        raise UserError(f"{path}: no such run dir")
    raise UserError(
        f"{path}: no saved classifier here (looked for {path / MODEL_DIR / META_FILE}); "
        "runs save one unless small_model.save=false"
    )


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for record in reader:
                yield f"{path}:{reader.line_num}", record
        return
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None


def read_inputs(path: str | Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """Rows with the classifier's text fields, checked: one line naming file and line for the first bad one."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise UserError(f"{path}: expected a {' or '.join(FORMATS)} file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    rows = []
    for where, record in _records(path):
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
        missing = [f for f in fields if f not in record]
        if missing:
            raise UserError(
                f"{where}: missing column {missing[0]!r} (this classifier reads {list(fields)}; have {sorted(record)})"
            )
        row = {f: record[f] for f in fields}
        bad = [f for f in fields if not isinstance(row[f], str) or not row[f].strip()]
        if bad:
            raise UserError(f"{where}: column {bad[0]!r} must be a non-empty string, got {row[bad[0]]!r}")
        if "id" in record:
            row["id"] = str(record["id"])
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def predict_file(model_path: str | Path, input_path: str | Path) -> list[dict[str, Any]]:
    folder = model_dir(model_path)
    if (folder / QA_META_FILE).is_file():
        rows = read_inputs(input_path, QA_FIELDS)
        answers = QAModel.load(folder).predict(rows)
        return [{**({"id": r["id"]} if "id" in r else {}), "question": r["question"], "answer": a}
                for r, a in zip(rows, answers)]  # fmt: skip
    meta = json.loads((folder / META_FILE).read_text())
    rows = read_inputs(input_path, meta["fields"])  # before loading the model: bad input costs nothing
    clf = Classifier.load(folder)
    return prediction_rows(clf, rows, clf.predict_proba(rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s3.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run dir (its model/ folder is used) or a saved model folder")
    parser.add_argument("input", help="rows to label: .jsonl or .csv with the task's text columns")
    parser.add_argument("-o", "--output", help="write predictions here (jsonl) instead of standard output")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = parser.parse_args(argv)
    try:
        if args.output and Path(args.output).exists() and not args.overwrite:
            raise UserError(f"{args.output}: exists (pass --overwrite to replace it)")
        out = predict_file(args.model, args.input)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.output:
        atomic_write_jsonl(args.output, out)
        print(f"wrote {len(out)} predictions to {args.output}", file=sys.stderr)
    else:
        sys.stdout.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
