"""Stop a run before any work when it cannot run: one line (plus a resume's diff), exit code 2.

The checks (:mod:`ssr.cli.config_checks`, the resume fingerprint of :mod:`ssr.training.fingerprint`, the
endpoint preflight of :mod:`ssr.runtime.http_preflight`) run in two places:

- :class:`PreflightCallback` (``hydra.callbacks.preflight``) after Hydra composed the config and
  before it creates the run directory: a bad setting leaves nothing behind, and a refused resume
  leaves the interrupted run's ``.hydra/`` and log untouched;
- the entry points (:func:`preflight_train`, :func:`preflight_stage`), again, for multirun jobs
  and Python callers, and with the endpoint preflight. There a failure before any work removes
  the run directory Hydra just created, or marks an existing one with a ``FAILED`` file
  (:func:`exits_on_config_error`).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ssr.cli.config_checks import check_config
from ssr.cli.schemas import implicit_defaults
from ssr.runtime import hardware
from ssr.runtime.configs import ConfigError
from ssr.training.fingerprint import check_resume, write_run_record

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("ssr.guard")

EXIT_CODE = 2
FAILED_FILE = "FAILED"
_STARTED = time.time()


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


# --------------------------------------------------------------------------- the checks
def _judge_needed(cfg: DictConfig) -> bool:
    from ssr.selection.methods import MethodConfig

    return cfg.judge is not None and MethodConfig(name=cfg.method.name).needs_judge


def check_endpoints(cfg: DictConfig) -> None:
    """Preflight the servers the run will call: the judge, when it is one (``judge=openai``)."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    if not _judge_needed(cfg):
        return
    target = cfg.judge._target_
    if not target or not hasattr(get_class(target), "preflight"):
        return
    try:
        judge = instantiate(cfg.judge)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(f"judge: {cause}") from err
    try:
        judge.preflight()
    finally:
        close = getattr(judge, "close", None)
        if close is not None:
            close()


def preflight_train(cfg: DictConfig, run_dir: Path, ckpt: str | None) -> dict[str, Any]:
    """Every check of ``ssr-train`` (config, resume fingerprint, endpoints); writes
    ``run_fingerprint.json`` and returns the run record the checkpoints carry."""
    check_config(cfg)
    record = check_resume(cfg, run_dir, ckpt, implicit_defaults())
    check_endpoints(cfg)
    if _is_rank_zero():
        write_run_record(run_dir, record)
        (Path(run_dir) / FAILED_FILE).unlink(missing_ok=True)
    return record


def preflight_stage(cfg: DictConfig, endpoints: bool = True) -> None:
    """The checks of ``ssr-generate`` / ``ssr-judge`` / ``ssr-eval`` (no resume there)."""
    check_config(cfg)
    if endpoints:
        check_endpoints(cfg)


def check_trainer(trainer_cfg: DictConfig, export_merged: bool = False) -> None:
    """Fail before any generation on trainer settings that cannot run on this machine."""
    strategy = OmegaConf.select(trainer_cfg, "strategy")
    target = str(OmegaConf.select(trainer_cfg, "strategy._target_") or strategy or "")
    if "deepspeed" not in target.lower():
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError(
            "trainer.strategy is DeepSpeed (trainer=deepspeed_*) but the deepspeed package is missing: "
            "pip install 'ssr[deepspeed]'"
        )
    if not hardware.cuda_available():
        raise RuntimeError(
            "trainer.strategy is DeepSpeed (trainer=deepspeed_*), which Lightning runs on CUDA GPUs only, "
            "and no CUDA device is visible here: use trainer=cpu or trainer=ddp on this machine"
        )
    node = OmegaConf.select(trainer_cfg, "strategy.config")
    ds_config = OmegaConf.to_container(node) if isinstance(node, DictConfig) else {}
    if "gradient_accumulation_steps" in ds_config:
        raise ValueError(
            "trainer.strategy.config.gradient_accumulation_steps must not be set: "
            "use trainer.accumulate_grad_batches (Lightning passes it to DeepSpeed)"
        )
    bf16 = bool((ds_config.get("bf16") or {}).get("enabled", False))
    if bf16 != str(trainer_cfg.precision).startswith("bf16"):
        raise ValueError(
            f"trainer.strategy.config.bf16.enabled={bf16} disagrees with "
            f"trainer.precision={trainer_cfg.precision}: set both to bf16 or neither"
        )
    if export_merged and (ds_config.get("zero_optimization") or {}).get("stage") == 3:
        raise ValueError(
            "export_merged=true cannot merge ZeRO-3 shards in place: train with export_merged=false, "
            "then merge the saved adapter (PeftModel.from_pretrained(base, adapter).merge_and_unload())"
        )


