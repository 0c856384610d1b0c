"""Run fingerprint: what a run trains, so that a resume cannot quietly continue a different run.

The fingerprint is a hash of the resolved config minus the keys that may change on resume (where
to resume from, where logs and outputs go, how progress is shown: :data:`VOLATILE`). It is stored,
with the config it was made from, in every checkpoint (``checkpoint["ssr_run"]``, written by
:class:`ssr.training.callbacks.ResumeState`) and in the run directory (``run_fingerprint.json``).

A resume (``ckpt_path=last`` or a checkpoint path) compares the checkpoint's fingerprint (or the
run directory's, when no checkpoint was written yet) with the new config's and stops with the
differing keys (old -> new) unless ``resume.allow_config_change=true``; then the run directory
keeps both configs (``history``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ssr.runtime.configs import ConfigError
from ssr.runtime.files import atomic_write_text
from ssr.training.checkpoints import read_checkpoint
from ssr.training.loggers import redact

log = logging.getLogger(__name__)

FILE = "run_fingerprint.json"
CHECKPOINT_KEY = "ssr_run"
ALLOW_FLAG = "resume.allow_config_change"

# Keys that may differ between a run and its resume: they change where things are written, how
# progress is shown or watched, never what is trained.
VOLATILE = (
    "ckpt_path",
    "resume",
    "hydra",
    "logger",
    "paths",
    "experiment_name",
    "trainer.enable_progress_bar",
    "trainer.default_root_dir",
    "trainer.log_every_n_steps",
    "callbacks",  # checkpoint cadence and place, LR monitor, loss guard, test hooks
    "eval.callback.run_dir",
    "eval.final",  # measured after training: a finished run resumed with it gets that evaluation
    "data.num_workers",
)


# Modules moved by the package layout (docs/architecture.md): a checkpoint's config may name a
# ``_target_`` (or any dotted path) at its old place; it is the same class, so the resume compares
# the old config with these paths mapped to the new ones. A symbol moved alone is listed whole.
MOVED_MODULES = {
    "ssr.callbacks": "ssr.training.callbacks",
    "ssr.datamodule": "ssr.training.datamodule",
    "ssr.loggers": "ssr.training.loggers",
    "ssr.module": "ssr.training.module",
    "ssr.summary": "ssr.training.summary",
    "ssr.run_fingerprint": "ssr.training.fingerprint",
    "ssr.methods": "ssr.selection.methods",
    "ssr.pipeline": "ssr.selection.pipeline",
    "ssr.models": "ssr.models.loading",
    "ssr.losses": "ssr.models.losses",
    "ssr.generation": "ssr.generation.generator",
    "ssr.server_generation": "ssr.generation.server",
}
MOVED_SYMBOLS = {
    "ssr.generation.GeneratorConfig": "ssr.generation.config.GeneratorConfig",
    "ssr.generation.DecodingConfig": "ssr.generation.config.DecodingConfig",
    "ssr.eval.suite.checked_dataclass": "ssr.runtime.configs.checked_dataclass",
}
_MOVED = re.compile(r"ssr\.(?:" + "|".join(re.escape(m[4:]) for m in MOVED_MODULES) + r")\.\w+")


def moved_path(value: Any) -> Any:
    """A dotted ``ssr`` path at its place before the layout move -> its place now; else unchanged."""
    if not isinstance(value, str) or not _MOVED.fullmatch(value):
        return value
    if value in MOVED_SYMBOLS:
        return MOVED_SYMBOLS[value]
    module, _, name = value.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}"


def with_current_paths(tree: Any) -> Any:
    """``tree`` (a stored run config) with every moved dotted path (:func:`moved_path`) mapped and
    Hydra's ``_convert_`` plumbing dropped (it changes how a node is built, not what is trained)."""
    if isinstance(tree, dict):
        return {k: with_current_paths(v) for k, v in tree.items() if k != CONVERT}
    if isinstance(tree, list):
        return [with_current_paths(v) for v in tree]
    return moved_path(tree)


CONVERT = "_convert_"
# Keys the package layout added to every run config, which change nothing a run does: ``eval`` is
# built with ``instantiate`` now (its target, and the settings it interpolates). A run written
# before them resumes as the same run; see also ``implicit`` in :func:`check_resume`.
ADDED_BY_LAYOUT = {
    "eval._target_": "ssr.eval.evaluator.Evaluator.from_settings",
    "eval._partial_": True,
    "eval.prompt": "<prompt>",
    "eval.max_length": "<data.max_length>",
    "eval.data_root": "<paths.data_root>",
}

REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")  # ${key} or ${group.key}, no resolver


