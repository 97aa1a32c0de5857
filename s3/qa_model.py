"""The small model for extractive QA: an encoder with a start/end span head, trained with PyTorch Lightning.

A passage longer than ``max_length`` is read in overlapping windows (``doc_stride`` tokens of overlap, the
Hugging Face recipe); a training window that does not hold the answer points at [CLS]. A prediction is the
highest-scoring span (start logit + end logit) over every window of its passage, mapped back to characters
through the tokenizer's offsets. The best epoch is the one with the best SQuAD F1 on the selection rows.

Any checkpoint ``AutoModelForQuestionAnswering`` can load works (all-MiniLM-L6-v2 and DistilBERT get a fresh
span head); the saved folder is in Hugging Face layout plus ``s3_qa_model.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding

from s3.atomic import atomic_dir
from s3.classifier import BucketBatchSampler, SmallModelConfig, lightning_trainer, optimizer_and_schedule
from s3.embed import resolve_model
from s3.hardware import autocast_bf16, training_precision
from s3.qa import qa_scores

log = logging.getLogger(__name__)

META_FILE = "s3_qa_model.json"
MAX_QUESTION_CHARS = 300  # a question longer than this is cut, so every window keeps room for its passage
MAX_ANSWER_TOKENS = 30
N_BEST = 20


class Windows(Dataset):
    """Rows -> tokenized (question, passage window) features; ``row_of[i]`` is the row feature ``i`` came from,
    ``offsets[i]`` the character span of each token (None outside the passage)."""

    def __init__(self, rows: Sequence[dict[str, Any]], tokenizer: Any, max_length: int, stride: int, train: bool):
        enc = tokenizer(
            [str(r["question"])[:MAX_QUESTION_CHARS].lstrip() for r in rows],
            [str(r["context"]) for r in rows],
            truncation="only_second",
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        self.row_of: list[int] = list(enc["overflow_to_sample_mapping"])
        self.offsets: list[list[tuple[int, int] | None]] = []
        self.features: list[dict[str, Any]] = []
        keys = [k for k in enc.keys() if k not in ("offset_mapping", "overflow_to_sample_mapping")]
        for i, row_index in enumerate(self.row_of):
            seq = enc.sequence_ids(i)
            offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq)]
            feat = {k: enc[k][i] for k in keys}
            if train:
                feat["start_positions"], feat["end_positions"] = answer_tokens(rows[row_index], offsets)
            self.features.append(feat)
            self.offsets.append(offsets)
        self.lengths = [len(f["input_ids"]) for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def answer_tokens(row: dict[str, Any], offsets: Sequence[tuple[int, int] | None]) -> tuple[int, int]:
    """The first and last token of the answer inside this window, or (0, 0) ([CLS]) when the window lacks it."""
    start_char = int(row["answer_start"])
    end_char = start_char + len(row["answer_text"])
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:  # type: ignore[index]
        return 0, 0
    start = next(i for i in inside if offsets[i][1] > start_char)  # type: ignore[index]
    end = next(i for i in reversed(inside) if offsets[i][0] < end_char)  # type: ignore[index]
    return start, max(start, end)


def best_spans(
    windows: Windows, start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray], n_rows: int
) -> list[tuple[int, int]]:
    """Per row, the character span (start, end) with the highest start + end score over all its windows."""
    best: list[tuple[float, int, int]] = [(-math.inf, 0, 0)] * n_rows
    for i, (starts, ends) in enumerate(zip(start_logits, end_logits)):
        offsets = windows.offsets[i]
        for s in np.argsort(starts)[::-1][:N_BEST]:
            if s >= len(offsets) or offsets[s] is None:
                continue
            for e in np.argsort(ends)[::-1][:N_BEST]:
                if e < s or e - s + 1 > MAX_ANSWER_TOKENS or e >= len(offsets) or offsets[e] is None:
                    continue
                score = float(starts[s] + ends[e])
                row = windows.row_of[i]
                if score > best[row][0]:
                    best[row] = (score, offsets[s][0], offsets[e][1])  # type: ignore[index]
    return [(start, end) for _, start, end in best]


def _collator(tokenizer: Any) -> DataCollatorWithPadding:
    return DataCollatorWithPadding(tokenizer)


@dataclass
class QAModel:
    """A trained (or reloaded) QA model: what answers questions about passages."""

    model: nn.Module
    tokenizer: Any
    max_length: int
    doc_stride: int
    eval_batch_size: int = 64
    precision: str = "auto"  # as trained (SmallModelConfig.precision)
    meta: dict[str, Any] = field(default_factory=dict)

    def logits(self, windows: Windows) -> tuple[list[np.ndarray], list[np.ndarray]]:
        order = sorted(range(len(windows)), key=windows.lengths.__getitem__)
        batches = [order[i : i + self.eval_batch_size] for i in range(0, len(order), self.eval_batch_size)]
        loader = DataLoader(windows, batch_sampler=batches, collate_fn=_collator(self.tokenizer))
        model = self.model.eval()
        device = next(model.parameters()).device
        starts: list[np.ndarray] = [np.empty(0)] * len(windows)
        ends: list[np.ndarray] = [np.empty(0)] * len(windows)
        use_bf16 = autocast_bf16(self.precision, device.type)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for idx, batch in zip(batches, loader):
                inputs = {k: v.to(device) for k, v in batch.items() if k not in ("start_positions", "end_positions")}
                out = model(**inputs)
                for j, i in enumerate(idx):
                    n = windows.lengths[i]
                    starts[i] = out.start_logits[j, :n].float().cpu().numpy()
                    ends[i] = out.end_logits[j, :n].float().cpu().numpy()
        return starts, ends

    def predict(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """The predicted answer text for each row, in input order."""
        windows = Windows(rows, self.tokenizer, self.max_length, self.doc_stride, train=False)
        spans = best_spans(windows, *self.logits(windows), len(rows))
        return [str(r["context"])[s:e] for r, (s, e) in zip(rows, spans)]

    def save(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as partial:
            self.model.save_pretrained(partial)
            self.tokenizer.save_pretrained(partial)
            meta = {
                "kind": "extractive_qa",
                "max_length": self.max_length,
                "doc_stride": self.doc_stride,
                "eval_batch_size": self.eval_batch_size,
                "precision": self.precision,
                **self.meta,
            }
            (partial / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out_dir

    @classmethod
    def load(cls, path: str | Path) -> QAModel:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        known = ("max_length", "doc_stride", "eval_batch_size", "precision")
        return cls(
            model=AutoModelForQuestionAnswering.from_pretrained(path).eval(),
            tokenizer=AutoTokenizer.from_pretrained(path),
            meta={k: v for k, v in meta.items() if k not in (*known, "kind")},
            **{k: meta[k] for k in known},
        )


@dataclass
class TrainedQAModel(QAModel):
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)


class QAModule(pl.LightningModule):
    """Span cross-entropy; after each epoch, SQuAD F1 on the selection rows; keeps the best epoch's weights."""

    def __init__(self, cfg: SmallModelConfig, evaluator: QAModel, val_rows: Sequence[dict[str, Any]]):
        super().__init__()
        self.cfg = cfg
        self.model = evaluator.model
        self.evaluator = evaluator
        self.val_rows = list(val_rows)
        self.val_windows = Windows(val_rows, evaluator.tokenizer, evaluator.max_length, evaluator.doc_stride, False)
        self.best_f1 = -1.0
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []
        self._losses: dict[int, list[float]] = defaultdict(list)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        starts, ends = batch.pop("start_positions"), batch.pop("end_positions")
        out = self.model(**batch)
        loss = (F.cross_entropy(out.start_logits.float(), starts) + F.cross_entropy(out.end_logits.float(), ends)) / 2
        self._losses[self.current_epoch].append(loss.item())
        self.log("train_loss", loss, prog_bar=True, batch_size=len(starts))
        return loss

    def on_train_epoch_end(self) -> None:
        spans = best_spans(self.val_windows, *self.evaluator.logits(self.val_windows), len(self.val_rows))
        preds = [str(r["context"])[s:e] for r, (s, e) in zip(self.val_rows, spans)]
        score = qa_scores(preds, self.val_rows)
        self.model.train()
        losses = self._losses.get(self.current_epoch, [])
        self.history.append(
            {
                "epoch": self.current_epoch,
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "val_em": score["em"],
                "val_f1": score["f1"],
                "steps": int(self.global_step),
            }
        )
        if score["f1"] > self.best_f1:
            self.best_f1, self.best_epoch = score["f1"], self.current_epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def configure_optimizers(self) -> Any:
        return optimizer_and_schedule(self.model, self.cfg, self.trainer, head_prefixes=("qa_outputs.",))


