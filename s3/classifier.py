"""The small model: a pretrained encoder with a classification head, trained with PyTorch Lightning.

Trains from scratch on every call (S3 retrains after each round), keeps the epoch with the best
gold-validation accuracy and restores it, as the paper's training script does. Batches are padded
dynamically and bucketed by length, which is where most of the speed comes from on short texts.

The head reads the encoder the way it was pre-trained to be read. A sentence-transformers checkpoint
(all-MiniLM-L6-v2) was trained on the mean of its token vectors and never shaped its [CLS] pooler, so a
[CLS] head starts from noise and, on a few hundred rows, often never leaves chance; a head on the mean
starts where the sentence embedding already separates the labels. BERT-style checkpoints (DistilBERT,
the paper's model) keep their own [CLS] head (``AutoModelForSequenceClassification``).

Sentence pairs with a mean-pooled head are read, by default (``small_model.pair_encoding=siamese``), each text
alone with the head on ``[u, v, |u - v|, u * v]`` of the two mean-pooled vectors (Sentence-BERT's
classification objective): a sentence-embedding checkpoint was trained on single texts, so that is how it
already tells related pairs from unrelated ones (``joint``: one sequence, ``text1 [SEP] text2``).

A trained classifier saves to a folder in Hugging Face layout (``config.json`` with the label names,
``model.safetensors``, the tokenizer) plus ``s3_classifier.json`` (pooling, fields, max length) and, for
mean pooling, ``head.safetensors``; ``Classifier.load`` reads it back bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)

from s3.atomic import atomic_dir
from s3.config import UserError
from s3.console import live_console
from s3.data import Task
from s3.embed import resolve_model
from s3.hardware import auto_device, autocast_bf16, training_precision

log = logging.getLogger(__name__)

POOLINGS = ("auto", "mean", "cls")
HEAD_INITS = ("random", "probe")
PAIR_ENCODINGS = ("joint", "siamese")
SECOND = "_b"  # siamese pairs: the second text's input keys end in this
META_FILE = "s3_classifier.json"
HEAD_FILE = "head.safetensors"


@dataclass
class SmallModelConfig:
    name: str
    model: str
    pooling: str = "auto"  # auto: mean for sentence-transformers checkpoints, else the model's own [CLS] head
    max_length: int = 256  # batches are padded to their longest row, so short-text tasks do not pay for it
    doc_stride: int = 64  # extractive QA: tokens shared by consecutive windows of a passage longer than max_length
    batch_size: int = 16
    eval_batch_size: int = 128
    lr: float = 1e-4
    head_lr: float | None = None  # the head's own learning rate; None = lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    dropout: float = 0.1  # before the mean-pooled head (a [CLS] head keeps its model's own dropout)
    head_init: str = "probe"  # probe: start the mean-pooled head from a logistic regression on the frozen
    # encoder's features of the training rows (linear probe, then fine-tune); random
    pair_encoding: str = "siamese"  # sentence pairs with mean pooling: siamese = each text alone, the head on
    # [u, v, |u-v|, u*v] (Sentence-BERT) | joint = one sequence; single-text tasks ignore it
    max_epochs: int = 4
    min_steps: int = 0  # train more epochs than max_epochs when a small set would take fewer optimizer steps
    precision: str = "auto"  # Lightning's; auto: bf16-mixed where the hardware has bf16 kernels (s3.hardware)
    bucket_size: int = 50  # batches per length bucket; 1 = plain shuffling
    pad_to_max_length: bool = False  # the official S3 script's fixed padding; only for comparisons
    save: bool = True  # the run keeps its best classifier in <run_dir>/model

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"small_model.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"small_model.head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        if self.pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"small_model.pair_encoding must be one of {PAIR_ENCODINGS}, got {self.pair_encoding!r}")

    def epochs_for(self, n_rows: int) -> int:
        """``max_epochs``, or more when that many epochs over ``n_rows`` rows fall short of ``min_steps``."""
        steps_per_epoch = max(1, math.ceil(n_rows / self.batch_size))
        return max(self.max_epochs, math.ceil(self.min_steps / steps_per_epoch))


def checkpoint_pooling(model_path: str) -> str:
    """How the checkpoint was trained to be read: ``mean`` when it is a sentence-transformers model whose
    pooling module averages tokens (its ``modules.json`` + ``1_Pooling/config.json``), else ``cls``."""

    def find(name: str) -> Path | None:
        local = Path(model_path) / name
        if Path(model_path).is_dir():
            return local if local.is_file() else None
        try:  # a Hub id: the file from the cache or the Hub; offline or missing means "not found"
            from transformers.utils import cached_file

            found = cached_file(
                model_path,
                name,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
            return Path(found) if found else None
        except Exception:
            return None

    modules = find("modules.json")
    if modules is None:
        return "cls"
    pooling_dirs = [m["path"] for m in json.loads(modules.read_text()) if str(m.get("type", "")).endswith("Pooling")]
    if not pooling_dirs:
        return "cls"
    pooling_cfg = find(f"{pooling_dirs[0]}/config.json")
    if pooling_cfg is None:
        return "cls"
    modes = json.loads(pooling_cfg.read_text())
    return "mean" if modes.get("pooling_mode_mean_tokens") else "cls"


class MeanPooledClassifier(nn.Module):
    """Encoder -> mean of the non-padding token vectors -> dropout -> linear layer. ``siamese``: the batch holds two
    texts per row (the second's inputs end in ``_b``) and the layer reads ``[u, v, |u - v|, u * v]``."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float, siamese: bool = False):
        super().__init__()
        self.encoder = encoder
        self.siamese = siamese
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size * (4 if siamese else 1), num_labels)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def features(self, **inputs: torch.Tensor) -> torch.Tensor:
        """What the linear layer reads."""
        if not self.siamese:
            return self.pool(**inputs)
        u = self.pool(**{k: v for k, v in inputs.items() if not k.endswith(SECOND)})
        v = self.pool(**{k.removesuffix(SECOND): v for k, v in inputs.items() if k.endswith(SECOND)})
        return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(**inputs)))


