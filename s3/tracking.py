"""What a run leaves behind: atomic files in the Hydra run dir, and the same figures in W&B.

The run dir is the source of truth (``metrics.jsonl``, ``summary.json``, ``errors.jsonl``); W&B is a
mirror for dashboards and sweeps. Secrets never reach either: configs are redacted before logging.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from s3.atomic import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from s3.config import URL_CREDENTIALS, is_secret_key

log = logging.getLogger(__name__)

REDACTED = "***"


def redact(obj: Any) -> Any:
    """A copy of a plain (resolved) config with the value of every secret-looking key replaced (secrets are
    strings: a number under such a key is a count or a threshold and stays), and credentials in URLs hidden."""
    if isinstance(obj, Mapping):
        return {k: (REDACTED if is_secret_key(str(k)) and isinstance(v, str) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return URL_CREDENTIALS.sub(rf"\1{REDACTED}@", obj)
    return obj


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config, resolved and redacted: what is saved to ``config.yaml`` and sent to W&B."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


class RunRecorder:
    """Appends one JSON object per round to ``metrics.jsonl`` and mirrors it to W&B (when enabled).

    ``metrics.jsonl`` is rewritten whole (atomically) on each append, so a crash never leaves a torn line;
    it stays small (one line per round).
    """

    def __init__(self, run_dir: str | Path, wandb_run: Any = None, started: float | None = None):
        self.run_dir = Path(run_dir)
        self.wandb_run = wandb_run
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = read_jsonl(self.metrics_path) if self.metrics_path.exists() else []
        # a resumed run counts the time of the processes before it (up to their last logged round)
        self.prior_seconds = float(self.rows[-1].get("run_seconds", 0.0)) if self.rows else 0.0
        self.started = time.perf_counter() if started is None else started  # this process's start
        epochs_path = self.run_dir / "epochs.jsonl"
        self.epoch_rows: list[dict[str, Any]] = read_jsonl(epochs_path) if epochs_path.exists() else []

    def run_seconds(self) -> float:
        """Wall time of the run so far, across resumes."""
        return round(self.prior_seconds + time.perf_counter() - self.started, 2)

    def log_round(self, row: Mapping[str, Any]) -> None:
        row = {**row, "run_seconds": row.get("run_seconds", self.run_seconds())}
        self.rows = [r for r in self.rows if r.get("round") != row.get("round")] + [row]
        atomic_write_jsonl(self.metrics_path, self.rows)
        if self.wandb_run is not None:
            self.wandb_run.log(
                {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            )

    def log_tables(self, round_: int, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """Rows to read, as W&B Tables ``rows/round_<k>/<name>`` (logged with the round's metrics)."""
        if self.wandb_run is None:
            return
        import wandb

        logged = {}
        for name, rows in tables.items():
            columns = list(dict.fromkeys(k for row in rows for k in row))
            if columns:
                data = [[row.get(c) for c in columns] for row in rows]
                logged[f"rows/round_{round_}/{name}"] = wandb.Table(columns=columns, data=data)
        if logged:
            self.wandb_run.log(logged, commit=False)

    def log_epochs(self, round_: int, history: Sequence[Mapping[str, Any]]) -> None:
        """A round's training curve: ``epochs.jsonl`` in the run dir, and per round one W&B series of train loss
        and validation accuracy against the epoch (``epochs/round_<k>/...``)."""
        rows = [{"round": round_, **h} for h in history]
        self.epoch_rows = [r for r in self.epoch_rows if r.get("round") != round_] + rows
        atomic_write_jsonl(self.run_dir / "epochs.jsonl", self.epoch_rows)
        if self.wandb_run is not None:
            prefix = f"epochs/round_{round_}"
            keys = [k for k in ("train_loss", "val_acc", "val_em", "val_f1") if history and k in history[0]]
            for key in keys:
                self.wandb_run.define_metric(f"{prefix}/{key}", step_metric=f"{prefix}/epoch")
            for h in history:
                self.wandb_run.log({f"{prefix}/epoch": h["epoch"], **{f"{prefix}/{k}": h[k] for k in keys}})

    def log_model(self, folder: Path, name: str) -> None:
        """The saved classifier as a W&B model artifact (one version per round; the last one is the run's)."""
        if self.wandb_run is not None:
            import wandb

            artifact = wandb.Artifact(artifact_name(f"{self.wandb_run.name}-{name}"), type="model")
            artifact.add_dir(str(folder))
            self.wandb_run.log_artifact(artifact)

    def log_artifact(self, path: Path, name: str) -> None:
        """Each round's synthetic set as a W&B Artifact (versioned, downloadable from the dashboard)."""
        if self.wandb_run is not None:
            import wandb

            artifact = wandb.Artifact(artifact_name(f"{self.wandb_run.name}-{name}"), type="synthetic-data")
            artifact.add_file(str(path))
            self.wandb_run.log_artifact(artifact)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.run_dir / "summary.json", summary)
        if self.wandb_run is not None:
            for k, v in flatten(summary, sep="/").items():
                self.wandb_run.summary[k] = v


