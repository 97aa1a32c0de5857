"""Does S3 beat its baselines? SST-2 (or --task), embedded LLM, equal synthetic budget, several seeds.

Runs the harness itself (Hydra multiruns of run.py): `gold` (the same number of real examples), `zerogen`,
`goldgen` and `s3` at `--budget` synthetic examples each, for every seed; prints test accuracy mean ± std,
the per-round curve of s3, and (unless --skip-paper) our pipeline trained on the paper's published synthetic
data (IMDb, RTE) next to gold data of the same size. Last line: s3_minus_zerogen=<points>. Extractive QA
(``--task adqa``) reports SQuAD F1 (and EM) instead of accuracy, and the difference in F1 points. Re-running with the
same ``--out`` reuses finished multiruns, and runs recorded in the ledger (``benchmarks/runs.jsonl``, see
``benchmarks/ledger.py``) are restored instead of re-run, on any machine; with ``--write`` the report goes into
``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/quality.py [--seeds 0,1,2] [--budget 400] [--max-test 1000] [--ablations [KEYS]] [--skip-paper] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.ledger import LEDGER_HELP, Ledger, open_ledger, parsed_overrides  # noqa: E402
from benchmarks.results import command_line, write_section  # noqa: E402
from s3.classifier import SmallModelConfig, scores, small_model_config, train_classifier
from s3.config import REPO_ROOT, compose_config, default_data_dir
from s3.data import Task, load_real_data, load_split, stratified_sample
from s3.filters import Cleaner, CleaningConfig


def multirun(
    out: Path, overrides: list[str], seeds: list[str], jobs_per_seed: int, ledger: Ledger | None, run: bool = True
) -> None:
    """Hydra multiruns of run.py, one per seed in ``out/seed<k>``: a seed whose runs all finished (here or, restored
    from the ledger, on an earlier machine) is reused, and an interrupted one is re-run in its own dirs, where the
    harness resumes it (finished rounds, cached LLM answers). So a benchmark killed midway continues where it
    stopped. Finished runs go into the ledger. ``run=False`` only restores and records."""
    for seed in seeds:
        sweep_dir = out / f"seed{seed}"
        if ledger:
            ledger.restore(overrides, seed, sweep_dir)
        refuse_other_settings(sweep_dir, overrides)
        if len(list(sweep_dir.rglob("summary.json"))) >= jobs_per_seed:
            print(f"reusing {sweep_dir}", flush=True)
        elif run:
            cmd = [
                sys.executable,
                str(REPO_ROOT / "run.py"),
                "-m",
                *overrides,
                f"seed={seed}",
                f"hydra.sweep.dir={sweep_dir}",
            ]
            print("$", " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
        if ledger:
            ledger.record(overrides, seed, sweep_dir)


def refuse_other_settings(sweep_dir: Path, overrides: list[str]) -> None:
    """A finished run is reused only if it was made with these overrides (``--out`` holding another budget's or
    another extra's runs would otherwise fill this benchmark's cells, and its ledger, with them)."""
    want = parsed_overrides(overrides)
    for summary in sorted(sweep_dir.rglob("summary.json")):
        theirs = overrides_of(summary.parent)
        if theirs is not None and (made := parsed_overrides(theirs)) != want:
            diff = sorted({f"{k}={v}" for k, v in made.items()} ^ {f"{k}={v}" for k, v in want.items()})
            raise SystemExit(
                f"error: {summary.parent} holds a run made with other overrides (differing: {' '.join(diff)}); "
                "give this benchmark another --out, or remove that run"
            )


def overrides_of(job_dir: Path) -> list[str] | None:
    """The overrides a finished run was made with: Hydra's record of them (less the swept seed), or the ledger key
    it was restored under; None for a run from neither."""
    if (hydra_file := job_dir / ".hydra" / "overrides.yaml").is_file():
        return [o for o in yaml.safe_load(hydra_file.read_text()) or [] if not o.startswith("seed=")]
    if (ledger_key := job_dir / "ledger_key").is_file():
        return ledger_key.read_text().split()
    return None


def s3_budget(budget: int, seed_size: int, rounds: int) -> list[str]:
    """Equal budget: the seed set, then the rest split evenly over the extrapolation rounds, so that every round
    gets feedback (uncapped, round 1 alone would use up the budget whenever there are many errors)."""
    per_round = (budget - seed_size) // max(rounds, 1)
    return [
        f"loop.total_budget={budget}",
        f"loop.seed_size={seed_size}",
        f"loop.rounds={rounds}",
        f"loop.max_new_per_round={per_round}",
    ]


def common_overrides(task: str, max_test: int | None, extra: list[str]) -> list[str]:
    """What every run of a benchmark on ``task`` shares: no W&B, test rows capped at ``max_test``, ``extra``."""
    return [
        f"task={task}",
        "logger=none",
        "gap.vs_train=false",
        *extra,
        *([f"loop.max_test={max_test}"] if max_test else []),
    ]


def method_overrides(
    task: str,
    method: str,
    *,
    budget: int,
    seed_size: int,
    rounds: int,
    gold_rows: str | None,
    max_test: int | None,
    extra: list[str],
) -> list[str]:
    """The run.py overrides of one method's runs on one task, for this benchmark and ``paper_table.py`` alike (so
    the two share their runs in the ledger): ``gold`` on ``gold_rows`` real rows (``all``: the whole train split;
    default: ``budget``), ``s3`` at :func:`s3_budget`, any other method the whole budget in round 0."""
    common = common_overrides(task, max_test, extra)
    if method == "gold":
        return [*common, "loop=gold", f"loop.gold_train_size={'null' if gold_rows == 'all' else gold_rows or budget}"]
    if method == "s3":
        return [*common, "loop=s3", *s3_budget(budget, seed_size, rounds)]
    return [*common, f"loop={method}", f"loop.total_budget={budget}"]


EXPERIMENTS = REPO_ROOT / "conf" / "experiment"
ABLATIONS = sorted(
    p.stem for p in EXPERIMENTS.glob("*.yaml")
)  # conf/experiment/<key>.yaml: which part moves the number


def ablation(key: str, s3_args: list[str], budget: int) -> tuple[str, list[str]]:
    """A preset's label (its comment line) and its overrides: the s3 budget split, or the whole budget at once.
    The benchmark's s3 settings do not override what the preset itself sets (greedy_budget: no per-round cap)."""
    path = EXPERIMENTS / f"{key}.yaml"
    label = next(line[2:] for line in path.read_text().splitlines()[1:] if line.startswith("# "))
    own = {f"loop.{k}" for k in OmegaConf.load(path).get("loop", {})}
    rounds = compose_config([f"+experiment={key}"]).loop.rounds
    args = [a for a in s3_args if a.split("=")[0] not in own] if rounds > 0 else [f"loop.total_budget={budget}"]
    return label, [f"+experiment={key}", *args]


