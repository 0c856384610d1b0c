"""Config schemas: each dataclass-backed config node gets its defaults from the dataclass itself.

One home per default: the dataclasses (``GeneratorConfig``, ``ModelSpec``, ``MethodConfig``, ...)
hold every default and its help text; the YAML files under ``conf/`` list only what an option
changes. :func:`register` stores a Hydra structured config (``ConfigStore``) per dataclass, and the
YAML pulls it in through its defaults list (``_schema`` in a group, ``/schema/<name>@<key>``
elsewhere), so the composed config still shows every key (``ssr-train --cfg job``), a typo in a
key is an error at composition, and a value of the wrong type is refused when it is set.
``tests/test_config_defaults.py`` fails when a YAML file restates or contradicts one of these
defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import MISSING, field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING as REQUIRED_VALUE  # "???": a value every option must set
from omegaconf import OmegaConf

from ssr.data.prompts import PromptConfig
from ssr.eval.ifeval import IFEvalConfig
from ssr.eval.kl_task import KLTaskConfig
from ssr.eval.self_drift import SelfDriftConfig
from ssr.eval.task_sets import TaskMetricsConfig
from ssr.generation.config import GeneratorConfig
from ssr.models.loading import ModelSpec
from ssr.selection.methods import MethodConfig
from ssr.training.module import OptimConfig

# group -> dataclass: stored as ``<group>/_schema``; the group's ``_base.yaml`` lists ``_schema`` first
GROUP_SCHEMAS: dict[str, type] = {
    "generator": GeneratorConfig,
    "model": ModelSpec,
    "method": MethodConfig,
}
# keys each option of a group must set (its identity): required (``???``) in the schema, whatever
# the library default (a ``???`` in YAML cannot undo a default: OmegaConf merges skip missing values)
REQUIRED: dict[str, tuple[str, ...]] = {
    "generator": ("backend",),
    "model": ("name_or_path",),
    "method": ("name",),
}
# name -> (dataclass, instantiated with _target_?): stored as ``schema/<name>``, placed by the
# defaults list of the file that holds the node (``- /schema/optim@optim`` in train.yaml)
NODE_SCHEMAS: dict[str, tuple[type, bool]] = {
    "prompt": (PromptConfig, True),
    "optim": (OptimConfig, True),
    "self_drift": (SelfDriftConfig, False),
    "eval_tasks": (TaskMetricsConfig, False),
    "kl_task": (KLTaskConfig, False),
    "ifeval": (IFEvalConfig, False),
}


@functools.cache
def _node_type(tp: Any) -> Any:
    """``tp`` where OmegaConf can type-check it, else ``Any`` (unions of several types, tuples)."""
    try:
        OmegaConf.structured(make_dataclass("_Probe", [("x", tp, field(default=None))]))
    except Exception:  # OmegaConf's validation errors have no common base beyond this
        return Any
    return tp


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return field(default=f.default)
    if f.default_factory is not MISSING:
        return field(default_factory=f.default_factory)
    return field(default=MISSING)


@functools.cache
def node_schema(cls: type, target: bool = True, required: tuple[str, ...] = ()) -> type:
    """A dataclass for ``cls``'s config node: its fields and defaults (nested dataclasses as nested
    nodes; the ``required`` ones without a default), plus ``_target_`` (and ``_convert_: all``) when
    the node is built by ``instantiate``. Built once per arguments (every composition and resume
    check asks again)."""
    hints = typing.get_type_hints(cls)
    specs: list[tuple[str, Any, Any]] = []
    if target:
        specs += [
            ("_target_", str, field(default=f"{cls.__module__}.{cls.__qualname__}")),
            ("_convert_", str, field(default="all")),
        ]
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = node_schema(tp, target)
            specs.append((f.name, sub, field(default_factory=sub)))
        else:
            default = field(default=REQUIRED_VALUE) if f.name in required else _default(f)
            specs.append((f.name, _node_type(tp), default))
    return make_dataclass(f"{cls.__name__}Node", specs)


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent; before composing ``conf/``)."""
    store = ConfigStore.instance()
    for group, cls in GROUP_SCHEMAS.items():
        store.store(group=group, name="_schema", node=node_schema(cls, required=REQUIRED.get(group, ())))
    for name, (cls, target) in NODE_SCHEMAS.items():
        store.store(group="schema", name=name, node=node_schema(cls, target))


# where each schema sits in the run config (flat key prefix)
PLACES: dict[str, type] = {
    **GROUP_SCHEMAS,
    "prompt": PromptConfig,
    "optim": OptimConfig,
    "eval.self_drift": SelfDriftConfig,
    "eval.tasks": TaskMetricsConfig,
    "eval.kl_task": KLTaskConfig,
    "eval.ifeval": IFEvalConfig,
}


def implicit_defaults() -> dict[str, Any]:
    """Flat ``key -> default`` of every schema-backed node, as a run config stores it (the
    resume check's ``implicit``: a run config written before a key was shown used this value)."""
    out: dict[str, Any] = {}

    def flatten(tree: Any, prefix: str) -> None:
        if isinstance(tree, dict) and tree:
            for key, value in tree.items():
                flatten(value, f"{prefix}.{key}")
        else:
            out[prefix] = tree

    for place, cls in PLACES.items():
        node = OmegaConf.to_container(OmegaConf.structured(node_schema(cls, target=False)))
        flatten(node, place)
    return out