def flatten(d: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """``{"loop": {"rounds": 2}}`` -> ``{"loop.rounds": 2}`` (W&B summary keys use ``/``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, sep, f"{prefix}{k}{sep}"))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class LoggerConfig:
    """The ``logger`` group's schema. W&B runs offline unless ``mode`` or ``$WANDB_MODE`` says otherwise."""

    enabled: bool = True
    project: str = "s3"
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; None: $WANDB_MODE, else online under a sweep
    # agent, offline otherwise
    group: str | None = None  # None: the sweep folder in a multirun, else <task>-<loop>-<llm>
    tags: list[str] = field(default_factory=list)


ConfigStore.instance().store(group="logger", name="schema", node=LoggerConfig)


def artifact_name(text: str) -> str:
    """W&B artifact names allow letters, digits, dashes, underscores and dots."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def wandb_mode(configured: str | None) -> str:
    """``logger.mode``, else ``$WANDB_MODE``, else online under a W&B sweep agent (its runs must reach the server,
    or the sweep learns nothing), else offline."""
    return configured or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_SWEEP_ID") else "offline")


WANDB_RUN_ID = "wandb_run_id"  # in the run dir: a resumed run continues the same W&B run
RUN_ID_CHARS = string.ascii_lowercase + string.digits  # what W&B's own run ids are made of


def wandb_config(config: Mapping[str, Any], choices: Mapping[str, str]) -> dict[str, Any]:
    """The run config as W&B keeps it: the preset chosen in each config group (``loop: s3``), then every setting
    under its dotted key (``loop.rounds: 2``). Flat, because a W&B sweep agent writes its parameters over the
    config by key: a nested ``loop`` dict would be replaced by the swept ``loop: gold`` and lose every setting."""
    groups = {k: v for k, v in choices.items() if "/" not in k and not k.startswith("hydra") and v is not None}
    return {**groups, **flatten(config)}


def start_wandb(logger_cfg: DictConfig, config: dict[str, Any], run_dir: Path, name: str, group: str) -> Any:
    """One W&B run per run dir (mode: ``wandb_mode``); files inside the run dir. Its id is kept there, so a
    resumed run continues the same W&B run instead of starting one without the earlier rounds. ``config``: the
    flat :func:`wandb_config`."""
    import wandb

    os.environ["WANDB_MODE"] = wandb_mode(logger_cfg.get("mode"))
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_DIR"] = str(run_dir)  # offline runs land in <run_dir>/wandb/
    id_path = run_dir / WANDB_RUN_ID
    if id_path.is_file():
        run_id = id_path.read_text().strip()
    else:  # a sweep agent names the run it created for this job
        run_id = os.environ.get("WANDB_RUN_ID") or "".join(secrets.choice(RUN_ID_CHARS) for _ in range(8))
        atomic_write_text(id_path, run_id + "\n")
    run = wandb.init(
        id=run_id,
        resume="allow",
        project=logger_cfg.project,
        entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group") or group,
        name=name,
        job_type=config.get("loop.name"),
        tags=list(logger_cfg.get("tags") or []),
        config=config,
        dir=str(run_dir),
        reinit="finish_previous",
    )
    run.define_metric("round")
    run.define_metric("*", step_metric="round")
    return run
