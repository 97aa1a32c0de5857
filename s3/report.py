"""Offline report over finished runs: PNG plots + a markdown table, no W&B server needed.

    python -m s3.report multirun/2025-01-01/12-00-00 [more dirs...] [--out DIR]

A run dir is any folder containing both ``summary.json`` and ``metrics.jsonl`` (as written by run.py); the
inputs are searched recursively, so a Hydra multirun dir, a sweep's output root or single run dirs all work.
Runs are grouped by task (``summary["task"]``) and method (``summary["loop"]``); seeds are averaged. Runs of one
task and method whose configs differ in anything but the seed (and paths, logging) are kept apart, labelled by the
keys that differ (``s3 [loop.per_error=2]``), and the report says which keys those are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Preferred display order; anything else follows alphabetically.
TASK_ORDER = ("sst2", "imdb", "rte", "qnli", "adqa")
METHOD_ORDER = ("s3", "zerogen", "goldgen", "gold")
CURVE_PREFIXES = ("gap/", "gap_train/", "div/")
NOT_A_SETTING = ("seed", "verbose", "paths.", "logger.")  # config keys that do not make runs different methods


@dataclass
class Run:
    path: Path
    task: str
    method: str
    seed: int | None
    summary: dict
    rows: list[dict] = field(default_factory=list)


def _order(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    vals = set(values)
    return [v for v in preferred if v in vals] + sorted(vals - set(preferred))


def find_run_dirs(inputs: Sequence[str | Path]) -> list[Path]:
    """All run dirs under the inputs (each input may itself be one), deduplicated, sorted."""
    found: set[Path] = set()
    for root in map(Path, inputs):
        if not root.exists():
            raise FileNotFoundError(root)
        for summary in [root / "summary.json", *root.rglob("summary.json")]:
            if summary.is_file() and (summary.parent / "metrics.jsonl").is_file():
                found.add(summary.parent.resolve())
    return sorted(found)


def _config_fallback(run_dir: Path) -> dict:
    """task/loop/seed from config.yaml, for summaries written before those fields existed."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return {}
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(cfg_path)
    return {
        "task": OmegaConf.select(cfg, "task.name"),
        "loop": OmegaConf.select(cfg, "loop.name"),
        "seed": OmegaConf.select(cfg, "seed"),
    }


