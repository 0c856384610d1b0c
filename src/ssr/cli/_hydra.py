"""Where the Hydra config tree lives, and config helpers shared by the entry points."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ssr.cli.schemas import register
from ssr.data.adapters import sample_rows
from ssr.data.records import Record
from ssr.runtime.precision import PrecisionChoice, lightning_precision

log = logging.getLogger("ssr")


def conf_dir() -> str:
    """The Hydra config tree: ``$SSR_CONF_DIR``, else the one shipped in the package (``ssr/conf``,
    mapped from the repository's ``conf/`` when a wheel is built), else the checkout's ``conf/``
    (editable installs and ``PYTHONPATH=src``). Add your own groups with ``hydra.searchpath``."""
    env = os.environ.get("SSR_CONF_DIR")
    if env:
        candidates = [Path(env)]
    else:
        package = Path(__file__).resolve().parents[1]
        candidates = [package / "conf", package.parents[1] / "conf"]
    for path in candidates:
        if (path / "train.yaml").is_file():
            return str(path)
    raise FileNotFoundError(
        f"Hydra config tree not found (looked in {', '.join(map(str, candidates))}); "
        "set SSR_CONF_DIR to a directory holding train.yaml"
    )


CONF_DIR = conf_dir()
register()  # the dataclass-backed nodes' schemas, before any composition (ssr.cli.schemas)


def to_dict(node: Any) -> Any:
    """A resolved plain container; a required value left at ``???`` is an error naming its key."""
    if not isinstance(node, DictConfig):
        return node
    return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)


def build(node: DictConfig, **runtime: Any) -> Any:
    """``hydra.utils.instantiate(node, **runtime)``, re-raising a bad setting's own error (a
    ``ValueError``/``TypeError`` naming the key) instead of Hydra's wrapper around it."""
    try:
        return instantiate(node, **runtime)
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError | TypeError | OSError):
            raise err.__cause__ from None
        raise


def load_records(data_cfg: DictConfig, split: str, seed: int) -> list[Record]:
    """A data split's records alone (what ``SSRDataModule`` samples from the same settings)."""
    cap = data_cfg.max_train_rows if split == "train" else data_cfg.max_val_rows
    if data_cfg[split] is None or cap == 0:
        return []
    seed = seed if data_cfg.sample_seed is None else data_cfg.sample_seed
    return sample_rows(instantiate(data_cfg[split]), cap, data_cfg.balance, seed)


def resolve_precision(cfg: DictConfig) -> PrecisionChoice:
    """``trainer.precision`` (default ``auto``) resolved on this machine, written back into ``cfg``
    so that every stage interpolating it (generator, judge, drift evaluation) runs the same dtype."""
    choice = lightning_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    cfg.trainer.precision = choice.precision
    log.info("%s", choice.describe())
    return choice
