"""Every numeric, choice and path setting checked when the config is composed.

The entry points (``ssr-train``, ``ssr-generate``, ``ssr-judge``, ``ssr-eval``) call
:func:`check_config` before any model is loaded or any answer generated, so a setting that cannot
work fails in a second, with one line naming the key, its value and the valid range.

The rules are a table of ``(key, requirement)``: each row is one field of the structured configs
these will become (dataclasses registered with Hydra's ConfigStore): the key is the field, the
requirement its type plus the ``__post_init__`` check. ``*`` in a key matches any one level
(``data.ood.*.path``). A key that is absent or null is not checked (null means "default" or
"off" throughout conf/), except where a rule says ``optional=False``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from ssr.models.losses import LOSSES
from ssr.runtime.configs import ConfigError
from ssr.runtime.precision import PRECISION_CHOICES

# trainer.precision: Lightning's names, their short aliases, and `auto` (resolved by ssr-train).
PRECISIONS = PRECISION_CHOICES


@dataclass(frozen=True)
class Rule:
    """``key`` must satisfy ``ok``; ``must`` says what that means in the error message."""

    key: str
    must: str
    ok: Callable[[Any], bool]
    optional: bool = True


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def int_at_least(low: int) -> tuple[str, Callable[[Any], bool]]:
    return f"an integer >= {low}", lambda v: _is_int(v) and v >= low


def steps() -> tuple[str, Callable[[Any], bool]]:
    """Lightning's epoch/step limits: a positive count, or -1 for "no limit"."""
    return "an integer >= 1, or -1 (no limit)", lambda v: _is_int(v) and (v >= 1 or v == -1)


def positive() -> tuple[str, Callable[[Any], bool]]:
    return "a number > 0", lambda v: _is_number(v) and v > 0


def non_negative() -> tuple[str, Callable[[Any], bool]]:
    return "a number >= 0", lambda v: _is_number(v) and v >= 0


def in_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> tuple[str, Any]:
    text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    return text, ok


def one_of(choices: tuple[Any, ...]) -> tuple[str, Callable[[Any], bool]]:
    return f"one of {', '.join(map(str, choices))}", lambda v: str(v) in {str(c) for c in choices}


def readable_file() -> tuple[str, Callable[[Any], bool]]:
    return "a readable file", lambda v: isinstance(v, str) and _file_problem(v) is None


def _rule(key: str, requirement: tuple[str, Callable[[Any], bool]], optional: bool = True) -> Rule:
    return Rule(key, requirement[0], requirement[1], optional)


RULES: tuple[Rule, ...] = (
    _rule("seed", int_at_least(0), optional=False),
    # data
    _rule("data.batch_size", int_at_least(1), optional=False),
    _rule("data.val_batch_size", int_at_least(1)),
    _rule("data.max_length", int_at_least(1), optional=False),
    _rule("data.num_workers", int_at_least(0)),
    _rule("data.max_train_rows", int_at_least(1)),
    _rule("data.max_val_rows", int_at_least(0)),  # 0 = no validation set
    _rule("data.*.test_fraction", in_range(0, 1, low_open=True, high_open=True)),
    _rule("data.*.path", readable_file()),
    _rule("data.ood.*.path", readable_file()),
    # optimisation
    _rule("optim.lr", positive(), optional=False),
    _rule("loss", one_of(LOSSES)),
    _rule("optim.weight_decay", non_negative()),
    _rule("optim.warmup_ratio", in_range(0, 1, high_open=True)),
    _rule("optim.min_lr_ratio", in_range(0, 1)),
    _rule("peft.r", int_at_least(1)),
    _rule("peft.lora_alpha", positive()),
    _rule("peft.lora_dropout", in_range(0, 1, high_open=True)),
    # trainer (max_epochs=0 would "train" nothing and exit 0)
    _rule("trainer.max_epochs", steps()),
    _rule("trainer.max_steps", steps()),
    _rule("trainer.accumulate_grad_batches", int_at_least(1)),
    _rule("trainer.log_every_n_steps", int_at_least(1)),
    _rule("trainer.check_val_every_n_epoch", int_at_least(1)),
    _rule("trainer.gradient_clip_val", non_negative()),
    _rule("trainer.num_nodes", int_at_least(1)),
    _rule("trainer.precision", one_of(PRECISIONS)),
    _rule("callbacks.model_checkpoint.every_n_train_steps", int_at_least(0)),  # 0 = epoch ends only
    _rule("callbacks.model_checkpoint.save_top_k", int_at_least(-1)),
    # generation
    _rule("generator.batch_size", int_at_least(1)),
    _rule("generator.decoding.max_new_tokens", int_at_least(1)),
    _rule("generator.decoding.temperature", non_negative()),
    _rule("generator.decoding.top_p", in_range(0, 1, low_open=True)),
    # judges (rule_qa, hf, openai)
    _rule("judge.threshold", in_range(0, 1)),
    _rule("judge.batch_size", int_at_least(1)),
    _rule("judge.max_concurrency", int_at_least(1)),
    _rule("judge.timeout_s", positive()),
    _rule("judge.max_retries", int_at_least(0)),
    _rule("judge.backoff_s", non_negative()),
    _rule("judge.backoff_jitter", non_negative()),
    _rule("judge.max_tokens", int_at_least(1)),
    _rule("judge.max_document_chars", int_at_least(1)),
    # evaluation
    _rule("eval.callback.every_n_epochs", int_at_least(1)),
    _rule("eval.callback.every_n_steps", int_at_least(0)),
    _rule("eval.tasks.selection_rows", int_at_least(0)),
    _rule("eval.tasks.max_rows", int_at_least(1)),
    _rule("eval.tasks.ood_max_rows", int_at_least(1)),
    _rule("eval.tasks.max_new_tokens", int_at_least(1)),
    _rule("eval.tasks.max_prompt_tokens", int_at_least(1)),
    _rule("eval.self_drift.limit", int_at_least(1)),
    _rule("eval.kl_task.max_rows", int_at_least(1)),
    _rule("eval.kl_task.batch_size", int_at_least(1)),
    _rule("eval.self_drift.max_new_tokens", int_at_least(1)),
    _rule("eval.self_drift.batch_size", int_at_least(1)),
    _rule("eval.self_drift.prompts_file", readable_file()),
    _rule("eval.self_drift.reference_path", readable_file()),
    _rule("eval.suite.limits.*", int_at_least(1)),
    _rule("eval.suite.num_fewshot", int_at_least(0)),
    _rule("eval.final.suite.limits.*", int_at_least(1)),
    _rule("eval.final.self_drift.limit", int_at_least(1)),
    _rule("eval.final.kl_task.max_rows", int_at_least(1)),
    _rule("eval.ifeval.limit", int_at_least(1)),
    _rule("eval.ifeval.max_gen_toks", int_at_least(1)),
    _rule("eval.ifeval.batch_size", int_at_least(1)),
    _rule("eval.final.ifeval.limit", int_at_least(1)),
    _rule("eval.final.ifeval.max_gen_toks", int_at_least(1)),
    _rule("eval.final.tasks.max_rows", int_at_least(1)),
    _rule("eval.final.tasks.ood_max_rows", int_at_least(1)),
    _rule("eval.final.tasks.max_new_tokens", int_at_least(1)),
)


