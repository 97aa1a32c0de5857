"""Which error-extrapolation prompt gives rows that survive the checks? One attempt per prompt, same sources.

Error extrapolation keeps the smallest share of the LLM's answers in a default run (``make run``): its drops are
mostly ``off_source`` (the answer drifted from the example it was asked to be like), ``gold_disagree`` and
``leak`` (a copy of the example). For each task and prompt, the same ``--sources`` gold validation rows (a seeded
sample, balanced over the labels, standing in for a round's errors) each get ``loop.per_error`` answers, and every
answer goes through the loop's own synthesizer and checks (parsing, cleaning, leak guard, source similarity, gold
and LLM label checks). The table gives answers, rows kept, the kept share and the largest drop reasons.
Random rows are easier than a round's errors (rows the small model gets wrong, which the gold check often
misjudges too), so a prompt that keeps more here must still be checked in the loop: ``benchmarks/quality.py
--ablations`` with its preset (e.g. ``similar_extrapolation``); each run's round metrics hold answers and drops.

    .venv/bin/python benchmarks/extrapolation_prompts.py [--tasks sst2] [--sources 80] [--temperatures 0.9,0.7]
        [--llm smollm2] [--write]

Last line: best_minus_ours_kept=<kept share of the best prompt minus ours, in points, averaged over the tasks>.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results import command_line, kept_row, write_section  # noqa: E402
from s3.config import compose_config  # noqa: E402
from s3.loop import load_llm, make_synthesizer, run_data  # noqa: E402
from s3.loop_config import loop_config  # noqa: E402

PRESETS = {"paper-style": "similar_extrapolation"}  # name -> the conf/experiment preset that sets its template
PROMPTS = {  # name -> the extrapolate template (None: the task's own, conf/prompts/, or its preset's)
    "ours": None,
    "ours without opening quote": None,
    "paper-style": None,
    "same topic and stance": (
        'Here is a {example_kind} whose correct label is "{label}" ({label_description}):\n"{example}"\n'
        'Write one new {example_kind} that is also "{label}" and is about the same thing: keep its topic and what '
        "it says about it, but use your own words.\nOutput only the new {example_kind}, nothing else."
    ),
    "rewrite": (
        'Here is a {example_kind} whose correct label is "{label}" ({label_description}):\n"{example}"\n'
        "Rewrite it as a different {example_kind} by another writer: same topic, same opinion, different "
        "sentences.\nOutput only the new {example_kind}, nothing else."
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="sst2")
    ap.add_argument("--sources", type=int, default=80)
    ap.add_argument("--prompts", default=",".join(PROMPTS))
    ap.add_argument(
        "--temperatures", default=None, help="sampling temperatures to try, e.g. 0.9,0.7 (default: the loop's)"
    )
    ap.add_argument("--llm", default="smollm2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    names = args.prompts.split(",")
    unknown = sorted(set(names) - set(PROMPTS))
    if unknown:
        ap.error(f"unknown prompts {unknown}; known: {list(PROMPTS)}")
    llm = load_llm(compose_config([f"llm={args.llm}"]))
    report = [
        f"{args.sources} gold validation rows per task (seeded, balanced over labels) as sources, loop.per_error "
        f"answers each, one attempt, llm={args.llm}, seed {args.seed}; kept = through the loop's parsing and checks.\n",
        "| task | prompt | answers | kept | kept share | largest drops |",
        "|---|---|---|---|---|---|",
    ]
    shares: dict[tuple[str, str], float] = {}
    temperatures = args.temperatures.split(",") if args.temperatures else [None]
    variants = {(f"{n} @ T={t}" if t else n): (n, t) for n in names for t in temperatures}
    for task_name in args.tasks.split(","):
        for name, (prompt, temperature) in variants.items():
            preset = [f"+experiment={PRESETS[prompt]}"] if prompt in PRESETS else []
            cfg = compose_config([f"task={task_name}", f"llm={args.llm}", "loop=s3", f"seed={args.seed}", *preset])
            if temperature is not None:
                cfg.loop.sampling.extrapolation_temperature = float(temperature)
            if PROMPTS[prompt] is not None:
                cfg.task.prompts.extrapolate = PROMPTS[prompt]
            if prompt.endswith("without opening quote"):  # the LLM starts its answer freely (no opening quote)
                cfg.task.prompts.answer_start = cfg.task.prompts.answer_stop = ""
            task, loop = instantiate(cfg.task), loop_config(cfg.loop)
            real = run_data(cfg, loop, task, need_train=loop.pair_context == "train")
            synth, _ = make_synthesizer(cfg, loop, task, real, llm)
            sources = balanced_sample(real.gold_val, args.sources, args.seed)
            jobs = [synth.error_job(row) for row in sources]
            batch = synth.run_jobs(jobs, samples=loop.per_error, round_=1, call_site="extrapolate", attempt=0)
            shares[(task_name, name)], row = kept_row(task_name, name, batch, 4)
            report.append(row)
            print(row, flush=True)
    llm.close()
    tasks = args.tasks.split(",")
    best = max(variants, key=lambda n: statistics.mean(shares[(t, n)] for t in tasks))
    first = next(iter(variants))
    gain = statistics.mean(100 * (shares[(t, best)] - shares[(t, first)]) for t in tasks)
    report.append(f"\nbest: {best}; {time.perf_counter() - start:.0f} s\n\nbest_minus_ours_kept={gain:.1f}")
    print("\n".join(report[-1:]))
    if args.write:
        prompts = "\n".join(
            f"- `{n}`: {PROMPTS[n]!r}" if PROMPTS[n] else f"- `{n}`: the `{PRESETS[n]}` preset"
            for n in names
            if PROMPTS[n] or n in PRESETS
        )
        write_section("extrapolation_prompts", "Error-extrapolation prompts: `benchmarks/extrapolation_prompts.py`",
                      command_line(), prompts + "\n\n" + "\n".join(report))  # fmt: skip


def balanced_sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows, as even over the labels as the rows allow, in a seeded order."""
    rng = random.Random(seed)
    by_label: dict[int, list[dict]] = {}
    for row in rng.sample(rows, len(rows)):
        by_label.setdefault(row["label"], []).append(row)
    out: list[dict] = []
    while len(out) < min(n, len(rows)):
        for group in by_label.values():
            if group and len(out) < n:
                out.append(group.pop())
    return out


if __name__ == "__main__":
    main()
