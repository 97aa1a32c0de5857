"""Turn raw LLM answers into training examples: parsing, unframing, and the text tests the filters share.

With a small generator (SmolLM2-135M-Instruct) the S3 loop stands or falls on this step: the model wraps
examples in assistant chatter ("Sure! Here's a positive review: …"), refuses, repeats itself and sometimes
parrots the gold validation examples it was shown during error extrapolation. The paper's own published data
still contains refusals and duplicates, so every synthetic row goes through :func:`parse_examples` and then
the filter chain (``s3.filters``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------
# Normalization (the one definition used for dedup, leak and label checks)
# --------------------------------------------------------------------------------------------------

_HTML_TAG = re.compile(r"<\s*/?\s*[a-zA-Z]+\s*/?\s*>")
_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Lowercase, drop HTML tags (IMDb's ``<br />``), turn punctuation into spaces, collapse whitespace.

    Punctuation becomes a space rather than vanishing so that SST-2's PTB tokenisation ("it 's") and plain
    text ("it's") normalize to the same string.
    """
    return _NON_WORD.sub(" ", _HTML_TAG.sub(" ", text).lower()).strip()


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_ACK = r"(?:sure|certainly|of course|okay|ok|alright|absolutely|great|no problem)"
_META_NOUN = (
    r"(?:reviews?|sentences?|examples?|texts?|versions?|responses?|paraphrases?|rewrites?|hypothes[ie]s|"
    r"premises?|questions?|pairs?|outputs?|answers?|summar(?:y|ies)|one|ones|it)"
)
# "Sure!", "Certainly, I'd be happy to help." as a whole first sentence.
_LEAD_ACK = re.compile(
    rf"^\W*{_ACK}\b\s*(?:[!.]+|,?\s*(?:i(?:'d| would| can| will|'ll)|let me)\b[^.!:\n]*[.!:]+)\s*", re.I
)
# "Here is a positive movie review:", "Okay, here's one for you:", "Here are 5 sentences." (intro only).
_LEAD_HERE = re.compile(
    rf"^\W*(?:{_ACK}\b[\s,!.]*)?(?:here(?:'s| is| are)|below (?:is|are))\b"
    rf"(?:[^:\n]{{0,150}}:|[^.!\n]{{0,150}}\b{_META_NOUN}\b[^.!:\n]{{0,60}}(?:[.!]|\n|$))\s*",
    re.I,
)
_LEAD_LABEL_WORDS = (
    r"review|sentence|text|example|output|answer|response|paraphrase|rewrite|version|summary|"
    r"hypothesis|premise|question|passage|context"
)
_TRAILING_META = re.compile(
    r"(?:^|(?<=[.!?)\]\"'”])\s+|\n)\s*\(?\s*(?:"
    r"(?:this|the above|these|my)\s+(?:(?:new|rewritten|revised|positive|negative|movie|film)\s+)*"
    r"(?:reviews?|sentences?|examples?|texts?|responses?|paraphrases?|hypothes[ie]s|premises?|versions?|"
    r"rewrites?|pairs?)\s+(?:highlights?|captures?|emphasi[sz]es?|showcases?|conveys?|expresses?|reflects?|"
    r"uses?|maintains?|keeps?|demonstrates?|focus(?:es)?|describes?|shows?|provides?|is written|was written|"
    r"has been|follows?|meets?|adheres?|incorporates?|touches|mentions?|portrays?|effectively|successfully)"
    r"|(?:note|explanation|label|sentiment|word count|rationale|reasoning)\s*:"
    r"|i hope (?:this|these|you)|hope this helps|let me know|feel free|"
    r"i(?:'ve| have)? (?:written|rewritten|created|generated|rewrote|wrote)\b"
    r"|in this (?:(?:new|revised|rewritten|updated) )?(?:review|sentence|rewrite|version|example)\b"
    r").*\Z",
    re.I | re.S,
)
_WORD_COUNT = re.compile(r"\(\s*(?:word count|words?)\s*:?[^)]*\)", re.I)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+.*|\*\*[^*\n]+\*\*:?|__[^_\n]+__:?)\s*$")
_EMPHASIS = re.compile(r"(\*{1,3}|__)(?=\S)([^*\n]+?)(?<=\S)\1")
_FENCE_LINE = re.compile(r"^\s*```[\w-]*\s*$", re.M)
_QUOTES = {'"': '"', "“": "”", "'": "'", "«": "»", "„": "“", "‘": "’"}
_LIST_MARKER = re.compile(
    rf"^\s*(?:\d{{1,3}}\s*[.)]|\(\d{{1,3}}\)|[-*•–]|(?:[a-z]+\s+)?(?:{_LEAD_LABEL_WORDS}|item)\s*#?\d{{1,3}}\s*[:.)-])\s+",
    re.I,
)