def mean_std(xs: list[float]) -> str:
    return f"{100 * statistics.mean(xs):5.1f} ± {100 * (statistics.stdev(xs) if len(xs) > 1 else 0.0):4.1f}"


def paper_synthetic(task_name: str, small_name: str, n_rows: int, max_test: int, seed: int) -> list[str]:
    """Our small-model pipeline on the authors' published synthetic data (cleaned), next to gold data."""
    cfg = compose_config([f"task={task_name}", f"small_model={small_name}"])
    task: Task = instantiate(cfg.task)
    small: SmallModelConfig = small_model_config(cfg.small_model)
    small = dataclasses.replace(small, max_length=256, max_epochs=2)
    data_dir = Path(default_data_dir())
    real = load_real_data(task, data_dir, 200, max_test, seed, need_train=True)
    rows = []
    for path in sorted((data_dir / "paper_synthetic" / task_name).glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cleaner = Cleaner(CleaningConfig(max_words=1000), task.fields, task.labels, real.gold_val + real.test)
    kept, drops = cleaner.filter([{**{f: r[f] for f in task.fields}, "label": r["label"]} for r in rows])
    lines = []
    for name, train in (
        ("paper synthetic (cleaned, sampled)", stratified_sample(kept, n_rows, seed)),
        ("gold (real train, sampled)", stratified_sample(load_split(task, "train", data_dir), n_rows, seed)),
    ):
        clf = train_classifier(train, real.gold_val, task, small, seed, progress=False)
        acc = scores(clf.predict_proba(real.test), real.test)["acc"]
        lines.append(f"| {task_name} | {name} | {len(train)} | {100 * acc:.1f} |")
        print(lines[-1], flush=True)
    print(f"  {task_name}: cleaning dropped {sum(drops.values())} of {len(rows)} rows: {dict(drops)}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=400)
    ap.add_argument("--seed-size", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--methods", default="gold,zerogen,goldgen,s3")
    ap.add_argument("--gold-rows", default=None, help="real train rows for `gold`: a number or all (default: --budget)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--extra", default="", help="more Hydra overrides for every run, space separated")
    ap.add_argument("--s3-extra", default="", help="more Hydra overrides for the s3 runs only (e.g. loop.per_error=2)")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument(
        "--ablations",
        nargs="?",
        const="all",
        default="",
        help="also run ablations, the conf/experiment presets: all (the default when given without a value) or a "
        f"comma list of {', '.join(ABLATIONS)}",
    )
    ap.add_argument("--paper-rows", type=int, default=1500, help="rows sampled from paper data and from gold")
    ap.add_argument("--section", default=None, help="the RESULTS.md section to write (default: quality_<task>)")
    ap.add_argument("--write", action="store_true", help="put the report into benchmarks/RESULTS.md")
    ap.add_argument("--ledger", default=None, help=LEDGER_HELP)
    args = ap.parse_args()
    ledger = open_ledger(args.ledger)

    s3_args = [*s3_budget(args.budget, args.seed_size, args.rounds), *args.s3_extra.split()]
    known = {key: ablation(key, s3_args, args.budget) for key in ABLATIONS}  # key -> (label, overrides)
    keys = list(known) if args.ablations == "all" else [k for k in args.ablations.split(",") if k]
    if unknown := set(keys) - set(known):
        ap.error(f"unknown ablations {sorted(unknown)}; known: {', '.join(known)} or all")
    ablations = dict(known[k] for k in keys)

    out = Path(args.out or REPO_ROOT / "outputs" / "bench_quality" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    settings = dict(
        budget=args.budget,
        seed_size=args.seed_size,
        rounds=args.rounds,
        gold_rows=args.gold_rows,
        max_test=args.max_test,
        extra=args.extra.split(),
    )
    common = common_overrides(args.task, args.max_test, args.extra.split())
    start = time.perf_counter()
    seeds = args.seeds.split(",")
    methods = args.methods.split(",")
    for method in methods:
        overrides = method_overrides(args.task, method, **settings)
        multirun(out / method, [*overrides, *(args.s3_extra.split() if method == "s3" else [])], seeds, 1, ledger)
    for key in keys:
        multirun(out / f"ablation_{key}", [*common, *known[key][1]], seeds, 1, ledger)

    # Classification: accuracy. Extractive QA (summaries with test_em): SQuAD F1, with EM beside it.
    summaries = [
        (p, json.loads(p.read_text()))
        for group in [*methods, *(f"ablation_{k}" for k in keys)]
        for seed in seeds
        for p in sorted((out / group / f"seed{seed}").rglob("summary.json"))
    ]
    qa = any("test_em" in summary for _, summary in summaries)
    metric, second, unit = ("f1", "em", "F1") if qa else ("acc", None, "acc")
    final: dict[str, list[float]] = defaultdict(list)
    final2: dict[str, list[float]] = defaultdict(list)  # QA: test EM
    val: dict[str, list[float]] = defaultdict(list)  # on the gold rows S3 learns from
    select: dict[str, list[float]] = defaultdict(list)  # on the held-out gold rows (absent when none are held out)
    curves: dict[int, list[float]] = defaultdict(list)
    sizes: dict[str, list[int]] = defaultdict(list)
    for summary_path, summary in summaries:
        group = summary_path.relative_to(out).parts[0]
        method = known[group.removeprefix("ablation_")][0] if group.startswith("ablation_") else summary["loop"]
        final[method].append(summary[f"test_{metric}"])
        if second:
            final2[method].append(summary[f"test_{second}"])
        val[method].append(summary[f"val_{metric}"])
        if f"select_{metric}" in summary:
            select[method].append(summary[f"select_{metric}"])
        sizes[method].append(summary["n_train"])
        if method == "s3":
            for line in (summary_path.parent / "metrics.jsonl").read_text().splitlines():
                row = json.loads(line)
                curves[row["round"]].append(row[f"test_{metric}"])

    report: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    say(
        f"{args.task}, budget {args.budget}, seeds {args.seeds}, test rows <= {args.max_test}, "
        f"{time.perf_counter() - start:.0f} s (finished multiruns are reused)"
        + (f"; {ledger.provenance()}" if ledger and ledger.used else "")
        + "\n"
    )
    em_head, em_rule = (" test EM |", "---|") if qa else ("", "")
    say(
        f"| method | test {unit} (mean ± std) |{em_head} val {unit} | select {unit} | train rows (mean) | runs | "
        f"test {unit} per seed |\n|---|---|{em_rule}---|---|---|---|---|"
    )
    for method in [*methods, *ablations]:
        if final[method]:
            per_seed = ", ".join(f"{100 * x:.1f}" for x in final[method])
            held_out = mean_std(select[method]) if select[method] else "n/a"
            em = f" {mean_std(final2[method])} |" if qa else ""
            say(
                f"| {method} | {mean_std(final[method])} |{em} {mean_std(val[method])} | {held_out} | "
                f"{statistics.mean(sizes[method]):.0f} | {len(final[method])} | {per_seed} |"
            )
    if args.task == "adqa":
        say(
            "\nAdQA here: the paper's 3,000-row AdQA test set split by passage; gold trains on its 1,093-row train "
            "split (the paper's: 30k rows)."
        )
    say(
        "\nval: the gold-validation rows S3 extrapolates from (an S3 run trains on rewrites of them, which flatters "
        "its val score); select: held-out rows nothing is written from."
    )
    say(
        f"\ns3 per round (test {unit} mean ± std): "
        + ", ".join(f"round {k}: {mean_std(v)}" for k, v in sorted(curves.items()))
    )
    if not args.skip_paper and not qa:
        say("\n| task | training data | rows | test acc |\n|---|---|---|---|")
        for task_name in ("imdb", "rte"):
            for line in paper_synthetic(task_name, "minilm", n_rows=args.paper_rows, max_test=args.max_test, seed=0):
                report.append(line)
    if final["s3"] and final["zerogen"]:
        gap = 100 * (statistics.mean(final["s3"]) - statistics.mean(final["zerogen"]))
        say(f"\ns3_minus_zerogen={gap:.2f}")
    if args.write:
        write_section(
            args.section or f"quality_{args.task}",
            f"S3 vs baselines on {args.task}: `benchmarks/quality.py`",
            command_line(),
            "\n".join(report),
        )


if __name__ == "__main__":
    main()
