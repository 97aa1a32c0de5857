"""The ``loop`` config group's schema: every default and its type, in one place.

``conf/loop/*.yaml`` are presets on top of these dataclasses (``defaults: [synthetic_schema, _self_]``), so a
wrong type or an unknown key fails when the config is composed, and a value out of range fails in
``loop_config`` before any data is read or any LLM is called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from s3.config import UserError
from s3.filters import CleaningConfig

SEED_PROMPTS = ("rationale", "zerogen", "goldgen")
LABEL_CHECKS = ("none", "choice", "channel", "auto")
ANSWER_SPANS = ("candidates", "llm", "train")
BUDGET_SPLITS = ("even", "greedy")
GOLD_SPLITS = ("validation", "train")
PAIR_CONTEXTS = ("llm", "train")
ONE_SHOT = ("zerogen", "goldgen", "s3_no_extrapolation")  # methods that are defined by having no feedback rounds


@dataclass
class SamplingConfig:
    """How each example is sampled from the LLM."""

    temperature: float = 0.9
    extrapolation_temperature: float | None = None  # error extrapolation's answers; None = temperature (cooler
    # answers drift off their source less but copy it more: benchmarks/extrapolation_prompts.py --temperatures)
    top_p: float = 0.95
    max_tokens: int = 160  # one example's length (the loop presets take task.max_tokens)


@dataclass
class LoopConfig:
    """What every method shares: how the real data is sampled for evaluation."""

    name: str
    num_gold_val: int | None = 200  # the small real validation set (stratified, seeded): every gold label a method
    # uses; None = the whole gold_split
    gold_split: str = "validation"  # where the gold set comes from: validation | train (the paper's D_gold(eval):
    # its whole train split, with num_gold_val=null; a synthetic method then trains on no real row either way)
    selection_fraction: float = 0.25  # of it held out (stratified) to choose the epoch and report select_acc;
    # S3 never learns from these rows (no prompt, no label check). 0 = the paper: one set for both
    max_test: int | None = None  # cap on the test split (CI speed); None = the full split

    def __post_init__(self) -> None:
        at_least(self, "num_gold_val", 1)
        one_of(self, "gold_split", GOLD_SPLITS)
        at_least(self, "max_test", 1)
        within(self, "selection_fraction", 0.0, 0.9)


@dataclass
class GoldLoopConfig(LoopConfig):
    """The human-annotated baseline: train on a stratified, seeded sample of the real train split."""

    name: str = "gold"
    gold_train_size: int | None = 2000  # None = the whole train split

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "gold_train_size", 1)
        if self.gold_split != "validation":  # it trains on the train split: its gold set must be other rows
            raise ValueError(
                f"loop=gold evaluates on the validation split; loop.gold_split={self.gold_split} is for synthetic loops"
            )


@dataclass
class SyntheticLoopConfig(LoopConfig):
    """S3 and the synthetic baselines (ZeroGen, GoldGen) and ablations, which are presets of it."""

    name: str = "s3"
    # round 0
    seed_prompt: str = "rationale"  # rationale (S3) | zerogen (label-conditioned) | goldgen (few-shot, gold rows)
    seed_size: int = 200  # round-0 examples, balanced across labels
    rationale_samples: int = 6  # LLM answers per rationale prompt (their items are pooled)
    rationale_max_tokens: int = 160  # room for a list of items
    max_example_chars: int | None = 2000  # real rows shown in prompts (errors, demonstrations) are cut to this;
    # metrics count the cuts (prompt_truncated). None = whole rows. QA: a window of the passage around the answer
    answer_spans: str = "candidates"  # extractive QA: where seed answers come from: candidates (the passage's
    # entity, number and content-word phrases) | llm (the LLM copies a phrase; kept only when it is a span) |
    # train (the train split's real answers for the passage, as the paper: annotations, though no questions)
    pair_context: str = "train"  # sentence-pair tasks: train = a real premise / passage from the train split (its
    # text only), the LLM writes the other field (the paper and ZeroGen) | llm = the LLM writes both fields (a task
    # without a train split)
    # error extrapolation
    rounds: int = 2  # extrapolation rounds after round 0 (the paper published two)
    per_error: int = 3  # new examples written from each misclassified validation example
    max_new_per_round: int | None = None  # cap on rows added per round
    balance_labels: bool = True  # split a round's rows evenly over the labels with errors (up to 2 x per_error
    # per error) instead of following the errors; false = the paper
    total_budget: int | None = None  # never train on more synthetic rows than this (equal-budget comparisons)
    budget_split: str = "even"  # with a total_budget: even = each extrapolation round may add at most the rows left
    # divided by the rounds left; greedy = as many as its errors ask for (round 1 can use up the budget)
    # checks on every LLM answer (each drop is counted under drop/<reason>)
    label_check: str = "auto"  # none | choice | channel | auto: drop rows whose label the LLM disagrees with;
    # choice re-labels, channel scores P(row | "write one <label> ..."),
    # auto = channel where the backend scores text, else choice
    label_check_margin: float = 1.0  # channel: drop when another label explains the row better by this (nats)
    gold_check: bool = True  # drop rows a logistic regression on sentence embeddings of the gold validation rows
    # puts in another label; false = the paper
    gold_check_min_accuracy: float = 0.6  # ...used only where its cross-validated accuracy reaches this
    gold_check_skip_misjudged: bool = False  # true: not on rows extrapolated from a gold row it gets wrong itself
    # (out of fold); measured worse on SST-2 (benchmarks/RESULTS.md, the skip_misjudged preset)
    min_source_similarity: float = 0.3  # extrapolated rows must be this similar (cosine) to their source; 0 = off
    kind_check: bool = False  # drop rows less like their nearest gold row than nearly every gold row is like its
    # own (prose about a label instead of an example of it); off by default (see docs/deviations.md), as the paper
    kind_check_quantile: float = 0.02  # ...the share of real rows that check would drop
    overgenerate: float = 1.2  # prompts per missing row: cleaning drops some
    max_attempts: int = 4  # re-asks (fresh seeds) while a seed label or a round is short of its rows
    free_llm_between_rounds: bool = False  # release the LLM (GPU memory) while the small model trains
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_tokens="${oc.select:task.max_tokens,160}")
    )  # type: ignore[arg-type]  # per task: one example's length
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "seed_prompt", SEED_PROMPTS)
        one_of(self, "label_check", LABEL_CHECKS)
        one_of(self, "answer_spans", ANSWER_SPANS)
        one_of(self, "budget_split", BUDGET_SPLITS)
        one_of(self, "pair_context", PAIR_CONTEXTS)
        for key in (
            "seed_size",
            "per_error",
            "rationale_samples",
            "rationale_max_tokens",
            "max_attempts",
            "max_example_chars",
            "max_new_per_round",
            "total_budget",
        ):
            at_least(self, key, 1)
        at_least(self, "rounds", 0)
        at_least(self.sampling, "extrapolation_temperature", 0.0, where="loop.sampling")
        if self.name in ONE_SHOT and self.rounds > 0:  # it would be reported under a name that says no feedback
            raise ValueError(
                f"loop={self.name} has no error extrapolation, so loop.rounds must be 0, got {self.rounds}; for "
                f"feedback rounds on its seed set use loop=s3 loop.seed_prompt={self.seed_prompt}"
            )
        at_least(self, "overgenerate", 1.0)
        for key in ("min_source_similarity", "gold_check_min_accuracy"):
            within(self, key, 0.0, 1.0)
        within(self, "kind_check_quantile", 0.0, 0.5)


def at_least(cfg: Any, key: str, low: float, where: str = "loop") -> None:
    value = getattr(cfg, key)
    if value is not None and value < low:
        raise ValueError(f"{where}.{key} must be >= {low}, got {value}")


def within(cfg: Any, key: str, low: float, high: float) -> None:
    value = getattr(cfg, key)
    if not low <= value <= high:
        raise ValueError(f"loop.{key} must be between {low} and {high}, got {value}")


def one_of(cfg: Any, key: str, allowed: tuple[str, ...]) -> None:
    if getattr(cfg, key) not in allowed:
        raise ValueError(f"loop.{key} must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")


def loop_config(node: Any) -> GoldLoopConfig | SyntheticLoopConfig:
    """The composed ``loop`` node as its checked dataclass; a value out of range is a one-line ``UserError``."""
    try:
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    except ValueError as err:
        raise UserError(str(err)) from None


ConfigStore.instance().store(group="loop", name="gold_schema", node=GoldLoopConfig)
ConfigStore.instance().store(group="loop", name="synthetic_schema", node=SyntheticLoopConfig)