def _label_prefix(extra_labels: Iterable[str]) -> re.Pattern[str]:
    """ "Review:", "Positive movie review:", "Sentence 1:" and the task's own field labels ("Premise:")."""
    words = "|".join([_LEAD_LABEL_WORDS, *(re.escape(x) for x in extra_labels)])
    return re.compile(rf"^\W*(?:[a-z'-]+\s+){{0,3}}?(?:{words})s?\s*#?\d{{0,3}}\s*\**\s*[:：]\s*\**\s*", re.I)


def _strip_quotes(text: str) -> str:
    """Remove quotes wrapping the whole text (RTE hypotheses in the paper data) or a lone dangling one."""
    while len(text) >= 2 and text[0] in _QUOTES:
        close = _QUOTES[text[0]]
        inner = text[1:-1]
        if text[-1] == close and close not in inner and text[0] not in inner:
            text = inner.strip()
        elif text.count(text[0]) + (text.count(close) if close != text[0] else 0) == 1:
            text = text[1:].strip()  # opening quote never closed
        else:
            break
    if (
        text
        and text[-1] in _QUOTES.values()
        and text.count(text[-1]) == 1
        and not any(q in text[:-1] for q, c in _QUOTES.items() if c == text[-1])
    ):
        text = text[:-1].strip()
    return text


# "Improved sentence: …", "New movie review sentence: …", "Output: …" on a later line: small models quote the
# example they were shown first and then label their own; the text after the last such marker is the new one.
_NEW_EXAMPLE_MARKER = re.compile(
    r"(?:^|\n)[^\S\n]*\W*(?:(?:new|improved|edited|revised|rewritten|updated|modified|alternative)(?: [a-z]+){0,3}? "
    rf"{_META_NOUN}|output(?: [a-z]+){{0,3}})\s*[:：]\W*?(?=\S)",
    re.I,
)


# A quoted span of an answer: opens after a space, colon or bracket and closes before a space or punctuation, so
# that quotes inside a span ('the "Solaris" remake') do not pair up across words.
_QUOTED = re.compile(r'(?:(?<=^)|(?<=[\s:(\[]))["“](?=\S)([^"“”\n]+?)(?<=\S)["”](?=$|[\s.,;:!?)\]])')
# Words of a frame around a quoted example ("The new sentence is "…"", "I'd suggest this: "…"").
_FRAME_CUE = re.compile(
    r":\s*\Z|\b(?:sentences?|rewrit\w*|rephras\w*|wording|version|original|examples?|alternatives?|suggest\w*|"
    r"edit\w*|instead|how about|feedback|(?:could|would|should|might) be|try|output|new|reviews?)\b",
    re.I,
)


_LINE_ENDING_IN_COLON = re.compile(r"^([^\n]*\S)[^\S\n]*:[^\S\n]*$", re.M)
_INTRO_CUE = re.compile(rf"{_FRAME_CUE.pattern}|\b(?:here|consider|say|similar|following|below|like)\b", re.I)


def _after_intro_line(text: str, max_intro_words: int = 25) -> str:
    """The paragraph after the last intro line ("A review that depicts it could be:", "Here is a similar sentence:").

    Only a line that ends in a colon, is short and names the task or the answer counts, and only when text follows.
    """
    intros = [
        m
        for m in _LINE_ENDING_IN_COLON.finditer(text)
        if len(m.group(1).split()) <= max_intro_words and _INTRO_CUE.search(m.group(1)) and text[m.end() :].strip()
    ]
    if not intros:
        return text
    return re.split(r"\n\s*\n", text[intros[-1].end() :].strip())[0]


def _unwrap_framed_quote(text: str, max_frame_words: int = 25) -> str:
    """The example inside talk about it: 'The new movie review is "…"', '"…"\n\nThis new version adds…'.

    Small LLMs often put their example in quotes inside a sentence about it; then the last quoted span of four or
    more words is the example, provided the rest is short (at most ``max_frame_words`` words, so a long review that
    quotes a line is left alone) and reads like a frame (a colon before the quote or a word about the task).
    Tested on real training text: no SST-2 or IMDb row changes (pair-task premises quote speech, so only
    single-text tasks use it).
    """
    spans = [m for m in _QUOTED.finditer(text) if len(m.group(1).split()) >= 4]
    if not spans:
        return text
    outside = text
    for m in reversed(spans):
        outside = outside[: m.start()] + " " + outside[m.end() :]
    if len(outside.split()) > max_frame_words or not _FRAME_CUE.search(outside):
        return text
    return spans[-1].group(1).strip()


