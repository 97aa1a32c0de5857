"""Which pair-task prompts give rows that survive the checks? QNLI and RTE, one ZeroGen-style seed attempt each.

For each task and setting, ``--rows`` prompts (balanced over the labels) go to the LLM once, and each answer goes
through the loop's own synthesizer and checks (parsing, the cleaning chain, the declared formats, the gold label
check): the table gives answers, rows kept, the kept share and the largest drop reasons. Settings:
- **ours, both fields** (``loop.pair_context=llm``): the LLM invents the premise / sentence too;
- **ours / paper, real contexts** (``loop.pair_context=train``): a real premise or sentence from the train split,
  the LLM writes the other field; our prompts (``conf/prompts/pair.yaml``) or the paper's Table 1
  (``prompts@task.prompts=paper_<task>``), each as a plain chat turn and with the answer started by the field's
  label and ended at its line (``answer_start_given``).
Last line: started_minus_plain_kept=<kept share of ours with started answers minus ours plain, in points,
averaged over the tasks>.

    .venv/bin/python benchmarks/pair_prompts.py [--tasks qnli,rte] [--rows 100] [--llm smollm2] [--write]
"""

from __future__ import annotations

import argparse
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

PLAIN = "task.prompts.answer_start_given=''"
SETTINGS = {  # name -> overrides
    "ours, both fields": ["loop.pair_context=llm"],
    "ours, real contexts, plain turn": ["loop.pair_context=train", PLAIN],
    "ours, real contexts, started answer": ["loop.pair_context=train"],
    "paper, real contexts, plain turn": ["loop.pair_context=train", "prompts@task.prompts=paper_{task}", PLAIN],
    "paper, real contexts, started answer": ["loop.pair_context=train", "prompts@task.prompts=paper_{task}"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="qnli,rte")
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--llm", default="smollm2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    llm = load_llm(compose_config([f"llm={args.llm}"]))
    report = [
        f"One ZeroGen-style attempt of {args.rows} prompts per setting, llm={args.llm}, seed {args.seed}; kept = "
        "through the loop's parsing and checks (gold label check included).\n",
        "| task | setting | answers | kept | kept share | largest drops |",
        "|---|---|---|---|---|---|",
    ]
    shares: dict[tuple[str, str], float] = {}
    for task_name in args.tasks.split(","):
        for name, overrides in SETTINGS.items():
            cfg = compose_config(
                [
                    f"task={task_name}",
                    f"llm={args.llm}",
                    "loop=zerogen",
                    f"seed={args.seed}",
                    "loop.max_attempts=1",
                    "loop.overgenerate=1",
                    *(o.format(task=task_name) for o in overrides),
                ]
            )
            task, loop = instantiate(cfg.task), loop_config(cfg.loop)
            real = run_data(cfg, loop, task, need_train=loop.pair_context == "train")
            synth, _ = make_synthesizer(cfg, loop, task, real, llm)
            batch = synth.seed_set(args.rows, "zerogen", round_=0)
            shares[(task_name, name)], row = kept_row(task_name, name, batch)
            report.append(row)
            print(row, flush=True)
    llm.close()
    tasks = args.tasks.split(",")
    gain = statistics.mean(
        100 * (shares[(t, "ours, real contexts, started answer")] - shares[(t, "ours, real contexts, plain turn")])
        for t in tasks
    )
    report.append(f"\n{time.perf_counter() - start:.0f} s\n\nstarted_minus_plain_kept={gain:.1f}")
    print("\n".join(report[-1:]))
    if args.write:
        write_section("pair_prompts", "Pair-task prompts: `benchmarks/pair_prompts.py`",
                      command_line(), "\n".join(report))  # fmt: skip


if __name__ == "__main__":
    main()
