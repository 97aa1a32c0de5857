"""The small model on real SST-2 rows (embedded MiniLM, CPU): pooling per encoder, it learns, it saves and reloads."""

import dataclasses
import json

import pytest
import torch
from hydra.utils import instantiate

from s3.classifier import Classifier, SmallModelConfig, checkpoint_pooling, scores, small_model_config, train_classifier
from s3.config import compose_config, default_data_dir
from s3.data import load_real_data, load_split, stratified_sample
from s3.embed import resolve_model


def setup(overrides=()):
    cfg = compose_config(["task=sst2", *overrides])
    return instantiate(cfg.task), small_model_config(cfg.small_model)


def test_trains_real_rows_and_restores_the_best_epoch():
    task, small = setup()
    small = dataclasses.replace(small, max_epochs=3)
    train = load_split(task, "train", default_data_dir())[:48]
    val = load_split(task, "validation", default_data_dir())[:32]
    clf = train_classifier(train, val, task, small, seed=0, progress=False)
    assert len(clf.epoch_val_acc) == 3 and [h["epoch"] for h in clf.history] == [0, 1, 2]
    assert all(h["train_loss"] > 0 for h in clf.history) and clf.history[-1]["steps"] == 9  # 3 batches of 16
    assert clf.best_epoch == max(range(3), key=lambda e: (clf.epoch_val_acc[e], -e))  # first best epoch
    probs = clf.predict_proba(val)
    assert probs.shape == (len(val), 2)
    assert abs(probs.sum(1) - 1).max() < 1e-5
    assert abs(scores(probs, val)["acc"] - clf.epoch_val_acc[clf.best_epoch]) < 1e-6  # its weights are back


def test_pooling_follows_the_checkpoint(tmp_path):
    assert checkpoint_pooling(resolve_model("embedded:minilm")) == "mean"  # a sentence-transformers model
    assert checkpoint_pooling(str(tmp_path)) == "cls"  # a plain transformers folder
    (tmp_path / "modules.json").write_text(
        json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    )
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    assert checkpoint_pooling(str(tmp_path)) == "cls"  # a sentence-transformers model read from [CLS]
    with pytest.raises(ValueError, match="pooling"):
        SmallModelConfig(name="x", model="y", pooling="max")


@pytest.mark.parametrize("num_labels", [2, 3])
def test_probe_initialised_head_predicts_like_the_probe(num_labels):
    """Before any fine-tuning the head is the logistic regression on the frozen features (labels may be missing)."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoTokenizer

    from s3.classifier import EncodedDataset, build_model, init_head_from_probe

    path = resolve_model("embedded:minilm")
    rows = load_split(setup()[0], "train", default_data_dir())[:60]
    if num_labels == 3:  # a third label that no row carries
        rows = [{**r, "label": 2 * r["label"]} for r in rows]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = build_model(path, [f"l{i}" for i in range(num_labels)], "mean")
    dataset = EncodedDataset(rows, ["text"], tokenizer, 64)
    init_head_from_probe(model, dataset, tokenizer, seed=0)
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=64, padding=True, return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        hidden = model.encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        feats = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
        preds = model(**enc).argmax(-1).numpy()
    labels = [r["label"] for r in rows]
    expected = LogisticRegression(max_iter=2000, random_state=0).fit(feats, labels).predict(feats)
    assert (preds == expected).mean() >= 0.95  # padding changes the features by float rounding only
    assert set(preds) <= set(labels)


def test_min_steps_adds_epochs_for_small_sets():
    small = SmallModelConfig(name="x", model="y", batch_size=16, max_epochs=2, min_steps=100)
    assert small.epochs_for(300) == 6  # 19 steps an epoch
    assert small.epochs_for(3000) == 2


def test_bad_small_model_value_fails_at_compose():
    with pytest.raises(Exception, match="lr"):
        compose_config(["small_model.lr=fast"])


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_saved_classifier_reloads_bit_for_bit(tmp_path, pooling):
    task, small = setup([f"small_model.pooling={pooling}", "small_model.max_epochs=1"])
    train = load_split(task, "train", default_data_dir())[:32]
    val = load_split(task, "validation", default_data_dir())[:40]
    clf = train_classifier(train, val, task, small, seed=0, progress=False)
    clf.save(tmp_path / "model")
    clf.save(tmp_path / "model")  # replacing a saved model leaves no scratch folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    back = Classifier.load(tmp_path / "model")
    assert back.pooling == pooling and back.labels == task.labels and back.fields == ["text"]
    assert back.meta["task"] == "sst2"
    assert (back.predict_proba(val) == clf.predict_proba(val)).all()


def gold_300_test_acc(seed: int, overrides=()) -> float:
    """The issue's case: 300 real SST-2 rows, scored on the whole SST-2 test set (as benchmarks/small_model.py)."""
    task, small = setup(overrides)
    real = load_real_data(task, default_data_dir(), 200, None, seed)
    train = stratified_sample(load_split(task, "train", default_data_dir()), 300, seed)
    clf = train_classifier(train, real.gold_val, task, small, seed=seed, progress=False)
    return scores(clf.predict_proba(real.test), real.test)["acc"]