def clean_text(text: str, extra_labels: Iterable[str] = (), unframe: bool = False) -> str:
    """Strip assistant framing around one example; returns "" when nothing but framing was there.

    ``unframe`` (single-text tasks): also take the example out of talk around it, after an intro line or out of a
    framed quote.
    """
    text = _FENCE_LINE.sub("", text).replace("\r", "")
    if unframe:
        text = _after_intro_line(text)
    markers = list(_NEW_EXAMPLE_MARKER.finditer(text))
    if markers and markers[-1].start() > 0:
        text = re.split(r"\n\s*\n", text[markers[-1].end() :].strip())[0]  # its paragraph; the rest is commentary
    lines = text.split("\n")
    if sum(1 for ln in lines if ln.strip()) > 1:  # a lone bold line is content, not a heading
        lines = [ln for ln in lines if not _HEADING.match(ln)]
    text = _EMPHASIS.sub(r"\2", "\n".join(lines)).strip()
    label_prefix = _label_prefix(extra_labels)
    previous = None
    while previous != text:  # prefixes stack: "Sure! Here it is:\n\nReview 1: …"
        previous = text
        for pattern in (_LEAD_ACK, _LEAD_HERE, label_prefix):
            text = pattern.sub("", text, count=1).strip()
        text = _strip_quotes(text)
    text = _WORD_COUNT.sub("", text)
    text = _TRAILING_META.sub("", text).strip()
    if unframe:
        text = _unwrap_framed_quote(text)
    return _strip_quotes(re.sub(r"[ \t]+", " ", text).strip())


def _split_items(raw: str) -> list[str]:
    """Split a list answer: marked items ("1.", "-", "Review 2:") if any, else paragraphs, else lines."""
    lines = raw.replace("\r", "").split("\n")
    if any(_LIST_MARKER.match(ln) for ln in lines):
        items: list[str] = []
        for ln in lines:  # text before the first marker is an intro; unmarked lines continue the item
            if _LIST_MARKER.match(ln):
                items.append(_LIST_MARKER.sub("", ln, count=1))
            elif items:
                items[-1] += "\n" + ln
        if items and not any(re.search(r"\n\s*\n", it.strip()) for it in items[:-1]):
            items[-1] = re.split(r"\n\s*\n", items[-1].strip())[0]  # one-paragraph items: the rest is an outro
        return items
    paragraphs = [p for p in re.split(r"\n\s*\n", raw) if p.strip()]
    return paragraphs if len(paragraphs) > 1 else [ln for ln in lines if ln.strip()]


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _json_values(raw: str) -> list[object]:
    """Every JSON object/array in the text: fenced blocks first, then any embedded in prose."""
    decoder = json.JSONDecoder()
    found: list[object] = []
    for block in re.findall(r"```(?:json)?\s*(.*?)```", raw, re.S | re.I):
        try:
            found.append(json.loads(block))
        except json.JSONDecodeError:
            pass
    if found:
        return found
    pos = 0
    while (match := re.compile(r"[\[{]").search(raw, pos)) is not None:
        try:
            value, end = decoder.raw_decode(raw, match.start())
        except json.JSONDecodeError:
            pos = match.start() + 1
            continue
        found.append(value)
        pos = end
    return found


def _json_records(raw: str, fields: Sequence[str], keys: Mapping[str, set[str]], labels: list[str]) -> list[dict]:
    records: list[dict[str, str]] = []
    stack = _json_values(raw)
    while stack:
        value = stack.pop(0)
        if isinstance(value, list):
            stack[:0] = value
        elif isinstance(value, dict):
            by_key = {_key(str(k)): v for k, v in value.items()}
            row = {}
            for field in fields:
                hit = next((by_key[k] for k in keys[field] if k in by_key), None)
                if isinstance(hit, (str, int, float)):
                    row[field] = clean_text(str(hit), labels)
            if all(row.get(f) for f in fields):
                records.append(row)
        elif isinstance(value, str) and len(fields) == 1 and clean_text(value, labels):
            records.append({fields[0]: clean_text(value, labels)})
    return records


