"""Config plumbing shared by ``run.py``, the tests and the benchmarks: resolvers and user-facing errors."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
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


def swept_keys(overrides: Sequence[str]) -> set[str]:
    """The keys a multirun sweeps over (``a=1,2``, ``range(...)``, ...), as Hydra parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {
        o.get_key_element() for o in OverridesParser.create().parse_overrides(list(overrides)) if o.is_sweep_override()
    }


def variant_of(overrides: Sequence[str], swept: set[str] | None) -> str:
    """``overrides`` minus task, loop and seed, and minus those not swept (when ``swept`` is known)."""
    keep = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if key.lstrip("+~") in ("task", "loop", "seed") or (swept is not None and key not in swept):
            continue
        keep.append(override.lstrip("+"))
    return ",".join(sorted(keep))


def sweep_variant(sweep_dir: str, overrides: Sequence[str]) -> str:
    """``_<swept overrides>`` of one multirun job (``_loop.per_error=2``), for its dir name; empty when its sweep
    varies nothing beyond task, loop and seed, or is not one whose sweep Hydra records (``multirun.yaml``)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return ""
    variant = variant_of(list(overrides), swept_keys(OmegaConf.load(path).hydra.overrides.task))
    return "_" + re.sub(r"[^\w.=,+-]", "-", variant)[:120] if variant else ""


if not OmegaConf.has_resolver("s3_sweep_variant"):
    OmegaConf.register_new_resolver("s3_sweep_variant", sweep_variant)


SECRET_MARKERS = ("key", "token", "secret", "password")
URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")  # user:password@ or a bare token@ before the host


def is_secret_key(key: str) -> bool:
    k = key.lower()
    # `api_key_env` names an environment variable, not the secret itself; `max_tokens` and the like are counts
    return any(m in k for m in SECRET_MARKERS) and not k.endswith(("_env", "tokens"))


def refuse_secret_overrides(overrides: list[str]) -> None:
    """Secrets given as command-line overrides end up in shell history and in every file Hydra writes
    (``.hydra/``, ``multirun.yaml``); refuse them, pointing to the environment-variable way."""
    for arg in overrides:
        key, sep, value = arg.partition("=")
        name = key.rsplit(".", 1)[-1].lstrip("+~")
        numeric = value.replace(".", "", 1).lstrip("-").isdigit()
        if sep and ((is_secret_key(name) and value and not numeric) or URL_CREDENTIALS.search(value)):
            raise UserError(
                f"{key}=... looks like a secret on the command line; it would be written to .hydra/ and shell "
                "history. Put it in an environment variable instead (llm=openai reads the one named by "
                "llm.api_key_env; W&B reads WANDB_API_KEY; the Hub reads HF_TOKEN)"
            )


def check_overrides(args: list[str]) -> None:
    """A single run's command line composed and its settings checked before Hydra writes anything (an unknown
    option, a wrong type, a value out of range): one ``UserError`` line instead of Hydra's multi-line report, and
    no run dir. Sweeps and Hydra flags (``-m``, ``--cfg``) are left to Hydra, which checks each job itself."""
    if any(a.startswith("-") for a in args):
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose_config(args)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(one_line(err)) from None
    from s3.classifier import small_model_config
    from s3.loop_config import loop_config

    loop = loop_config(cfg.loop)  # ranges: one UserError line each
    small_model_config(cfg.small_model)
    wants = (cfg.task.get("prompts") or {}).get("pair_context")
    if wants and getattr(loop, "pair_context", wants) != wants:  # e.g. the paper's RTE prompts: real premises only
        raise UserError(
            f"task {cfg.task.name}'s prompt set is written for loop.pair_context={wants}; add that override"
        )


def one_line(err: BaseException) -> str:
    """Hydra's composition error as one line: what failed, why (its cause), and the options there are."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    head = lines[0] if lines else type(err).__name__
    if "Available options" in str(err):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = [o for o in lines[start + 1 :] if not o.startswith(("Config search path", "provider="))]
        head += f" (options: {', '.join(o for o in options if not o.endswith('schema'))})"
    elif err.__cause__ is not None:
        head += f": {str(err.__cause__).strip().splitlines()[0]}"
    return head


def compose_config(overrides: list[str] | None = None):
    """The composed run config without running anything (tests, benchmarks, notebooks)."""
    from hydra import compose, initialize_config_dir

    import s3.classifier  # noqa: F401  (registers the small_model schema)
    import s3.gap  # noqa: F401  (registers the gap schema)
    import s3.loop_config  # noqa: F401  (registers the loop schemas)
    import s3.tracking  # noqa: F401  (registers the logger schema)
    from s3.schemas import register

    register()  # the task and llm schemas
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides or [])