def train_qa_model(
    train_rows: Sequence[dict[str, Any]],
    val_rows: Sequence[dict[str, Any]],
    task_name: str,
    cfg: SmallModelConfig,
    seed: int,
    progress: bool = True,
) -> TrainedQAModel:
    """Fresh span head on the pretrained encoder, trained on ``train_rows``; best epoch by F1 on ``val_rows``."""
    if not train_rows:
        raise ValueError("train_qa_model: no training rows (did synthesis produce any usable examples?)")
    pl.seed_everything(seed, workers=True, verbose=False)
    path = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path).train()
    precision = training_precision(cfg.precision)
    evaluator = QAModel(model, tokenizer, cfg.max_length, cfg.doc_stride, cfg.eval_batch_size, precision)
    module = QAModule(cfg, evaluator, val_rows)
    train_set = Windows(train_rows, tokenizer, cfg.max_length, cfg.doc_stride, train=True)
    train_loader = DataLoader(
        train_set,
        collate_fn=_collator(tokenizer),
        batch_sampler=BucketBatchSampler(train_set.lengths, cfg.batch_size, cfg.bucket_size, seed),
    )
    epochs = cfg.epochs_for(len(train_set))
    trainer = lightning_trainer(cfg, epochs, progress)
    start = time.perf_counter()
    trainer.fit(module, train_loader)
    seconds = time.perf_counter() - start
    if module.best_state is not None:
        model.load_state_dict(module.best_state)
    log.info(
        "trained %s (QA) on %d rows (%d windows) for %d epochs: best epoch %d, val F1 per epoch %s (%.1fs)",
        cfg.name,
        len(train_rows),
        len(train_set),
        epochs,
        module.best_epoch,
        [round(h["val_f1"], 4) for h in module.history],
        seconds,
    )
    return TrainedQAModel(
        model=model.eval(),
        tokenizer=tokenizer,
        max_length=cfg.max_length,
        doc_stride=cfg.doc_stride,
        eval_batch_size=cfg.eval_batch_size,
        precision=precision,
        meta={"task": task_name, "base_model": cfg.model, "small_model": cfg.name},
        train_seconds=seconds,
        examples_per_second=len(train_set) * epochs / seconds,
        best_epoch=module.best_epoch,
        history=list(module.history),
    )