def load_run(run_dir: Path) -> Run:
    summary = json.loads((run_dir / "summary.json").read_text())
    if any(summary.get(k) is None for k in ("task", "loop", "seed")):
        for k, v in _config_fallback(run_dir).items():
            if summary.get(k) is None and v is not None:
                summary[k] = v
    rows = []
    for i, line in enumerate((run_dir / "metrics.jsonl").read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed mid-write leaves a truncated last line
            warnings.warn(f"{run_dir}/metrics.jsonl:{i + 1}: unparsable line skipped", stacklevel=2)
    seed = summary.get("seed")
    return Run(
        path=run_dir,
        task=str(summary.get("task", "?")),
        method=str(summary.get("loop", "?")) + (f" [{summary['variant']}]" if summary.get("variant") else ""),
        seed=int(seed) if seed is not None else None,
        summary=summary,
        rows=rows,
    )


def load_runs(inputs: Sequence[str | Path]) -> list[Run]:
    runs = [load_run(d) for d in find_run_dirs(inputs)]
    for run, label in zip(runs, setting_labels(runs)):
        if label:
            run.method = f"{run.summary.get('loop', '?')} [{label}]"
    return runs


def _settings(run: Run) -> dict[str, str] | None:
    """The run's config (``config.yaml``) as dotted keys -> values, without what does not define a method."""
    path = run.path / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    from s3.tracking import flatten

    flat = flatten(OmegaConf.to_container(OmegaConf.load(path)))  # type: ignore[arg-type]
    return {k: json.dumps(v) for k, v in flat.items() if not k.startswith(NOT_A_SETTING)}


def setting_labels(runs: Sequence[Run]) -> list[str]:
    """Per run, the settings in which it differs from other runs of its task and method (``key=value, ...``);
    empty where they all agree. Runs without a config.yaml keep their summary's ``variant``."""
    settings = [_settings(r) for r in runs]
    keys_by_group: dict[tuple[str, str], set[str]] = defaultdict(set)
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(runs):
        members[(r.task, str(r.summary.get("loop")))].append(i)
    for group, idx in members.items():
        known = [settings[i] for i in idx if settings[i] is not None]
        keys = set().union(*known) if known else set()
        keys_by_group[group] = {k for k in keys if len({s.get(k) for s in known}) > 1}  # type: ignore[union-attr]
    labels = []
    for i, r in enumerate(runs):
        keys, own = sorted(keys_by_group[(r.task, str(r.summary.get("loop")))]), settings[i]
        if own is None or not keys:
            labels.append(str(r.summary.get("variant") or ""))
        else:
            labels.append(", ".join(f"{k}={json.loads(own[k]) if k in own else None}" for k in keys))
    return labels


def _num(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def mean_std(values: Iterable[object]) -> tuple[float, float, int]:
    """Mean, sample std (0 for a single value) and count of the finite numbers among ``values``."""
    xs = [v for v in map(_num, values) if v is not None]
    if not xs:
        return math.nan, math.nan, 0
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0, len(xs)


def group_runs(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.task, r.method)].append(r)
    tasks = _order({t for t, _ in groups}, TASK_ORDER)
    methods = _order({m for _, m in groups}, METHOD_ORDER)
    return {(t, m): groups[(t, m)] for t in tasks for m in methods if (t, m) in groups}


def summary_table(runs: Sequence[Run]) -> list[dict]:
    """One row per (task, method): seed-aggregated final metrics from each run's summary.json."""
    table = []
    for (task, method), rs in group_runs(runs).items():
        row: dict = {"task": task, "method": method, "n_runs": len(rs)}
        row["qa"] = any("test_em" in r.summary for r in rs)  # extractive QA: EM / SQuAD F1 instead of accuracy
        for key in ("val_acc", "select_acc", "test_acc", "test_f1", "n_train", "select_em", "select_f1", "test_em"):
            row[key] = mean_std(r.summary.get(key) for r in rs)[:2]
        table.append(row)
    return table


def _pm(ms: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
    m, s = ms
    return "n/a" if math.isnan(m) else f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def markdown_table(table: Sequence[dict]) -> str:
    """Classification runs in one table (accuracy, macro-F1), extractive-QA runs in another (EM, SQuAD F1)."""
    out = []
    for qa, head, keys in (
        (False, "val acc (%) | select acc (%) | test acc (%) | test F1 (%)", ("val_acc", "select_acc", "test_acc", "test_f1")),
        (True, "select EM (%) | select F1 (%) | test EM (%) | test F1 (%)", ("select_em", "select_f1", "test_em", "test_f1")),
    ):  # fmt: skip
        rows = [row for row in table if row.get("qa", False) == qa]
        if not rows:
            continue
        lines = [f"| task | method | n runs | {head} | synthetic examples |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            n_train = row["n_train"][0]
            cells = " | ".join(_pm(row[k]) for k in keys)
            lines.append(
                f"| {row['task']} | {row['method']} | {row['n_runs']} | {cells} "
                f"| {'n/a' if math.isnan(n_train) else f'{n_train:.0f}'} |"
            )
        out.append("\n".join(lines))
    return "\n\n".join(out)


def round_curve(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-round mean and std over seeds of ``key``; rounds where no seed logged it are left out."""
    by_round: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for row in r.rows:
            v = _num(row.get(key))
            if v is not None and "round" in row:
                by_round[int(row["round"])].append(v)
    rounds = sorted(by_round)
    stats = [mean_std(by_round[k]) for k in rounds]
    return np.array(rounds), np.array([s[0] for s in stats]), np.array([s[1] for s in stats])


def curve_keys(runs: Sequence[Run]) -> list[str]:
    keys = {k for r in runs for row in r.rows for k in row if k.startswith(CURVE_PREFIXES)}
    return sorted(keys)


def _plot_curves(groups: dict[tuple[str, str], list[Run]], keys: Sequence[str], title: str, out: Path) -> None:
    """Grid: one row per task, one column per key, one line per method (±1 std band over seeds).

    A method with a single round (e.g. ``gold``) is drawn as a dashed horizontal reference line.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = _order({t for t, _ in groups}, TASK_ORDER)
    methods = _order({m for _, m in groups}, METHOD_ORDER)
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(
        len(tasks), len(keys), figsize=(4.2 * len(keys), 3.0 * len(tasks)), squeeze=False, sharex="row"
    )
    for ti, task in enumerate(tasks):
        for ki, key in enumerate(keys):
            ax = axes[ti][ki]
            curves = {m: round_curve(groups[(task, m)], key) for m in methods if (task, m) in groups}
            multi = [c[0] for c in curves.values() if len(c[0]) > 1]
            x_span = (min(x.min() for x in multi), max(x.max() for x in multi)) if multi else (0, 1)
            for m, (x, mean, std) in curves.items():
                if len(x) == 0:
                    continue
                if len(x) == 1:
                    ax.axhline(mean[0], color=colors[m], ls="--", label=m)
                    ax.axhspan(mean[0] - std[0], mean[0] + std[0], color=colors[m], alpha=0.1)
                else:
                    ax.plot(x, mean, marker="o", ms=3, color=colors[m], label=m)
                    ax.fill_between(x, mean - std, mean + std, color=colors[m], alpha=0.15)
            ax.set_xlim(x_span[0] - 0.2, x_span[1] + 0.2)
            ax.set_title(f"{task}: {key}", fontsize=9)
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ki == 0 and ti == 0:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_final(table: Sequence[dict], out: Path) -> None:
    """Grouped bars: final test accuracy (extractive QA: SQuAD F1) per task × method, error bars = std over seeds."""
    import matplotlib.pyplot as plt

    tasks = _order({r["task"] for r in table}, TASK_ORDER)
    methods = _order({r["method"] for r in table}, METHOD_ORDER)
    cell = {(r["task"], r["method"]): r["test_f1" if r.get("qa") else "test_acc"] for r in table}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(tasks) * max(1, len(methods) / 3), 3.6))
    for mi, m in enumerate(methods):
        xs = [ti + (mi - (len(methods) - 1) / 2) * width for ti, t in enumerate(tasks) if (t, m) in cell]
        ms = [cell[(t, m)] for t in tasks if (t, m) in cell]
        ax.bar(xs, [v[0] * 100 for v in ms], width, yerr=[v[1] * 100 for v in ms], capsize=3, label=m)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy; QA: F1 (%)")
    ax.set_title("Final test accuracy (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _slug(key: str) -> str:
    return key.replace("/", "_")


def differing_note(runs: Sequence[Run]) -> list[str]:
    """A line naming the settings that split runs of one method, when any do."""
    labelled = sorted({r.method for r in runs if "[" in r.method})
    if not labelled:
        return []
    return [f"Runs of one method with different settings are shown apart: {'; '.join(labelled)}.", ""]


def build_report(inputs: Sequence[str | Path], out_dir: str | Path | None = None) -> tuple[Path, str]:
    """Write ``report.md`` and PNGs into ``out_dir`` (default: the single input, or the inputs' common parent).

    Returns the report path and its markdown text.
    """
    import matplotlib

    matplotlib.use("Agg")
    runs = load_runs(inputs)
    if not runs:
        raise FileNotFoundError(f"no run dirs (summary.json + metrics.jsonl) under {list(map(str, inputs))}")
    if out_dir is None:
        paths = [Path(p).resolve() for p in inputs]
        out_dir = paths[0] if len(paths) == 1 and paths[0].is_dir() else Path(os.path.commonpath(paths))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    groups = group_runs(runs)
    table = summary_table(runs)
    images: list[tuple[str, str]] = []

    present = {k for r in runs for row in r.rows for k in row}
    acc_keys = [k for k in ("val_acc", "select_acc", "test_acc") if k in present]
    if "val_em" in present:  # extractive QA runs: their SQuAD F1 per round
        acc_keys += ["select_f1", "test_f1"]
    if acc_keys:
        _plot_curves(groups, acc_keys, "Accuracy per round (mean ± std over seeds)", out / "acc_per_round.png")
        images.append(("Accuracy per round", "acc_per_round.png"))
    _plot_final(table, out / "final_test_acc.png")
    images.append(("Final test accuracy", "final_test_acc.png"))
    for key in curve_keys(runs):
        name = f"{_slug(key)}.png"
        _plot_curves(groups, [key], f"{key} per round (mean ± std over seeds)", out / name)
        images.append((key, name))

    md = "\n".join(
        [
            "# S3 report",
            "",
            f"{len(runs)} runs from: {', '.join(map(str, inputs))}",
            "",
            markdown_table(table),
            "",
            *differing_note(runs),
            "Mean ± sample std over seeds of each run's final `summary.json`. "
            "*Synthetic examples* is the mean final `n_train` (for `gold`, the number of gold training examples).",
            "",
            *[f"## {title}\n\n![{title}]({name})\n" for title, name in images],
        ]
    )
    path = out / "report.md"
    path.write_text(md)
    return path, md


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m s3.report", description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="multirun dir(s) and/or run dir(s), searched recursively")
    ap.add_argument("--out", default=None, help="output dir (default: next to the inputs)")
    args = ap.parse_args(argv)
    try:
        path, md = build_report(args.inputs, args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(md)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
