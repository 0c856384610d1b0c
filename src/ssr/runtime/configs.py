"""Config plumbing below every layer: the config error type and mapping -> dataclass with unknown-key errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


class ConfigError(ValueError):
    """A setting that cannot work: the message is one line naming the key(s) and the valid range."""


def checked_dataclass(cls: Any, cfg: Any, what: str) -> Any:
    """Build dataclass ``cls`` from a config mapping; an unknown key is an error naming it."""
    cfg = plain_config(cfg)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise KeyError(f"unknown {what} keys {unknown} (known: {sorted(known)})")
    return cls(**cfg)


def plain_config(cfg: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (no hard dependency on omegaconf here)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, DictConfig | ListConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg) if isinstance(cfg, Mapping) else cfg