def _labelled_records(raw: str, fields: Sequence[str], keys: Mapping[str, set[str]], labels: list[str]) -> list[dict]:
    """`Premise: …` / `Hypothesis: …` (also `"premise": "…",` from broken JSON), possibly repeated."""
    aliases = sorted({*fields, *labels}, key=len, reverse=True)
    field_of = {k: f for f in fields for k in keys[f]}
    marker = re.compile(
        rf"(?:^|(?<=[\s,;|{{]))[*_\"'`]*({'|'.join(map(re.escape, aliases))})\s*#?\d{{0,3}}[*_\"'`]*\s*[:=][*_]*[ \t]*",
        re.I | re.M,
    )
    matches = list(marker.finditer(raw))
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for m, nxt in zip(matches, [*matches[1:], None]):
        field = field_of[_key(m.group(1))]
        value = raw[m.end() : nxt.start() if nxt else len(raw)].strip().split("\n")[0]
        if field in current:  # a field seen twice starts the next record
            current = {}
        current[field] = clean_text(value.strip().rstrip(",;").strip(), labels)
        if all(current.get(f) for f in fields):
            records.append({f: current[f] for f in fields})
            current = {}
    return records


def parse_examples(
    raw: str, fields: Sequence[str], field_labels: Mapping[str, str], many: bool
) -> list[dict[str, str]] | None:
    """Examples found in one LLM answer, or None when nothing usable parses (the caller counts `unparsable`).

    Single-text tasks take the whole answer as one example (`many=False`, the first item if the model answered
    with a list anyway) or split a list answer into items (`many=True`). Pair tasks read JSON (fenced, embedded,
    a list of objects; keys matched case-insensitively to field names or their prose labels) and fall back to
    labelled lines. Text is only un-framed here; whether it is any good is the :class:`Cleaner`'s call.
    """
    labels = [field_labels.get(f, f) for f in fields]
    keys = {f: {_key(f), _key(field_labels.get(f, f))} for f in fields}
    records: list[dict[str, str]]
    stripped = raw.strip()
    if len(fields) > 1 or stripped.startswith(("{", "[")) or "```json" in stripped.lower():
        records = _json_records(raw, fields, keys, labels)
    else:
        records = []
    if not records and len(fields) > 1:
        records = _labelled_records(raw, fields, keys, labels)
    if not records and len(fields) == 1:
        if many or sum(1 for ln in raw.split("\n") if _LIST_MARKER.match(ln)) >= 2:
            texts = [clean_text(item, labels, unframe=True) for item in _split_items(raw)]
        else:
            texts = [clean_text(raw, labels, unframe=True)]
        records = [{fields[0]: t} for t in texts]
    records = [r for r in records if all(r.get(f) for f in fields)]
    if not records:
        return None
    return records if many else records[:1]


_ITEM_MARKER = re.compile(r"^\s*(?:(?:[-*•–]+|\(?\d{1,2}\s*[.)]|\d{1,2}\s*-)\s*)+")
_INLINE_NUMBER = re.compile(r"(?<=[.!?;,])\s+(?=\d{1,2}[.)]\s)")
# Words that mark talk about the list or the task rather than an item of it ("Sentence 3", "Here are 10 …").
_META_ITEM = re.compile(
    r"\b(?:sentences?|reviews?|lists?|listing|here|examples?|following|responses?|reasons?|words?|tips?|"
    r"items?|ways?|task|user|prompt|i|i'm|i'd|my|me|you|your|let's|alternative|sentiment|genre|subject)\b",
    re.I,
)


_PHRASE = re.compile(r"^[^\W\d_][^\W_]*(?:['’-][^\W_]+)*(?:,?\s+[^\W_]+(?:['’-][^\W_]+)*)*$")  # words, commas