class ClsHeadClassifier(nn.Module):
    """The checkpoint's own sequence-classification head ([CLS] / pooler), as ``AutoModelForSequenceClassification``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**inputs).logits


def build_model(
    path: str, labels: Sequence[str], pooling: str, dropout: float = 0.1, siamese: bool = False
) -> nn.Module:
    """A classifier from a pretrained checkpoint (or a saved one: ``path`` may be a saved folder)."""
    names = {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
    if pooling == "mean":
        encoder = AutoModel.from_pretrained(path, **names)
        model: nn.Module = MeanPooledClassifier(encoder, len(labels), dropout, siamese)
    else:
        model = ClsHeadClassifier(
            AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels), **names)
        )
    # from_pretrained returns eval mode and Lightning keeps submodule modes: dropout would stay off.
    return model.train()


class EncodedDataset(Dataset):
    """Rows tokenized once, unpadded; the collator pads each batch to its own longest row. ``siamese``: a pair's
    two texts are tokenized apart (the second's keys end in ``_b``)."""

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        fields: Sequence[str],
        tokenizer: Any,
        max_length: int,
        siamese: bool = False,
    ):
        self.siamese = siamese
        columns = [[str(r[f]) for r in rows] for f in fields]
        if siamese:
            first, second = (tokenizer(c, truncation=True, max_length=max_length) for c in columns)
            self.features = [
                {**{k: first[k][i] for k in first.keys()}, **{k + SECOND: second[k][i] for k in second.keys()}}
                for i in range(len(rows))
            ]
        else:
            enc = tokenizer(*columns, truncation=True, max_length=max_length)
            self.features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(rows))]
        for feat, row in zip(self.features, rows):
            if "label" in row:
                feat["labels"] = int(row["label"])
        self.lengths = [len(f["input_ids"]) + len(f.get("input_ids" + SECOND, ())) for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


class PairPadding:
    """Pads a siamese batch's two texts apart, each with ``pad`` (a ``DataCollatorWithPadding``)."""

    def __init__(self, pad: DataCollatorWithPadding):
        self.pad = pad

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        first = self.pad([{k: v for k, v in f.items() if not k.endswith(SECOND)} for f in features])
        second = self.pad([{k.removesuffix(SECOND): v for k, v in f.items() if k.endswith(SECOND)} for f in features])
        return {**first, **{k + SECOND: v for k, v in second.items()}}


def collator(dataset: EncodedDataset, tokenizer: Any, max_length: int | None = None) -> Any:
    """Dynamic padding (to ``max_length`` when given: the official script's fixed padding), per text of a pair."""
    if max_length is None:
        pad = DataCollatorWithPadding(tokenizer)
    else:
        pad = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    return PairPadding(pad) if dataset.siamese else pad


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
            bucket = sorted(order[start : start + span], key=self.lengths.__getitem__)
            batches += [bucket[i : i + self.batch_size] for i in range(0, len(bucket), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def eval_loader(dataset: EncodedDataset, tokenizer: Any, batch_size: int) -> DataLoader:
    """Sorted by length (less padding); predictions are put back in row order by the caller."""
    order = sorted(range(len(dataset)), key=dataset.lengths.__getitem__)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collator(dataset, tokenizer))


@dataclass
class Classifier:
    """A trained (or reloaded) classifier: what predicts labels for rows of its task's fields."""

    model: nn.Module
    tokenizer: Any
    labels: list[str]
    fields: list[str]
    pooling: str
    max_length: int
    pair_encoding: str = "joint"
    eval_batch_size: int = 128
    precision: str = "auto"  # as trained (SmallModelConfig.precision)
    meta: dict[str, Any] = field(default_factory=dict)  # where it came from: task, base model, run

    def predict_proba(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Class probabilities, one row per input row, in input order."""
        dataset = EncodedDataset(rows, self.fields, self.tokenizer, self.max_length, self.siamese)
        loader = eval_loader(dataset, self.tokenizer, self.eval_batch_size)
        model = self.model.eval()
        device = next(model.parameters()).device
        out = np.zeros((len(rows), len(self.labels)), dtype=np.float32)
        use_bf16 = autocast_bf16(self.precision, device.type)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for idx, batch in zip(loader.batch_sampler, loader):
                batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                out[idx] = torch.softmax(model(**batch).float(), -1).cpu().numpy()
        return out

    @property
    def siamese(self) -> bool:
        return self.pair_encoding == "siamese"

    def save(self, out_dir: str | Path) -> Path:
        """Write the folder next to ``out_dir`` and rename it into place: it is all there or absent."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as partial:
            if isinstance(self.model, MeanPooledClassifier):
                self.model.encoder.save_pretrained(partial)
                save_file(
                    {k: v.contiguous() for k, v in self.model.classifier.state_dict().items()}, partial / HEAD_FILE
                )
            else:
                assert isinstance(self.model, ClsHeadClassifier)
                self.model.model.save_pretrained(partial)
            self.tokenizer.save_pretrained(partial)
            meta = {
                "pooling": self.pooling,
                "labels": self.labels,
                "fields": self.fields,
                "max_length": self.max_length,
                "pair_encoding": self.pair_encoding,
                "eval_batch_size": self.eval_batch_size,
                "precision": self.precision,
                **self.meta,
            }
            (partial / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out_dir

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        path = Path(path)
        meta = {"pair_encoding": "joint", **json.loads((path / META_FILE).read_text())}  # saved before pairs had one
        model = build_model(str(path), meta["labels"], meta["pooling"], siamese=meta["pair_encoding"] == "siamese")
        if isinstance(model, MeanPooledClassifier):
            model.classifier.load_state_dict(load_file(path / HEAD_FILE))
        known = ("pooling", "labels", "fields", "max_length", "pair_encoding", "eval_batch_size", "precision")
        return cls(
            model=model.eval(),
            tokenizer=AutoTokenizer.from_pretrained(path),
            meta={k: v for k, v in meta.items() if k not in known},
            **{k: meta[k] for k in known},
        )


@dataclass
class TrainedClassifier(Classifier):
    """A classifier with the record of its training: per-epoch loss and validation accuracy, best epoch."""

    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch

    @property
    def epoch_val_acc(self) -> list[float]:
        return [h["val_acc"] for h in self.history]


class ClassifierModule(pl.LightningModule):
    """AdamW + linear warm-up/decay; tracks gold-validation accuracy and keeps the best epoch's weights."""

    def __init__(self, cfg: SmallModelConfig, labels: Sequence[str], pooling: str, siamese: bool = False):
        super().__init__()
        self.cfg = cfg
        self.model = build_model(resolve_model(cfg.model), labels, pooling, cfg.dropout, siamese)
        self.num_labels = len(labels)
        self.best_val_acc = -1.0
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []
        self._losses: dict[int, list[float]] = defaultdict(list)
        self._val_preds: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{k: v for k, v in batch.items() if k != "labels"})

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch).float(), batch["labels"])
        self._losses[self.current_epoch].append(loss.item())
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
        losses = self._losses.get(self.current_epoch, [])
        self.history.append(
            {
                "epoch": self.current_epoch,
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "val_acc": acc,
                "steps": int(self.global_step),
            }
        )
        if acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = acc, self.current_epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def configure_optimizers(self) -> Any:
        return optimizer_and_schedule(
            self.model, self.cfg, self.trainer, head_prefixes=("classifier.", "pre_classifier.")
        )

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


def optimizer_and_schedule(
    model: nn.Module, cfg: SmallModelConfig, trainer: pl.Trainer, head_prefixes: Sequence[str]
) -> Any:
    """AdamW (no decay on biases and norms; the head at ``head_lr``) with linear warm-up and decay, per step."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = defaultdict(list)
    for name, param in model.named_parameters():
        is_head = any(name.startswith(p) or f".{p}" in name for p in head_prefixes)
        groups[(is_head, name.endswith(no_decay))].append(param)
    params = [
        {"params": p, "lr": head_lr if is_head else cfg.lr, "weight_decay": 0.0 if exempt else cfg.weight_decay}
        for (is_head, exempt), p in groups.items()
    ]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    total = int(trainer.estimated_stepping_batches)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lightning_trainer(cfg: SmallModelConfig, epochs: int, progress: bool) -> pl.Trainer:
    """The Trainer every small model uses: no logger or checkpoints (the module keeps its best epoch itself)."""
    return pl.Trainer(
        max_epochs=epochs,
        precision=training_precision(cfg.precision),
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress and live_console(),  # a log file gets no redrawn epoch bars
        num_sanity_val_steps=0,
        deterministic=False,
    )


def scores(probs: np.ndarray, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Accuracy and macro-F1 (torchmetrics) of argmax predictions against the rows' gold labels."""
    preds = torch.as_tensor(probs.argmax(-1))
    labels = torch.as_tensor([r["label"] for r in rows])
    k = probs.shape[1]
    return {
        "acc": multiclass_accuracy(preds, labels, k, average="micro").item(),
        "f1": multiclass_f1_score(preds, labels, k, average="macro").item(),
    }


def init_head_from_probe(model: MeanPooledClassifier, dataset: EncodedDataset, tokenizer: Any, seed: int) -> None:
    """Fit a logistic regression on the frozen encoder's features (what the head reads) and start the head from it, so
    fine-tuning begins where the sentence embedding already separates the labels (LP-FT, Kumar et al. 2022)."""
    from sklearn.linear_model import LogisticRegression

    loader = eval_loader(dataset, tokenizer, 64)
    feats = np.zeros((len(dataset), model.classifier.in_features), dtype=np.float32)
    labels = np.array([f["labels"] for f in dataset.features])
    device = torch.device(auto_device())
    model.to(device).eval()
    with torch.inference_mode():
        for idx, batch in zip(loader.batch_sampler, loader):
            feats[idx] = (
                model.features(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).float().cpu().numpy()
            )
    model.train()
    k = model.classifier.out_features
    present = np.unique(labels)
    if len(present) < 2:
        return  # nothing to separate: keep the random head
    probe = LogisticRegression(max_iter=2000, random_state=seed).fit(feats, labels)
    weight = np.zeros((k, feats.shape[1]), dtype=np.float32)
    bias = np.zeros(k, dtype=np.float32)
    if len(present) == 2:  # one logit difference: split it symmetrically over the two classes
        weight[present[1]], weight[present[0]] = probe.coef_[0] / 2, -probe.coef_[0] / 2
        bias[present[1]], bias[present[0]] = probe.intercept_[0] / 2, -probe.intercept_[0] / 2
    else:
        weight[present], bias[present] = probe.coef_, probe.intercept_
    bias[np.setdiff1d(np.arange(k), present)] = -10.0  # labels no training row has: never predicted at first
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(weight))
        model.classifier.bias.copy_(torch.from_numpy(bias))


