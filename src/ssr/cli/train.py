"""ssr-train: generate -> judge -> select -> train (LoRA) -> adapter, with drift evaluation.

The recipe (lightning-hydra-template's shape): the config is composed and checked, then
``instantiate(cfg.data)`` (the DataModule: records, method, judge, generator),
``instantiate(cfg.module)`` (the LightningModule: model, peft, optim), the callbacks and loggers
from their groups, and ``trainer.fit``. docs/architecture.md maps every config group to its module.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from ssr.cli._hydra import CONF_DIR, build, resolve_precision, to_dict
from ssr.cli._run import is_rank_zero, local_processes, release_memory, resume_checkpoint
from ssr.cli.guard import check_launch, check_trainer, exits_on_config_error, preflight_train
from ssr.generation.engine import forget_choices
from ssr.runtime.hardware import configure_threads
from ssr.training.callbacks import TrackerLogging, instantiate_callbacks
from ssr.training.preemption import write_status
from ssr.training.summary import write_summary

log = logging.getLogger("ssr.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns (and writes) its summary."""
    started = time.perf_counter()
    forget_choices()  # summary.json's generation_engine: this run's choices only
    check_trainer(cfg.trainer, export_merged=cfg.export_merged)
    run_dir = Path(cfg.paths.output_dir)
    ckpt = resume_checkpoint(cfg, run_dir, set_aside=True)
    run_record = preflight_train(cfg, run_dir, ckpt)  # bad settings / a changed resume stop here
    # after the fingerprint: it keeps the setting (`auto`), so a requeue onto another CPU resumes
    precision = resolve_precision(cfg)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    module = build(cfg.module)
    enabled = cfg.eval.callback.enabled  # off: the eval settings are not read at all
    evaluator = build(cfg.eval)(val_records=datamodule.val_records, ood=datamodule.ood) if enabled else None
    runtime = {"config": to_dict(cfg), "run_record": run_record, "evaluator": evaluator}
    callbacks = instantiate_callbacks(cfg.callbacks, **runtime)
    preemption = callbacks.get("preemption")  # SIGTERM/SIGINT/requeue: checkpoint, STATUS, exit 128+n
    rank_zero = is_rank_zero()
    if rank_zero:
        write_status(run_dir, running=True)
    if preemption is not None:
        preemption.install()
    try:
        summary = _fit(cfg, run_dir, ckpt, datamodule, module, callbacks, precision, started)
    except BaseException as err:
        if rank_zero:  # a launcher's requeue exits with its own exception: the status says why
            write_status(run_dir, getattr(preemption, "stopped", None) or err)
        raise
    finally:
        if preemption is not None:
            preemption.uninstall()
    if rank_zero:
        write_status(run_dir)
    return summary


def _fit(
    cfg: DictConfig,
    run_dir: Path,
    ckpt: str | None,
    datamodule: Any,
    module: Any,
    callbacks: dict[str, L.Callback],
    precision: Any,
    started: float,
) -> dict[str, Any]:
    """The Trainer, ``fit``, the adapter and the summary (rank 0 writes it; others get {})."""
    loggers = [build(node) for node in cfg.logger.values() if node is not None]
    trainer = build(cfg.trainer, logger=loggers or False, callbacks=list(callbacks.values()))
    check_launch(trainer)
    threads = configure_threads(local_processes(trainer))

    fit_started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    fit_s = time.perf_counter() - fit_started
    adapter = module.save_adapter(run_dir / "adapter")  # every rank: ZeRO-3 gathers the shards
    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        if cfg.export_merged and cfg.peft:
            module.model.merge_and_unload().save_pretrained(run_dir / "merged", safe_serialization=True)
            datamodule.tokenizer.save_pretrained(run_dir / "merged")
        datamodule.tokenizer.save_pretrained(adapter)
        drift = callbacks.get("drift")
        records = drift.records + drift.final_records if drift is not None else []
        summary = write_summary(
            cfg, trainer, datamodule, adapter, precision, threads, records, fit_s, started
        )
    TrackerLogging.finish(trainer, summary)
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exits_on_config_error
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    finally:
        release_memory()


if __name__ == "__main__":
    main()
