"""The small model trainer on a few real SST-2 rows (embedded MiniLM, CPU, seconds)."""

import dataclasses

from hydra.utils import instantiate

from s3.classifier import SmallModelConfig, scores, train_classifier
from s3.config import compose_config, default_data_dir
from s3.data import Task, load_split


def test_trains_real_rows_and_restores_the_best_epoch():
    cfg = compose_config(["task=sst2"])
    task: Task = instantiate(cfg.task)
    small: SmallModelConfig = dataclasses.replace(instantiate(cfg.small_model), batch_size=16, max_epochs=3)
    train = load_split(task, "train", default_data_dir())[:48]
    val = load_split(task, "validation", default_data_dir())[:32]
    clf = train_classifier(train, val, task, small, seed=0, progress=False)
    assert len(clf.epoch_val_acc) == 3
    assert clf.best_epoch == max(range(3), key=lambda e: (clf.epoch_val_acc[e], -e))  # first best epoch
    probs = clf.predict_proba(val)
    assert probs.shape == (len(val), 2)
    assert abs(probs.sum(1) - 1).max() < 1e-5
    assert abs(scores(probs, val)["acc"] - clf.epoch_val_acc[clf.best_epoch]) < 1e-6  # its weights are back
