"""One home per default.

- Dataclass-backed nodes (``ssr.cli.schemas``): the dataclass holds every default; a YAML file that
  restates one (same value) or whose group base contradicts one fails here.
- Classes built from a group's YAML (``SSRDataModule``, ``SSRModule``, judges, callbacks, ...): the
  group's home file (``_base.yaml``/``default.yaml``, or an option without a ``_base``) holds the
  defaults a run uses; the Python signature's default of the same key, kept for library users,
  must equal it.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import get_class, get_method
from omegaconf import DictConfig, ListConfig, OmegaConf

from ssr.cli._hydra import CONF_DIR
from ssr.cli.schemas import GROUP_SCHEMAS, NODE_SCHEMAS

CONF = Path(CONF_DIR)
PLUMBING = {"defaults", "_target_", "_convert_", "_partial_", "_recursive_"}
# restated on purpose: remote code stays visibly opt-in in every model option
ALLOWED_RESTATEMENTS = {("model", "trust_remote_code")}
# yaml file -> {node key: dataclass} for nodes that are not a whole group file
NODES_IN_FILES = {
    "train.yaml": {"prompt": NODE_SCHEMAS["prompt"][0], "optim": NODE_SCHEMAS["optim"][0]},
    "eval/default.yaml": {
        "self_drift": NODE_SCHEMAS["self_drift"][0],
        "tasks": NODE_SCHEMAS["eval_tasks"][0],
        "kl_task": NODE_SCHEMAS["kl_task"][0],
        "ifeval": NODE_SCHEMAS["ifeval"][0],
    },
}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def _as_yaml(value: Any) -> Any:
    """A Python default as YAML holds it (tuples are lists there)."""
    return list(value) if isinstance(value, tuple) else value


def _literal(node: DictConfig, key: str) -> bool:
    child = node._get_node(key)
    return not child._is_interpolation() and not child._is_missing()


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def schema_problems(
    node: DictConfig,
    cls: type,
    where: str,
    is_base: bool,
    group: str = "",
    required: frozenset[str] = frozenset(),
) -> list[str]:
    """Keys of ``node`` that restate ``cls``'s default, or (in a base file) contradict it.
    ``required``: keys the group's base leaves at ``???`` (each option must set them: its identity)."""
    problems = []
    defaults = _dataclass_defaults(cls)
    for key in node:
        if key in PLUMBING or not _literal(node, key) or (group, key) in ALLOWED_RESTATEMENTS:
            continue
        value = _plain(node[key])
        default = defaults.get(key, dataclasses.MISSING)
        if dataclasses.is_dataclass(default) and isinstance(node[key], DictConfig):
            problems += schema_problems(node[key], type(default), f"{where}.{key}", is_base, group, required)
        elif default is dataclasses.MISSING:
            continue  # no default in Python (or unknown: composition refuses it)
        elif value == _as_yaml(default) and key not in required:
            problems.append(f"{where}.{key}: restates {cls.__name__}.{key} = {default!r}")
        elif is_base:
            problems.append(f"{where}.{key}: {value!r} contradicts {cls.__name__}.{key} = {default!r}")
    return problems


def _target_defaults(target: str) -> dict[str, Any] | None:
    try:
        obj = get_class(target)
    except Exception:  # a function target (dataset adapters)
        obj = get_method(target)
    if dataclasses.is_dataclass(obj):
        return None  # schema-backed: checked above
    if inspect.isclass(obj) and "__init__" not in vars(obj):
        return None  # its defaults are a third-party base class's (e.g. Lightning's CSVLogger)
    params = inspect.signature(obj).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def signature_problems(node: DictConfig, where: str) -> list[str]:
    """Literal keys of every ``ssr.*`` ``_target_`` node under ``node`` whose value differs from the
    target's Python default."""
    problems = []
    target = node.get("_target_") if "_target_" in node else None
    defaults = _target_defaults(target) if isinstance(target, str) and target.startswith("ssr.") else None
    for key in node:
        if key in PLUMBING:
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            problems += signature_problems(child, f"{where}.{key}")
        elif (
            defaults
            and key in defaults
            and _literal(node, key)
            and _plain(node[key]) != _as_yaml(defaults[key])
        ):
            problems.append(f"{where}.{key}: {_plain(node[key])!r} != {target} default {defaults[key]!r}")
    return problems


def _is_option(cfg: DictConfig) -> bool:
    """An option that builds on its group's ``_base`` (its values are overrides, not defaults)."""
    return any(str(d) == "_base" for d in cfg.get("defaults") or [])


def yaml_files() -> list[Path]:
    return sorted(p for p in CONF.rglob("*.yaml") if p.parts[len(CONF.parts)] not in ("experiment", "hydra"))


def all_problems() -> list[str]:
    problems = []
    for path in yaml_files():
        rel = path.relative_to(CONF).as_posix()
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            continue
        group = rel.split("/")[0] if "/" in rel else ""
        is_base = not _is_option(cfg)
        if group in GROUP_SCHEMAS and path.parent == CONF / group:
            base = OmegaConf.load(CONF / group / "_base.yaml")
            required = frozenset(k for k in base if k not in PLUMBING and base._get_node(k)._is_missing())
            problems += schema_problems(cfg, GROUP_SCHEMAS[group], rel, is_base, group, required)
        for key, cls in NODES_IN_FILES.get(rel, {}).items():
            if key in cfg:
                problems += schema_problems(cfg[key], cls, f"{rel}:{key}", True)
        if is_base:
            problems += signature_problems(cfg, rel)
    return problems


def test_each_default_has_one_home():
    problems = all_problems()
    assert not problems, "defaults written twice or disagreeing:\n  " + "\n  ".join(problems)


def test_the_check_sees_a_restated_and_a_contradicting_default():
    from ssr.generation.config import GeneratorConfig

    node = OmegaConf.create({"batch_size": 32, "decoding": {"max_new_tokens": 7}, "backend": "${x}"})
    found = schema_problems(node, GeneratorConfig, "generator/_base.yaml", is_base=True)
    assert found == [
        "generator/_base.yaml.batch_size: restates GeneratorConfig.batch_size = 32",
        "generator/_base.yaml.decoding.max_new_tokens: 7 contradicts DecodingConfig.max_new_tokens = 64",
    ]
    data = OmegaConf.create({"_target_": "ssr.training.datamodule.SSRDataModule", "val_batch_size": 3})
    assert signature_problems(data, "data/_base.yaml") == [
        "data/_base.yaml.val_batch_size: 3 != ssr.training.datamodule.SSRDataModule default 16"
    ]


@pytest.mark.parametrize("group", sorted(GROUP_SCHEMAS))
def test_a_mistyped_key_is_refused_at_composition(group):
    from hydra.errors import ConfigCompositionException

    from conftest import compose

    with pytest.raises(ConfigCompositionException):
        compose([f"{group}.no_such_key=1"])
