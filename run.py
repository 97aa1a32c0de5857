"""Entry point: ``python run.py [overrides]`` or ``python run.py -m <sweep>``; see README.md."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from s3.config import check_overrides, refuse_secret_overrides  # (also registers the config resolvers)
from s3.loop import UserError, run_experiment
from s3.schemas import register as register_schemas

register_schemas()  # task and llm schemas, as the loop's modules register theirs on import


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the final accuracy on the held-out gold rows (select_acc; val_acc without them) for sweepers."""
    try:
        return run_experiment(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # this job fails; the sweep's other jobs still run
        sys.exit(2)


if __name__ == "__main__":
    try:
        refuse_secret_overrides(sys.argv[1:])  # before Hydra writes them anywhere
        check_overrides(sys.argv[1:])  # a bad option or value: one line, before Hydra makes a run dir
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