def check_launch(trainer: L.Trainer) -> None:
    """Lightning starts extra local ranks by re-running the command line, which inside a Hydra
    multirun would start the whole sweep again."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    spawns = isinstance(launcher, _SubprocessScriptLauncher) and not (
        trainer.strategy.cluster_environment.creates_processes_externally
    )
    if spawns and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise RuntimeError(
            f"trainer.devices={trainer.num_devices} starts extra local processes, which does not work "
            "inside a Hydra multirun (-m): run each point on its own, or use hydra/launcher=slurm "
            "(srun starts one task per device; see docs/slurm.md)"
        )


# --------------------------------------------------------------------------- reporting
def user_error(err: BaseException) -> Exception | None:
    """The bad-setting or bad-data error behind ``err`` (unwrapping Hydra's instantiate), if any."""
    from hydra.errors import InstantiationException

    from ssr.data.adapters import DataError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ConfigError | DataError):
            return seen
        if not isinstance(seen, InstantiationException):
            return None
        seen = seen.__cause__
    return None


def _hydra_made_it_just_now(run_dir: Path) -> bool:
    """Only Hydra's own files, written by this process: ``.hydra/`` and the job log."""
    marker = run_dir / ".hydra"
    entries = list(run_dir.iterdir())
    return (
        marker.is_dir()
        and marker.stat().st_mtime >= _STARTED - 1
        and all(p.name == ".hydra" or (p.suffix == ".log" and p.is_file()) for p in entries)
    )


def mark_failed(run_dir: Path, error: BaseException) -> str:
    """Remove a run directory Hydra created for this failed run (and the empty dated folders
    above it), or write ``FAILED`` with the error into one that holds earlier work."""
    run_dir = Path(run_dir).resolve()
    cwd = Path.cwd().resolve()
    if not run_dir.is_dir():
        return "none"
    if run_dir != cwd and run_dir not in cwd.parents and _hydra_made_it_just_now(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.parent
        while cwd in parent.parents and not any(parent.iterdir()):  # the empty dated folders
            parent.rmdir()
            parent = parent.parent
        return "removed"
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (run_dir / FAILED_FILE).write_text(f"{stamp} failed before any work:\n{error}\n")
    return "marked"


def _output_dir(cfg: DictConfig) -> Path | None:
    try:
        value = OmegaConf.select(cfg, "paths.output_dir", throw_on_missing=True)
    except Exception:
        return None
    return Path(value) if value else None


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _stop(error: BaseException) -> None:
    sys.stderr.write(f"error: {error}\n")
    sys.stderr.flush()
    sys.exit(EXIT_CODE)


def exits_on_config_error(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a Hydra task: a bad setting or data file ends the run with one line on stderr and
    exit code 2 (in a multirun, the job fails and the sweep goes on), its run directory removed
    or marked ``FAILED``."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as err:
            error = user_error(err)
            if error is None:
                raise
            run_dir = _output_dir(cfg)
            if run_dir is not None and _is_rank_zero():
                mark_failed(run_dir, error)
            if _multirun():
                log.error("%s", error)
                raise
            _stop(error)

    return run


# --------------------------------------------------------------------------- the Hydra callback
def _job_config(config: DictConfig) -> DictConfig:
    """``config`` as the job will see it: ``${hydra:runtime.output_dir}`` = the run directory."""
    from hydra.core.hydra_config import HydraConfig

    cfg = copy.deepcopy(config)
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.runtime.output_dir = os.path.abspath(str(cfg.hydra.run.dir))
    HydraConfig.instance().set_config(cfg)
    return cfg


class PreflightCallback(Callback):
    """Config checks and the resume fingerprint before Hydra creates (or touches) the run dir."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            cfg = _job_config(config)
            check_config(cfg)
            if cfg.ckpt_path:
                from ssr.cli._run import resume_checkpoint

                run_dir = Path(cfg.paths.output_dir)
                check_resume(cfg, run_dir, resume_checkpoint(cfg, run_dir), implicit_defaults())
        except Exception as err:
            error = user_error(err)
            if error is None:  # not a setting: the entry point's own checks will report it
                log.debug("preflight skipped: %r", err)
                return
            _stop(error)
