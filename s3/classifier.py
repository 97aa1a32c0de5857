"""The small model: a Hugging Face sequence classifier trained with PyTorch Lightning.

Trains from scratch on every call (S3 retrains after each round), keeps the epoch with the best
gold-validation accuracy and restores it, as the paper's training script does. Batches are padded
dynamically and bucketed by length, which is where most of the speed comes from on short texts.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
from transformers import get_linear_schedule_with_warmup

from s3.data import Task
from s3.embed import resolve_model

log = logging.getLogger(__name__)


@dataclass
class SmallModelConfig:
    name: str
    model: str
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_epochs: int = 4
    precision: str = "bf16-mixed"
    bucket_size: int = 50  # batches per length bucket; 1 = plain shuffling
    pad_to_max_length: bool = False  # the official S3 script's fixed padding; only for comparisons


class EncodedDataset(Dataset):
    """Rows tokenized once, unpadded; the collator pads each batch to its own longest row."""

    def __init__(self, rows: Sequence[dict[str, Any]], task: Task, tokenizer: Any, max_length: int):
        columns = [[str(r[f]) for r in rows] for f in task.fields]
        enc = tokenizer(*columns, truncation=True, max_length=max_length)
        self.features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(rows))]
        for feat, row in zip(self.features, rows):
            feat["labels"] = int(row["label"])
        self.lengths = [len(f["input_ids"]) for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffle, cut into buckets of ``bucket_size`` batches, sort each bucket by length, shuffle batches.

    Rows of similar length share a batch (little padding) while batch order stays random.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, bucket_size: int, seed: int):
        self.lengths, self.batch_size, self.bucket_size, self.seed = list(lengths), batch_size, bucket_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this each epoch
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.bucket_size
        batches = []
        for start in range(0, len(order), span):
            bucket = sorted(order[start:start + span], key=self.lengths.__getitem__)
            batches += [bucket[i:i + self.batch_size] for i in range(0, len(bucket), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def eval_loader(dataset: EncodedDataset, tokenizer: Any, batch_size: int) -> DataLoader:
    """Sorted by length (less padding); predictions are put back in row order by the caller."""
    order = sorted(range(len(dataset)), key=dataset.lengths.__getitem__)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=DataCollatorWithPadding(tokenizer))


class ClassifierModule(pl.LightningModule):
    """AdamW + linear warm-up/decay; tracks gold-validation accuracy and keeps the best epoch's weights."""

    def __init__(self, cfg: SmallModelConfig, num_labels: int):
        super().__init__()
        self.cfg = cfg
        self.model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(cfg.model), num_labels=num_labels)
        # from_pretrained returns eval mode and Lightning keeps submodule modes: dropout would stay off.
        self.model.train()
        self.num_labels = num_labels
        self.best_val_acc = -1.0
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch_val_acc: list[float] = []
        self._val_preds: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._val_preds.append(self(batch).argmax(-1).cpu())
        self._val_labels.append(batch["labels"].cpu())

    def on_validation_epoch_end(self) -> None:
        preds, labels = torch.cat(self._val_preds), torch.cat(self._val_labels)
        self._val_preds.clear()
        self._val_labels.clear()
        acc = multiclass_accuracy(preds, labels, self.num_labels, average="micro").item()
        self.log("val_acc", acc, prog_bar=True)
        if self.trainer.sanity_checking:
            return
        self.epoch_val_acc.append(acc)
        if acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = acc, self.current_epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def configure_optimizers(self) -> Any:
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        params = [
            {"params": [p for n, p in self.model.named_parameters() if not n.endswith(no_decay)],
             "weight_decay": self.cfg.weight_decay},
            {"params": [p for n, p in self.model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lr)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.cfg.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


@dataclass
class TrainedClassifier:
    module: ClassifierModule
    tokenizer: Any
    task: Task
    cfg: SmallModelConfig
    train_seconds: float
    examples_per_second: float
    best_epoch: int
    epoch_val_acc: list[float]

    def predict_proba(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Class probabilities, one row per input row, in input order."""
        dataset = EncodedDataset(rows, self.task, self.tokenizer, self.cfg.max_length)
        loader = eval_loader(dataset, self.tokenizer, self.cfg.eval_batch_size)
        model = self.module.model.eval()
        device = next(model.parameters()).device
        out = np.zeros((len(rows), self.module.num_labels), dtype=np.float32)
        batches = loader.batch_sampler
        use_bf16 = self.cfg.precision.startswith("bf16")
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for idx, batch in zip(batches, loader):
                batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                out[idx] = torch.softmax(model(**batch).logits.float(), -1).cpu().numpy()
        return out


def scores(probs: np.ndarray, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Accuracy and macro-F1 (torchmetrics) of argmax predictions against the rows' gold labels."""
    preds = torch.as_tensor(probs.argmax(-1))
    labels = torch.as_tensor([r["label"] for r in rows])
    k = probs.shape[1]
    return {"acc": multiclass_accuracy(preds, labels, k, average="micro").item(),
            "f1": multiclass_f1_score(preds, labels, k, average="macro").item()}


def train_classifier(train_rows: Sequence[dict[str, Any]], val_rows: Sequence[dict[str, Any]], task: Task,
                     cfg: SmallModelConfig, seed: int, progress: bool = True) -> TrainedClassifier:
    """Fresh model from the pretrained checkpoint, trained on ``train_rows``, best epoch by ``val_rows``."""
    if not train_rows:
        raise ValueError("train_classifier: no training rows (did synthesis produce any usable examples?)")
    pl.seed_everything(seed, workers=True, verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    module = ClassifierModule(cfg, num_labels=len(task.labels))
    train_set = EncodedDataset(train_rows, task, tokenizer, cfg.max_length)
    val_set = EncodedDataset(val_rows, task, tokenizer, cfg.max_length)
    if cfg.pad_to_max_length:
        collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=cfg.max_length)
    else:
        collate = DataCollatorWithPadding(tokenizer)
    train_loader = DataLoader(train_set, collate_fn=collate, batch_sampler=BucketBatchSampler(
        train_set.lengths, cfg.batch_size, 1 if cfg.pad_to_max_length else cfg.bucket_size, seed))
    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs, precision=cfg.precision, accelerator="auto", devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, deterministic=False)
    start = time.perf_counter()
    trainer.fit(module, train_loader, eval_loader(val_set, tokenizer, cfg.eval_batch_size))
    seconds = time.perf_counter() - start
    module.restore_best()
    log.info("trained %s on %d rows: best epoch %d, val acc per epoch %s (%.1fs)", cfg.name, len(train_rows),
             module.best_epoch, [round(a, 4) for a in module.epoch_val_acc], seconds)
    return TrainedClassifier(module=module, tokenizer=tokenizer, task=task, cfg=cfg, train_seconds=seconds,
                             examples_per_second=len(train_rows) * cfg.max_epochs / seconds,
                             best_epoch=module.best_epoch, epoch_val_acc=list(module.epoch_val_acc))