def test_learns_from_300_real_rows():
    assert gold_300_test_acc(0) > 0.75


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_learns_from_300_real_rows_every_seed(seed):
    assert gold_300_test_acc(seed) > 0.75


@pytest.mark.slow
def test_two_epochs_learn_too():
    """The [CLS] head on this encoder stayed at chance here on every seed (benchmarks/RESULTS.md)."""
    assert gold_300_test_acc(0, ["small_model.max_epochs=2"]) > 0.70


def test_epoch_bars_only_on_a_terminal(monkeypatch) -> None:
    """Lightning redraws its bar with carriage returns: in a log file that is thousands of characters per epoch."""
    import sys

    from s3.classifier import lightning_trainer

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert (
        lightning_trainer(SmallModelConfig("minilm", "embedded:minilm"), 1, progress=True).progress_bar_callback is None
    )
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert (
        lightning_trainer(SmallModelConfig("minilm", "embedded:minilm"), 1, progress=True).progress_bar_callback
        is not None
    )
    assert (
        lightning_trainer(SmallModelConfig("minilm", "embedded:minilm"), 1, progress=False).progress_bar_callback
        is None
    )


def test_siamese_pairs_read_each_text_alone_and_reload_bit_for_bit(tmp_path):
    """small_model.pair_encoding=siamese: the head reads [u, v, |u-v|, u*v], where u and v are what the sentence
    embedder gives for each text alone; it trains, saves and reloads bit for bit."""
    from transformers import AutoTokenizer

    from s3.classifier import EncodedDataset, build_model, eval_loader
    from s3.embed import SentenceEmbedder

    cfg = compose_config(["task=qnli", "small_model.max_epochs=1"])  # siamese: the default for pairs
    task, small = instantiate(cfg.task), small_model_config(cfg.small_model)
    val = load_split(task, "validation", default_data_dir())[:24]
    path = resolve_model("embedded:minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = build_model(path, task.labels, "mean", siamese=True).eval()
    loader = eval_loader(EncodedDataset(val[:6], task.fields, tokenizer, 256, siamese=True), tokenizer, 6)
    batch, order = next(iter(loader)), next(iter(loader.batch_sampler))
    with torch.inference_mode():
        feats = model.features(**{k: v for k, v in batch.items() if k != "labels"})
    u, v = feats[:, :384], feats[:, 384:768]
    assert torch.equal(feats[:, 768:], torch.cat([(u - v).abs(), u * v], -1))
    embedder = SentenceEmbedder()
    for part, field in ((u, "text1"), (v, "text2")):
        expected = embedder.embed([val[i][field] for i in order])
        assert abs(torch.nn.functional.normalize(part, dim=-1).numpy() - expected).max() < 1e-4

    clf = train_classifier(load_split(task, "train", default_data_dir())[:32], val, task, small, seed=0, progress=False)
    assert clf.pair_encoding == "siamese" and clf.model.classifier.in_features == 4 * 384
    clf.save(tmp_path / "model")
    back = Classifier.load(tmp_path / "model")
    assert back.pair_encoding == "siamese" and (back.predict_proba(val) == clf.predict_proba(val)).all()