def check_small_model(cfg: SmallModelConfig) -> None:
    """Pre-flight: the small model's config and tokenizer load (from disk, the Hub cache or the Hub), so a missing
    checkpoint is one line before the LLM has written anything, not a traceback after round 0."""
    try:
        path = resolve_model(cfg.model)
        AutoConfig.from_pretrained(path)
        AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, ModuleNotFoundError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"small_model={cfg.name}: cannot load {cfg.model!r} ({reason[:200]}); it needs the Hugging Face Hub or "
            "a local copy (small_model.model=/path/to/checkpoint), or use small_model=minilm, which ships offline"
        ) from None


def resolve_pooling(cfg: SmallModelConfig) -> str:
    return checkpoint_pooling(resolve_model(cfg.model)) if cfg.pooling == "auto" else cfg.pooling


def train_classifier(
    train_rows: Sequence[dict[str, Any]],
    val_rows: Sequence[dict[str, Any]],
    task: Task,
    cfg: SmallModelConfig,
    seed: int,
    progress: bool = True,
) -> TrainedClassifier:
    """Fresh model from the pretrained checkpoint, trained on ``train_rows``, best epoch by ``val_rows``."""
    if not train_rows:
        raise ValueError("train_classifier: no training rows (did synthesis produce any usable examples?)")
    pl.seed_everything(seed, workers=True, verbose=False)
    pooling = resolve_pooling(cfg)
    siamese = cfg.pair_encoding == "siamese" and len(task.fields) == 2
    if siamese and pooling != "mean":
        raise UserError(f"small_model.pair_encoding=siamese needs mean pooling; {cfg.model!r} has {pooling}")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    module = ClassifierModule(cfg, task.labels, pooling, siamese)
    train_set = EncodedDataset(train_rows, task.fields, tokenizer, cfg.max_length, siamese)
    val_set = EncodedDataset(val_rows, task.fields, tokenizer, cfg.max_length, siamese)
    train_loader = DataLoader(
        train_set,
        collate_fn=collator(train_set, tokenizer, cfg.max_length if cfg.pad_to_max_length else None),
        batch_sampler=BucketBatchSampler(
            train_set.lengths, cfg.batch_size, 1 if cfg.pad_to_max_length else cfg.bucket_size, seed
        ),
    )
    if cfg.head_init == "probe" and isinstance(module.model, MeanPooledClassifier):
        init_head_from_probe(module.model, train_set, tokenizer, seed)
    epochs = cfg.epochs_for(len(train_rows))
    trainer = lightning_trainer(cfg, epochs, progress)
    start = time.perf_counter()
    trainer.fit(module, train_loader, eval_loader(val_set, tokenizer, cfg.eval_batch_size))
    seconds = time.perf_counter() - start
    module.restore_best()
    log.info(
        "trained %s (%s pooling%s) on %d rows for %d epochs: best epoch %d, val acc per epoch %s (%.1fs)",
        cfg.name,
        pooling,
        ", siamese pairs" if siamese else "",
        len(train_rows),
        epochs,
        module.best_epoch,
        [round(h["val_acc"], 4) for h in module.history],
        seconds,
    )
    return TrainedClassifier(
        model=module.model,
        tokenizer=tokenizer,
        labels=list(task.labels),
        fields=list(task.fields),
        pooling=pooling,
        max_length=cfg.max_length,
        pair_encoding="siamese" if siamese else "joint",
        eval_batch_size=cfg.eval_batch_size,
        precision=training_precision(cfg.precision),
        meta={"task": task.name, "base_model": cfg.model, "small_model": cfg.name},
        train_seconds=seconds,
        examples_per_second=len(train_rows) * epochs / seconds,
        best_epoch=module.best_epoch,
        history=list(module.history),
    )


def small_model_config(node: Any) -> SmallModelConfig:
    """The composed ``small_model`` node as a checked ``SmallModelConfig``; a bad value is a one-line ``UserError``."""
    try:
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    except ValueError as err:
        raise UserError(str(err)) from None


# conf/small_model/*.yaml extend this schema: every default and its type live in SmallModelConfig above,
# and a wrong type or an unknown key fails at compose time.
ConfigStore.instance().store(group="small_model", name="schema", node=SmallModelConfig)
