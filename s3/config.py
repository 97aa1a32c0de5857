"""Config plumbing shared by ``run.py``, the tests and the benchmarks: resolvers and user-facing errors."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]


class UserError(Exception):
    """Bad input from the user (data, config); shown as one line, without a traceback."""


def default_data_dir() -> str:
    """``$S3_DATA_DIR``, else ``../shared/data`` beside the repo when it exists, else ``data/``."""
    if os.environ.get("S3_DATA_DIR"):
        return os.environ["S3_DATA_DIR"]
    shared = REPO_ROOT.parent / "shared" / "data"
    return str(shared if shared.is_dir() else REPO_ROOT / "data")


if not OmegaConf.has_resolver("s3_default_data_dir"):
    OmegaConf.register_new_resolver("s3_default_data_dir", default_data_dir)


def compose_config(overrides: list[str] | None = None):
    """The composed run config without running anything (tests, benchmarks, notebooks)."""
    from hydra import compose, initialize_config_dir

    import s3.classifier  # noqa: F401  (registers the small_model schema)
    import s3.gap  # noqa: F401  (registers the gap schema)
    import s3.loop_config  # noqa: F401  (registers the loop schemas)
    import s3.tracking  # noqa: F401  (registers the logger schema)

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides or [])