def parse_rationale_items(text: str, max_words: int = 8, exclude: Iterable[str] = ()) -> list[str]:
    """Short phrases from a rationale answer, with the chatter a small LLM wraps them in removed.

    Small instruct models rarely answer "one short phrase per line": they write "1. **Great acting**: the cast
    …", number items inline, or pad the list with "Sentence 3: …" and "Here are 10 ways …". An item is the
    line (or inline-numbered piece) without markers and emphasis; for "head: explanation" it is the head, or
    the tail when the head is a meta word ("Genre: film noir"). Items that still talk about the task, are too
    long, or are not plain words are dropped, and so are items naming an ``exclude`` word (the label names: a
    "negative" item in the positive list contradicts the label): a bad rationale steers every seed written from it.
    """
    banned = {normalize(w) for w in exclude if normalize(w)}
    items: list[str] = []
    for line in text.replace("\r", "").split("\n"):
        for piece in _INLINE_NUMBER.split(line):
            item = _EMPHASIS.sub(r"\2", _ITEM_MARKER.sub("", piece)).strip()
            head, sep, tail = item.partition(":")
            if sep:
                item = tail if (_META_ITEM.search(head) or not head.strip()) else head
            item = item.strip().strip("\"'*“”‘’`").rstrip(".:;,!").strip()
            if (
                1 <= len(item.split()) <= max_words
                and _PHRASE.match(item)
                and not _META_ITEM.search(item)
                and not banned & set(normalize(item).split())
            ):
                items.append(item)
    return items


# --------------------------------------------------------------------------------------------------
# Filtering
# --------------------------------------------------------------------------------------------------

_REFUSAL = re.compile(
    r"\bas an ai\b|\bai (?:language )?model\b|\bi(?:'m| am) an ai\b"
    r"|\bopenai'?s? (?:use case |content )?(?:polic|values|guidelines)"
    r"|\bcontent polic(?:y|ies)\b|\bgoes against (?:my|openai|ethical|the (?:content|use case))"
    r"|\bi (?:cannot|can't|can not|am unable to|'m unable to|am not able to|'m not able to|won't|will not|"
    r"must decline to|am not comfortable|'m not comfortable)\s+(?:\w+\s+)?(?:generat|creat|writ|produc|provid|fulfil|"
    r"comply|complete (?:this|that|the) (?:task|request)|assist|help with|do that|perform|engage)"
    r"|\binappropriate (?:or \w+ )?request\b|\bis there (?:something|anything) else i can\b"
    r"|\A\W*(?:i(?:'m| am) )?(?:so |very |really |truly )?sorry,?\s*(?:but\s*)?(?:as an|i (?:cannot|can't|can not|"
    r"am not|'m not|am unable|'m unable|won't|will not|do not|don't)\b(?!\s+(?:recommend|believe|say|stand|wait|help but)))"
    r"|\A\W*(?:i apologi[sz]e|my apologies|apologies)\b",
    re.I,
)
_BOILERPLATE = re.compile(
    rf"{_LEAD_HERE.pattern}|^\W*(?:sure|certainly|of course)\s*!"
    rf"|^\W*{_ACK}\b[\s,!.]*(?:here|below|i(?:'d| would| will|'ll| can| have)|let me)\b"
    r"|\bas (?:you )?requested\b(?! by)|\brewritten (?:sentence|version|review|text|example|hypothesis)\b"
    r"|\bin an? (?:positive|negative|neutral) (?:style|tone)\b|\b(?:positive|negative) (?:movie )?review for you\b"
    r"|\bhere is the (?:rewritten|revised|new|requested)\b"
    # talk about the example rather than an example: "Your sentence is a great example of…", "Instead of "…""
    r"|\b(?:the|this|that|your|my|original|given|above|following|previous|improved|edited|revised|rewritten)\s+"
    r"(?:(?:movie|film|review|new|original|revised|positive|negative|neutral)\s+){0,3}sentences?\b"
    r"|\b(?:revised|improved|edited|rewritten) (?:version|sentence|review|text|example)\b|\A\W*instead of [\"“']",
    re.I,
)


def boilerplate_kind(text: str) -> str | None:
    """`refusal` or `boilerplate` when the text is assistant talk rather than an example."""
    text = text.replace("’", "'")
    if _REFUSAL.search(text):
        return "refusal"
    if _BOILERPLATE.search(text):
        return "boilerplate"
    return None


_RNG = np.random.default_rng(20231013)
_MULTIPLIERS = _RNG.integers(1, 2**63, size=64, dtype=np.int64).astype(np.uint64) | np.uint64(1)


@functools.cache
def _word_hash(word: str) -> int:
    """Stable across processes (unlike hash()), so a rerun keeps exactly the same rows."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def word_hashes(norm: str) -> np.ndarray:
    words = norm.split()
    return np.fromiter(map(_word_hash, words), dtype=np.uint64, count=len(words))


def gram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of all word n-grams (a random-multiplier sum, so order matters)."""
    count = len(words) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    out = words[:count] * _MULTIPLIERS[0]
    for j in range(1, n):
        out += words[j : j + count] * _MULTIPLIERS[j]
    return out
