"""Which QA seed prompt gets questions out of the LLM, and which answer spans give usable rows? Answers only.

For --rows passages of the AdQA train split: the paper's Table 1 seed prompt and ours (``conf/prompts/qa.yaml``),
each with the passage's real answer (as the paper), then ours with each ``loop.answer_spans`` mode; each as a plain
chat turn and, where the backend continues a started answer, started as the loop starts it (``answer_start``). Every answer
goes through the question parser the loop uses (s3.qa_synthesis); the table counts what it makes of them.
Last line: ours_question_rate=<share of answers that became a question, ours as the loop asks>.

    .venv/bin/python benchmarks/qa_prompts.py [--rows 100] [--llm smollm2] [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results import command_line, write_section  # noqa: E402
from s3.config import compose_config  # noqa: E402
from s3.data import load_split  # noqa: E402
from s3.filters import FilterChain  # noqa: E402
from s3.llm import ChatRequest, Sampling  # noqa: E402
from s3.loop import load_llm  # noqa: E402
from s3.loop_config import loop_config  # noqa: E402
from s3.qa_synthesis import QASynthesizer, parse_question  # noqa: E402

PAPER_SEED = "Given a context: {context} \n{answer} is the answer to the following question:"  # Table 1, AdQA
OUTCOMES = ("question", "not_a_question", "answer_in_question", "boilerplate", "unparsable", "answer_not_span")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--llm", default="smollm2")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    cfg = compose_config(["task=adqa", f"llm={args.llm}"])
    task = instantiate(cfg.task)
    train = load_split(task, "train", cfg.paths.data_dir)
    llm = load_llm(cfg)
    report = [
        f"AdQA train passages, {args.rows} answers per setting, llm={args.llm}, temperature 0.9\n",
        f"| prompt | answer span | answer | {' | '.join(OUTCOMES)} |",
        "|---|---|---|" + "---|" * len(OUTCOMES),
    ]
    rates = {}
    started = task.prompts.get("answer_start", "") if llm.continues_answers else ""
    settings = [("paper", "train", ""), ("ours", "train", ""), ("ours", "candidates", ""), ("ours", "llm", "")]
    if started:  # the answer started as the loop starts it (conf/prompts/qa.yaml: answer_start, answer_stop)
        settings += [("paper", "train", started), ("ours", "train", started), ("ours", "candidates", started)]
    for prompt, spans, prefix in settings:
        loop = loop_config(compose_config(["task=adqa", "loop=zerogen", f"loop.answer_spans={spans}"]).loop)
        synth = QASynthesizer(llm, task, FilterChain([]), loop, 0, train)
        targets, missed = synth.answer_targets(args.rows, round_=0, attempt=0)
        template = PAPER_SEED if prompt == "paper" else task.prompts["seed"]
        stop = (task.prompts["answer_stop"],) if prefix and task.prompts.get("answer_stop") else ()
        requests = [
            ChatRequest.from_messages(
                [
                    {"role": "system", "content": task.prompts["system"]},
                    {"role": "user", "content": template.format(context=context, answer=answer)},
                    *([{"role": "assistant", "content": prefix}] if prefix else []),
                ],
                Sampling(n=1, temperature=0.9, top_p=0.95, max_tokens=task.max_tokens, seed=i, stop=stop),
            )
            for i, (context, _, answer) in enumerate(targets)
        ]
        counts: Counter = Counter(answer_not_span=missed)
        for (_, _, answer), completions in zip(targets, llm.generate(requests, call_site="qa_prompts")):
            parsed = parse_question(prefix + completions[0].text, answer)
            counts[parsed if parsed in OUTCOMES else "question"] += 1
        rates[(prompt, spans, prefix)] = counts["question"] / args.rows
        how = f"started ({prefix!r})" if prefix else "plain turn"
        report.append(f"| {prompt} | {spans} | {how} | {' | '.join(str(counts[o]) for o in OUTCOMES)} |")
        print(report[-1], flush=True)
    llm.close()
    report.append(
        f"\n{time.perf_counter() - start:.0f} s\n\nours_question_rate={rates[('ours', 'train', started)]:.2f}"
    )
    print("\n".join(report[-1:]))
    if args.write:
        write_section("qa_prompts", "QA seed prompts and answer spans: `benchmarks/qa_prompts.py`",
                      command_line(), "\n".join(report))  # fmt: skip


if __name__ == "__main__":
    main()
