"""Does the kind check keep the right rows? Real rows, the LLM's seed answers and prose about a label, per task.

For each task, with the loop's own gold set (seed 0) and ``loop.kind_check_quantile``:
- **real kept**: held-out real test rows the kind check keeps (its threshold is meant to drop about the quantile);
- **seed flagged**: round-0 seed answers of the embedded LLM (S3's rationale prompts, through the text checks)
  that the kind check would drop, with a few of them printed to read, and whether a run keeps the check on (it
  turns itself off where it would drop most answers);
- **prose**: answers to "explain what makes a <kind> <label>" (the failure the check is for: prose about the
  label instead of an example), put where the LLM's field goes: dropped by the text rules (incl. the task's
  declared ``patterns``), then by the kind check, and kept.
Last line: kind_check_prose_kept=<share of prose answers that no check dropped, over all tasks>.

    .venv/bin/python benchmarks/kind_check.py [--tasks sst2,imdb,rte,qnli,custom_example] [--seed-rows 40] [--write]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path

from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results import command_line, write_section  # noqa: E402
from s3.config import REPO_ROOT, compose_config  # noqa: E402
from s3.data import load_real_data  # noqa: E402
from s3.filters import KindCheck, QualityRules, build_filter_chain  # noqa: E402
from s3.llm import ChatRequest, Sampling  # noqa: E402
from s3.loop import load_llm, sentence_embedder  # noqa: E402
from s3.loop_config import loop_config  # noqa: E402
from s3.pair_synthesis import PairContextSynthesizer  # noqa: E402
from s3.synthesis import Synthesizer  # noqa: E402

TASKS = {  # the settings each task runs with by default, plus what the benchmark needs to find its data
    "sst2": [],
    "imdb": [],
    "rte": [],
    "qnli": ["loop.pair_context=train"],
    "custom_example": [f"paths.data_dir={REPO_ROOT / 'tests' / 'data'}", "loop.num_gold_val=null"],  # 32 rows
}
PROSE = "In two sentences, explain what makes a {example_kind} {label}."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seed-rows", type=int, default=40, help="seed answers per task (after the text checks)")
    ap.add_argument("--prose", type=int, default=20, help="prose answers per label")
    ap.add_argument("--max-real", type=int, default=300)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    report = [
        f"embedded LLM (SmolLM2-135M), seed 0; the loop's gold set (200 rows, 150 learned from; the custom example's "
        f"validation split is smaller); real rows: up to {args.max_real} test rows; {args.seed_rows} seed answers "
        f"(rationale prompts, after the text checks); {args.prose} prose answers per label\n",
        "| task | gold rows | threshold | real kept | seed answers flagged | in a run | prose: text rules "
        "| prose: kind check | prose kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    examples, prose_kept, prose_total = [], 0, 0
    for name in args.tasks.split(","):
        cfg = compose_config([f"task={name}", "loop=s3", *TASKS[name]])
        task, L = instantiate(cfg.task), loop_config(cfg.loop)
        real = load_real_data(task, cfg.paths.data_dir, L.num_gold_val, args.max_real, 0, need_train=True,
                              selection_fraction=L.selection_fraction)  # fmt: skip
        on_context = task.is_pair and L.pair_context == "train"
        check = KindCheck(sentence_embedder(cfg), task, real.gold_val, L.kind_check_quantile,
                          field=task.written_field if on_context else None)  # fmt: skip
        real_kept = sum(check.of_kind(real.test)) / len(real.test)

        llm = load_llm(cfg)
        text_only = dataclasses.replace(L, kind_check=False, gold_check=False, label_check="none",
                                        min_source_similarity=0.0)  # fmt: skip
        chain = build_filter_chain(text_only, task, real.protected, llm=llm, gold_rows=real.gold_val)
        synth = (
            PairContextSynthesizer(llm, task, chain, text_only, 0, real.train or [])
            if on_context
            else Synthesizer(llm, task, chain, text_only, 0)
        )
        seed_rows = synth.seed_set(args.seed_rows, "rationale", round_=0, rationales=synth.rationales()).rows
        flags = check.of_kind(seed_rows)
        stays_on = copy.copy(check).keep(seed_rows) == flags  # False: it would drop most, so a run turns it off
        examples += [f"- {name}: {task.text_of(r)[:160]!r}" for r, ok in zip(seed_rows, flags) if not ok][:3]

        sampling = Sampling(n=args.prose, temperature=0.9, top_p=0.95, max_tokens=96, seed=0)
        requests = [
            ChatRequest.from_messages(
                [{"role": "user", "content": PROSE.format(example_kind=task.example_kind, label=label)}], sampling
            )
            for label in task.labels
        ]
        rows = []
        for k, completions in enumerate(llm.generate(requests, call_site="kind_check_prose")):
            for i, c in enumerate(completions):
                row = {"label": k, **{f: c.text.strip() for f in task.fields}}
                if on_context:  # the given field is a real text (a gold row's); the prose is in the one the LLM writes
                    row[task.given_field] = real.gold_val[i % len(real.gold_val)][task.given_field]
                rows.append(row)
        llm.close()
        rules = QualityRules(L.cleaning, task.fields, task.labels, [task.example_kind], task.patterns)
        past_rules, _ = rules.split(rows)
        past_kind = [r for r, ok in zip(past_rules, check.of_kind(past_rules)) if ok]
        prose_kept += len(past_kind)
        prose_total += len(rows)
        report.append(
            f"| {name} | {len(real.gold_val)} | {check.threshold:.3f} | {100 * real_kept:.1f}% | "
            f"{len(seed_rows) - sum(flags)} of {len(seed_rows)} | {'on' if stays_on else 'turns itself off'} | "
            f"{len(rows) - len(past_rules)} of {len(rows)} | "
            f"{len(past_rules) - len(past_kind)} | {len(past_kind)} |"
        )
        print(report[-1], flush=True)
    report += ["", "Seed answers the kind check flags (up to 3 per task):", "", *examples]
    report.append(f"\n{time.perf_counter() - start:.0f} s\n\nkind_check_prose_kept={prose_kept / prose_total:.3f}")
    print("\n".join(report[-(len(examples) + 4) :]))
    if args.write:
        write_section("kind_check", "Answers of the task's kind: `benchmarks/kind_check.py`",
                      command_line(), "\n".join(report))  # fmt: skip


if __name__ == "__main__":
    main()
