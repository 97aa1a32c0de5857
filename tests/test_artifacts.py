"""The exported synthetic set: every run's dataset/ folder loads as its own rows."""

import datasets
from hydra.utils import instantiate

from s3.artifacts import export_dataset
from s3.config import compose_config

FACTS = {
    "task": "sst2",
    "method": "s3",
    "seed": 0,
    "llm": "m",
    "rounds": 2,
    "small_model": "minilm",
    "scores": {"val_acc": 0.5},
    "gap": {},
}


def test_two_runs_datasets_load_their_own_rows(tmp_path):
    """Both folders are named dataset/: a cache keyed by that name would hand back the first run's rows."""
    task = instantiate(compose_config().task)
    for n in (4, 6):
        rows = [
            {
                "id": f"syn-{i}",
                "text": f"text {n} {i}",
                "label": i % 2,
                "round": 0,
                "source": "rationale",
                "prompt_hash": "x",
            }
            for i in range(n)
        ]
        export_dataset(rows, task, tmp_path / f"run{n}", FACTS)
        export_dataset(rows, task, tmp_path / f"run{n}", FACTS)  # re-export replaces it whole
        assert sorted(p.name for p in (tmp_path / f"run{n}").iterdir()) == ["dataset"]
        ds = datasets.load_dataset(
            str(tmp_path / f"run{n}" / "dataset"), split="train", cache_dir=str(tmp_path / "hf-cache")
        )
        assert ds["text"] == [r["text"] for r in rows]