def _file_problem(path: str) -> str | None:
    """Why ``path`` cannot be read as a data file (None: it can)."""
    p = Path(path)
    if not p.exists():
        return "no such file"
    if p.is_dir():
        return "is a directory, not a file"
    if not os.access(p, os.R_OK):
        return "not readable (permission denied)"
    return None


def _keys(cfg: DictConfig, pattern: str) -> list[str]:
    """Full keys present in ``cfg`` that match ``pattern`` (``*`` = any one key)."""
    keys = [""]
    for part in pattern.split("."):
        matched = []
        for prefix in keys:
            node = OmegaConf.select(cfg, prefix) if prefix else cfg
            if not isinstance(node, DictConfig):
                continue
            names = [str(k) for k in node] if part == "*" else [part] if part in node else []
            matched += [f"{prefix}.{name}" if prefix else name for name in names]
        keys = matched
    return keys


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except InterpolationResolutionError as err:
        raise ConfigError(f"{key}: cannot resolve its value ({_one_line(err)})") from err


def _one_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def missing_values(cfg: DictConfig) -> list[str]:
    """Required keys still at ``???`` (Hydra's own keys excluded); nothing is resolved."""
    out: list[str] = []

    def walk(node: DictConfig | ListConfig, prefix: str) -> None:
        keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            full = f"{prefix}.{key}" if prefix else str(key)
            if full == "hydra":
                continue
            if OmegaConf.is_missing(node, key):
                out.append(full)
                continue
            child = node._get_node(key)
            if (
                isinstance(child, DictConfig | ListConfig)
                and not child._is_none()
                and not child._is_interpolation()
            ):
                walk(child, full)

    walk(cfg, "")
    return sorted(out)


def problems(cfg: DictConfig, rules: tuple[Rule, ...] = RULES) -> list[str]:
    """One message per setting that breaks a rule, in table order."""
    out: list[str] = []
    for rule in rules:
        for key in _keys(cfg, rule.key):
            value = _value(cfg, key)
            if value is None:
                if not rule.optional:
                    out.append(f"{key} is not set (must be {rule.must})")
            elif rule.ok(value):
                continue
            elif rule.must == readable_file()[0] and isinstance(value, str):
                out.append(f"{key}={value}: {_file_problem(value)}")
            else:
                out.append(f"{key}={_shown(value)} (must be {rule.must})")
    return out


def check_method(cfg: DictConfig) -> list[str]:
    """The method exists and, if it judges its own answers, has a judge."""
    from ssr.selection.methods import MethodConfig

    node = cfg.get("method")
    if node is None:
        return []
    try:
        fields = OmegaConf.to_container(node, resolve=True)
        method = MethodConfig(
            **{k: v for k, v in fields.items() if not k.startswith("_")}
        )  # no _target_ etc.
    except (TypeError, ValueError) as err:
        return [f"method: {_one_line(err)}"]
    if method.needs_judge and not cfg.get("judge"):
        return [f"method={method.name} needs a judge: set judge=rule_qa|hf|openai"]
    return []


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line, every broken setting) if the config cannot run."""
    missing = missing_values(cfg)
    if missing:
        raise ConfigError(
            "Missing mandatory value: "
            + ", ".join(missing)
            + f" (set it on the command line, e.g. {missing[0]}=...)"
        )
    found = problems(cfg) + check_method(cfg)
    if found:
        raise ConfigError("invalid config: " + "; ".join(found))
