"""Where the Hydra config tree lives, and config helpers shared by the entry points."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ssr.data.adapters import subsample
from ssr.precision import PrecisionChoice, lightning_precision
from ssr.records import Record

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


def to_dict(node: Any) -> Any:
    """A resolved plain container; a required value left at ``???`` is an error naming its key."""
    if not isinstance(node, DictConfig):
        return node
    return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)


def load_records(data_cfg: DictConfig, split: str, seed: int) -> list[Record]:
    """Instantiate a data split's adapter and apply balancing / row caps.

    Rows are sampled with ``data.sample_seed`` when set (the same rows for every run seed), else
    with the run ``seed``.
    """
    node = data_cfg.get(split)
    if node is None:
        return []
    records = instantiate(node)
    cap = data_cfg.get("max_train_rows" if split == "train" else "max_val_rows")
    if split != "train" and cap == 0:
        return []
    if data_cfg.get("sample_seed") is not None:
        seed = int(data_cfg.sample_seed)
    return subsample(records, max_rows=cap, balance=bool(data_cfg.get("balance", False)), seed=seed)


def resolve_precision(cfg: DictConfig) -> PrecisionChoice:
    """``trainer.precision`` (default ``auto``) resolved on this machine, written back into ``cfg``
    so that every stage interpolating it (generator, judge, drift evaluation) runs the same dtype."""
    choice = lightning_precision(cfg.trainer.precision, cfg.trainer.get("accelerator"))
    cfg.trainer.precision = choice.precision
    log.info("%s", choice.describe())
    return choice
