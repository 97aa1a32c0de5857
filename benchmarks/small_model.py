"""Does the small model learn from a few hundred real rows? Gold training, old recipe vs new, side by side.

    .venv/bin/python benchmarks/small_model.py [--settings sst2:300,rte:all] [--seeds 0,1,2,3,4]
        [--recipes old,new] [--recipe NAME=override,override ...]

Each (recipe, task, rows, seed) trains MiniLM on a stratified, seeded sample of the real train split, picks
the best epoch on the run's 200-row gold validation set (as every run does) and scores the test split.
Finished runs are kept in ``outputs/bench/small_model.jsonl`` and skipped on a re-run, so the benchmark can
be run in pieces. ``old`` is the recipe before per-encoder pooling ([CLS] head, batch 32, 4 epochs); ``new``
is whatever ``small_model=minilm`` composes to for the task now. ``--recipe`` adds probes (Hydra overrides
of ``small_model``). With ``--write`` the table goes into ``benchmarks/RESULTS.md``.
Last line: ``min_sst2_300=<lowest new-recipe test accuracy over seeds on SST-2 with 300 rows>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import command_line, write_section  # noqa: E402
from s3.classifier import SmallModelConfig, scores, small_model_config, train_classifier  # noqa: E402
from s3.config import compose_config  # noqa: E402
from s3.data import load_real_data, load_split, stratified_sample  # noqa: E402

DEFAULT_SETTINGS = "sst2:200,sst2:300,sst2:400,imdb:1000,rte:all,qnli:2000"
# The recipe before this benchmark existed: AutoModelForSequenceClassification's [CLS]-pooler head.
OLD = [
    "small_model.pooling=cls",
    "small_model.batch_size=32",
    "small_model.lr=1e-4",
    "small_model.max_epochs=4",
    "small_model.min_steps=0",
    "small_model.head_lr=null",
    "small_model.max_length=128",
    "small_model.head_init=random",
]
MAX_TEST = {"imdb": 2000, "qnli": 2000}  # the rest: the whole test split
CHANCE = 0.55  # "at chance": every task here is binary with a majority class of at most ~53%


def small_for(task_name: str, overrides: list[str]) -> SmallModelConfig:
    return small_model_config(compose_config([f"task={task_name}", "small_model=minilm", *overrides]).small_model)


def recipe_key(small: SmallModelConfig) -> str:
    """Finished runs are matched by the resolved settings, so a changed default is never mistaken for a done run."""
    return json.dumps(dataclasses.asdict(small), sort_keys=True)


def run_one(task_name: str, n: int | None, seed: int, small: SmallModelConfig, data_dir: str | None) -> dict:
    cfg = compose_config([f"task={task_name}", f"seed={seed}", *([f"paths.data_dir={data_dir}"] if data_dir else [])])
    task = instantiate(cfg.task)
    real = load_real_data(task, cfg.paths.data_dir, cfg.loop.num_gold_val, MAX_TEST.get(task_name), seed)
    train = stratified_sample(load_split(task, "train", cfg.paths.data_dir), n, seed)
    start = time.perf_counter()
    clf = train_classifier(train, real.gold_val, task, small, seed, progress=False)
    test = scores(clf.predict_proba(real.test), real.test)
    return {
        "test_acc": round(test["acc"], 4),
        "val_acc": round(max(clf.epoch_val_acc), 4),
        "epochs": len(clf.history),
        "best_epoch": clf.best_epoch,
        "pooling": clf.pooling,
        "n_train": len(train),
        "n_test": len(real.test),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="task:rows,... (rows 'all' = the whole split)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--recipes", default="old,new", help="which of old, new and the --recipe probes to run")
    ap.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="a probe: NAME=small_model.lr=5e-5,small_model.batch_size=8",
    )
    ap.add_argument("--results", default="outputs/bench/small_model.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--write", action="store_true", help="put the table into benchmarks/RESULTS.md")
    ap.add_argument("--no-run", action="store_true", help="only tabulate the finished runs")
    ap.add_argument("--section", default="small_model", help="the RESULTS.md section --write fills (a probe: its own)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    recipes: dict[str, list[str]] = {"old": OLD, "new": []}
    for spec in args.recipe:
        name, _, overrides = spec.partition("=")
        recipes[name] = [o if o.startswith("small_model.") else f"small_model.{o}" for o in overrides.split(",") if o]
    chosen = args.recipes.split(",")
    unknown = [r for r in chosen if r not in recipes]
    if unknown:
        sys.exit(f"error: unknown recipe(s) {unknown}; define them with --recipe NAME=overrides")
    settings = []
    for s in args.settings.split(","):
        task, _, rows = s.partition(":")
        settings.append((task, None if rows in ("all", "") else int(rows)))
    seeds = [int(s) for s in args.seeds.split(",")]

    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done[(r["small"], r["task"], r["rows"], r["seed"])] = r
    keys = {(recipe, task): recipe_key(small_for(task, recipes[recipe])) for recipe in chosen for task, _ in settings}
    for recipe in chosen:
        for task, n in settings:
            for seed in seeds:
                key = (keys[recipe, task], task, n, seed)
                if key in done or args.no_run:
                    continue
                small = small_for(task, recipes[recipe])
                result = {
                    "recipe": recipe,
                    "overrides": " ".join(recipes[recipe]),
                    "task": task,
                    "rows": n,
                    "seed": seed,
                    "small": key[0],
                    **run_one(task, n, seed, small, args.data_dir),
                }
                print(json.dumps(result), flush=True)
                with path.open("a") as fh:
                    fh.write(json.dumps(result) + "\n")
                done[key] = result

    header = "| recipe | task | rows | test acc (mean ± std) | min | runs | epochs | s/run |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for task, n in settings:
        for recipe in chosen:
            runs = [
                done[k] for k in done if k[0] == keys[recipe, task] and k[1] == task and k[2] == n and k[3] in seeds
            ]
            if not runs:
                continue
            accs = [100 * r["test_acc"] for r in runs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            flag = " (chance)" if min(accs) < 100 * CHANCE else ""
            lines.append(
                f"| {recipe} | {task} | {n or 'all'} | {statistics.mean(accs):.1f} ± {sd:.1f} | "
                f"{min(accs):.1f}{flag} | {len(runs)} | {statistics.mean(r['epochs'] for r in runs):.0f} | "
                f"{statistics.mean(r['seconds'] for r in runs):.0f} |"
            )
    table = "\n".join(lines)
    print(table)
    new_key = recipe_key(small_for("sst2", []))
    new_300 = [
        done[k]["test_acc"] for k in done if k[0] == new_key and k[1] == "sst2" and k[2] == 300 and k[3] in seeds
    ]
    if args.write:
        recipe_text = "\n".join(
            f"- `{name}`: {' '.join(recipes[name]) or 'conf/small_model/minilm.yaml as composed'}" for name in chosen
        )
        notes = (
            "all-MiniLM-L6-v2 trained on a stratified, seeded sample of the real train split; best epoch on "
            "the run's 200-row gold validation set; test rows: SST-2 1,821 (all), IMDb 2,000 of 25,000, "
            "RTE 277 (all), QNLI 2,000 of 5,463. Runs are made in pieces (finished ones are kept in "
            f"`{args.results}` and skipped), so the commit is the one that wrote this table. "
            f"`(chance)`: a run below {100 * CHANCE:.0f}%. s/run includes loading and scoring."
        )
        write_section(
            args.section,
            "Small model on gold data: `benchmarks/small_model.py`",
            command_line(),
            f"{notes}\n\n{recipe_text}\n\n{table}",
        )
    print(f"min_sst2_300={min(new_300) * 100 if new_300 else math.nan:.1f}")


if __name__ == "__main__":
    main()
