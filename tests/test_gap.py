"""Gap/diversity metrics on constructed inputs with known answers, plus the embedding cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from s3.embed import SentenceEmbedder
from s3.gap import GapConfig, compute_gap, distinct_n, self_bleu

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("S3_DATA_DIR", REPO.parent / "shared" / "data"))
N = 200  # texts per side: enough for MAUVE (20 buckets) and a 5-fold C2ST, small enough for CPU


def load(task: str, split: str, n: int, offset: int = 0) -> tuple[list[str], list[int]]:
    path = DATA / task / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"real data not found: {path} (set S3_DATA_DIR)")
    rows = [json.loads(line) for line in path.read_text().splitlines()[offset : offset + n]]
    texts = [r["text"] if "text" in r else f"{r['text1']} [SEP] {r['text2']}" for r in rows]
    return texts, [int(r["label"]) for r in rows]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


@pytest.fixture(scope="module")
def sst2() -> tuple[list[str], list[int]]:
    return load("sst2", "validation", 2 * N)


def test_composed_gap_config_is_the_dataclass() -> None:
    from s3.config import compose_config

    assert GapConfig.from_cfg(compose_config().gap) == GapConfig()  # the YAML preset adds no defaults of its own
    with pytest.raises(Exception, match="gap"):
        compose_config(["gap.max_texts=many"])  # types are checked when the config is composed
    with pytest.raises(KeyError):
        GapConfig.from_cfg({"no_such_knob": 1})


def test_set_against_itself(embedder: SentenceEmbedder, sst2) -> None:
    texts, labels = sst2[0][:N], sst2[1][:N]
    g = compute_gap(texts, labels, texts, labels, 2, embedder, None, seed=0)
    assert g["gap/mauve"] > 0.99
    assert abs(g["gap/c2st_auc"] - 0.5) <= 0.1
    assert g["gap/frechet"] < 1e-6
    assert g["gap/label_js"] == 0.0
    assert g["gap/length_w1"] == 0.0


def test_two_samples_of_one_distribution(embedder: SentenceEmbedder, sst2) -> None:
    texts, labels = sst2
    g = compute_gap(texts[:N], labels[:N], texts[N:], labels[N:], 2, embedder, None, seed=0)
    assert g["gap/mauve"] > 0.8
    assert abs(g["gap/c2st_auc"] - 0.5) <= 0.1


def test_clearly_different_sets(embedder: SentenceEmbedder, sst2) -> None:
    movie, movie_y = sst2[0][:N], sst2[1][:N]
    questions, _ = load("qnli", "validation", N)
    same = compute_gap(movie, movie_y, sst2[0][N:], sst2[1][N:], 2, embedder, None, seed=0)
    skewed_labels = [1] * N  # the real side stays balanced-ish -> label JS must be > 0
    diff = compute_gap(questions, skewed_labels, movie, movie_y, 2, embedder, None, seed=0)
    assert diff["gap/mauve"] < 0.2
    assert diff["gap/c2st_auc"] > 0.9
    assert diff["gap/frechet"] > 1.3 * same["gap/frechet"]
    assert diff["gap/label_js"] > 0.1
    assert diff["gap/length_w1"] > same["gap/length_w1"]


def test_deterministic_and_vs_train(embedder: SentenceEmbedder, sst2) -> None:
    texts, labels = sst2
    train, train_y = load("sst2", "train", N)
    cfg = {"max_texts": 150}
    kw = dict(real_train=train, real_train_labels=train_y)
    a = compute_gap(texts[:N], labels[:N], texts[N:], labels[N:], 2, embedder, cfg, seed=3, **kw)
    b = compute_gap(texts[:N], labels[:N], texts[N:], labels[N:], 2, embedder, cfg, seed=3, **kw)
    assert a == b
    assert {k.split("/")[1] for k in a if k.startswith("gap_train/")} == {
        "mauve",
        "frechet",
        "c2st_auc",
        "label_js",
        "length_w1",
    }
    no_train = compute_gap(texts[:N], labels[:N], texts[N:], labels[N:], 2, embedder, {"vs_train": False}, 3, **kw)
    assert not any(k.startswith("gap_train/") for k in no_train)
    assert compute_gap(texts, labels, texts, labels, 2, embedder, {"enabled": False}) == {}


def test_diversity_identical_vs_varied(embedder: SentenceEmbedder, sst2) -> None:
    varied = sst2[0][:N]
    same = ["a truly wonderful and moving film ."] * N
    d_same = compute_gap(same, [1] * N, varied, sst2[1][:N], 2, embedder, None, seed=0)
    d_var = compute_gap(varied, sst2[1][:N], varied, sst2[1][:N], 2, embedder, None, seed=0)
    assert d_same["div/distinct1"] < 0.05 and d_same["div/distinct2"] < 0.05
    assert d_var["div/distinct1"] > 0.2 and d_var["div/distinct2"] > 0.6
    assert d_same["div/self_bleu"] == pytest.approx(1.0)
    assert d_var["div/self_bleu"] < 0.4
    assert d_same["div/mean_pairwise_dist"] == pytest.approx(0.0, abs=1e-6)
    assert d_var["div/mean_pairwise_dist"] > 0.5


def test_self_bleu_by_hand() -> None:
    # hyp "a b c d" vs ref "a b c e": p1 = 3/4, p2 = (2+1)/(3+1), p3 = (1+1)/(2+1), p4 = (0+1)/(1+1); BP = 1.
    expected = (3 / 4 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx(expected)
    assert distinct_n(["a a a", "a b"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["a a a", "a b"], 2) == pytest.approx(2 / 3)


def test_embedding_cache(tmp_path: Path) -> None:
    texts = ["the first sentence .", "another one", "the first sentence ."]
    e = SentenceEmbedder(cache_dir=str(tmp_path))
    v1 = e.embed(texts)
    assert v1.dtype == np.float32 and v1.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v1[0], v1[2]) and e.n_computed == 2  # duplicates embedded once
    v2 = e.embed(texts[::-1])
    assert np.array_equal(v2, v1[::-1]) and e.n_computed == 2  # in-memory hit
    fresh = SentenceEmbedder(cache_dir=str(tmp_path))  # e.g. another run of the sweep
    assert np.array_equal(fresh.embed(texts), v1) and fresh.n_computed == 0 and fresh._model is None


def test_a_corrupt_embedding_cache_is_moved_aside_and_rebuilt(tmp_path: Path, caplog) -> None:
    texts = ["the first sentence .", "another one"]
    first = SentenceEmbedder(cache_dir=str(tmp_path))
    v1 = first.embed(texts)
    first.close()  # as when its run ended
    (db,) = tmp_path.glob("embed-*.sqlite")
    db.write_bytes(b"this is not a database" * 100)  # a truncated or overwritten cache file
    with caplog.at_level("WARNING"):
        e = SentenceEmbedder(cache_dir=str(tmp_path))
    assert str(db) in caplog.text and "rebuilt" in caplog.text
    assert np.allclose(e.embed(texts), v1, atol=1e-6) and e.n_computed == 2  # recomputed, not crashed
    assert list(tmp_path.glob("embed-*.sqlite.corrupt-*"))  # the bad file is kept for a look, not deleted


@pytest.mark.parametrize("verbose", [False, True])
def test_faiss_own_warning_on_a_small_set_is_muted_unless_verbose(capfd, verbose) -> None:
    """MAUVE's faiss k-means writes "WARNING clustering …" straight to stderr below 39 points per bucket."""
    from s3.console import quiet_libraries
    from s3.gap import mauve_score

    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(100, 8)).astype(np.float32), rng.normal(size=(100, 8)).astype(np.float32)
    try:
        quiet_libraries(verbose=verbose)
        capfd.readouterr()
        assert mauve_score(p, q, GapConfig(), seed=0) is not None
        assert ("WARNING clustering" in capfd.readouterr().err) is verbose
    finally:
        quiet_libraries()