class ResumeMismatchError(ConfigError):
    """A resume whose config differs from the checkpoint's (the message lists old -> new)."""


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config that defines a run: ``cfg`` without the :data:`VOLATILE` keys."""
    work = copy.deepcopy(cfg)
    OmegaConf.set_readonly(work, False)
    nested = [k for k in VOLATILE if "." in k]
    with open_dict(work):
        for key in nested:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(work, parent)
            if isinstance(node, DictConfig) and leaf in node:
                del node[leaf]
    top = {k for k in VOLATILE if "." not in k}
    _mark_group_references(work, skip=top)
    out: dict[str, Any] = {}
    for key in work:
        if key in top:
            continue
        node = work._get_node(key)
        out[str(key)] = (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else work[key]
        )
    return with_current_paths(out)


def _mark_group_references(cfg: DictConfig, skip: set[str]) -> None:
    """A value that only points at another key (``data.model: ${model}``, ``data.run_dir:
    ${paths.output_dir}``) is kept as ``<model>``: each setting counts once, where it is set (a
    reference into a volatile key stays volatile), in the fingerprint and in a resume's diff."""
    roots = {str(k) for k in cfg}

    def walk(node: DictConfig) -> None:
        for key in list(node.keys()):
            child = node._get_node(key)
            target = REFERENCE.fullmatch(str(child._value())) if child._is_interpolation() else None
            if target and target.group(1).split(".")[0] in roots:
                node[key] = f"<{target.group(1)}>"
            elif isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
                walk(child)

    with open_dict(cfg):
        for key in [k for k in roots if k not in skip]:
            node = cfg._get_node(key)
            if isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation():
                walk(node)


def fingerprint_of(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_record(cfg: DictConfig) -> dict[str, Any]:
    """``{"fingerprint", "config"}`` for this config (what checkpoints and the run dir store).

    Credentials are redacted first (they must reach no file, and a rotated key is no new run)."""

    config = redact(run_config(cfg))
    return {"fingerprint": fingerprint_of(config), "config": config}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


_ABSENT = object()


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def config_diff(
    old: dict[str, Any], new: dict[str, Any], ignore: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """``key: old -> new`` for every leaf that differs (sorted by key), but the ``ignore`` keys."""
    a, b = _flat(old), _flat(new)
    return [
        f"{key}: {_shown(a.get(key, _ABSENT))} -> {_shown(b.get(key, _ABSENT))}"
        for key in sorted((a.keys() | b.keys()) - ignore)
        if a.get(key, _ABSENT) != b.get(key, _ABSENT)
    ]


def checkpoint_record(ckpt: str | Path) -> dict[str, Any] | None:
    """The record stored in a Lightning checkpoint file (None: none stored, or a directory)."""
    path = Path(ckpt)
    if not path.is_file():
        return None  # DeepSpeed writes a directory; the run directory's record stands in

    saved = read_checkpoint(path)  # weights_only: a crafted file cannot run code here
    record = saved.get(CHECKPOINT_KEY) if isinstance(saved, dict) else None
    return record if isinstance(record, dict) and "fingerprint" in record else None


def run_dir_record(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is unreadable ({err}); delete it to resume without the check") from err


def implicit_keys(old: dict[str, Any], new: dict[str, Any], implicit: dict[str, Any]) -> set[str]:
    """Keys ``old`` lacks whose new value is the one the old run used without naming it: a schema
    default (``implicit``, flat keys) or one of :data:`ADDED_BY_LAYOUT`."""
    a, b = _flat(old), _flat(new)
    known = {**implicit, **ADDED_BY_LAYOUT}
    return {key for key in b.keys() - a.keys() if key in known and b[key] == known[key]}


def check_resume(
    cfg: DictConfig, run_dir: Path, ckpt: str | None, implicit: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The record of this run; raises :class:`ResumeMismatchError` if a resume changed its config.

    ``ckpt`` is the checkpoint the resume starts from (``ckpt_path`` resolved; None when nothing
    was saved yet). Without ``ckpt_path`` the run is a fresh start and nothing is compared.
    ``implicit``: flat key -> the default a config node takes from its dataclass schema; a key an
    older config lacks at that value is no change (the old run used it without naming it).
    """
    record = make_record(cfg)
    if not cfg.get("ckpt_path"):
        return record
    in_run_dir = run_dir_record(run_dir)
    history = list((in_run_dir or {}).get("history") or [])
    if history:
        record["history"] = history
    source, previous = ckpt, checkpoint_record(ckpt) if ckpt else None
    if previous is None:
        source, previous = str(Path(run_dir) / FILE), in_run_dir
    if previous is None:
        if ckpt:
            log.warning(
                "resume: %s holds no run fingerprint (an older checkpoint); config not compared", ckpt
            )
        return record
    if previous["fingerprint"] == record["fingerprint"]:
        return record
    old_config = with_current_paths(previous.get("config") or {})
    changes = config_diff(
        old_config, record["config"], implicit_keys(old_config, record["config"], implicit or {})
    )
    if not changes:
        log.info(
            "resume: %s was written before the package layout (classes moved, keys added); same run", source
        )
        return record
    if not OmegaConf.select(cfg, ALLOW_FLAG, default=False):
        raise ResumeMismatchError(
            f"ckpt_path={cfg.ckpt_path}: {source} was made by a different config "
            f"({len(changes)} setting{'s' if len(changes) != 1 else ''} changed); resume with the "
            f"original settings, or set {ALLOW_FLAG}=true to continue it with the new ones:\n  "
            + "\n  ".join(changes)
        )
    log.warning(
        "%s=true: resuming %s with a changed config (%d settings; the optimizer and LR schedule "
        "continue from the checkpoint's state):\n  %s",
        ALLOW_FLAG,
        source,
        len(changes),
        "\n  ".join(changes),
    )
    replaced = {"fingerprint": previous["fingerprint"], "config": previous.get("config")}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["history"] = [*history, {**replaced, "replaced_at": now, "changes": changes}]
    return record


def write_run_record(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``run_fingerprint.json`` (atomically) into the run directory."""

    return atomic_write_text(
        Path(run_dir) / FILE, json.dumps(record, indent=1, default=str, ensure_ascii=False)
    )
