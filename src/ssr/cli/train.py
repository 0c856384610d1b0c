"""ssr-train: generate -> judge -> select -> train (LoRA) -> adapter, with drift evaluation."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.util
import json
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from ssr.callbacks import ResumeState
from ssr.cli._hydra import CONF_DIR, load_records, resolve_precision, to_dict
from ssr.cli.guard import exits_on_config_error, preflight_train
from ssr.data.adapters import subsample
from ssr.datamodule import SSRDataModule
from ssr.hardware import configure_threads, process_age_s
from ssr.logging_utils import TrackerLogging
from ssr.methods import MethodConfig
from ssr.module import SSRModule
from ssr.records import Record

log = logging.getLogger("ssr.train")


def build_datamodule(cfg: DictConfig, run_dir: Path) -> SSRDataModule:
    method = MethodConfig(**to_dict(cfg.method))
    judge = instantiate(cfg.judge) if method.needs_judge and cfg.get("judge") else None
    return SSRDataModule(
        train_records=load_records(cfg.data, "train", cfg.seed),
        val_records=load_records(cfg.data, "val", cfg.seed),
        model=to_dict(cfg.model),
        method=method,
        prompt=to_dict(cfg.prompt),
        judge=judge,
        generator=to_dict(cfg.generator),
        run_dir=str(run_dir),
        max_length=cfg.data.max_length,
        batch_size=cfg.data.batch_size,
        val_batch_size=cfg.data.get("val_batch_size"),
        num_workers=cfg.data.get("num_workers", 0),
        packing=bool(cfg.data.get("packing", False)),
        seed=cfg.seed,
        cache_dir=cfg.paths.get("cache_dir"),
    )


def training_loss(cfg: DictConfig) -> str:
    """``loss=`` (ce | dft) when set, else the method's own default (``method.loss``: dft for dft)."""
    return cfg.get("loss") or cfg.method.get("loss", "ce")


def task_sets(cfg: DictConfig, val_records: list[Record]) -> dict[str, list[Record]]:
    """Held-out grounded-QA sets scored before and after training: in-domain val + ``data.ood``."""
    tasks = cfg.eval.get("tasks") or {}
    cap = tasks.get("max_rows")
    seed = int(tasks.get("seed", 0))  # the same items for every run, so scores pair up across runs
    sets = (
        {"in_domain": subsample(val_records, max_rows=cap, seed=seed)}
        if tasks.get("in_domain", True) and val_records
        else {}
    )
    for name, node in (cfg.data.get("ood") or {}).items():
        records = instantiate(node)
        balance = any(not r.answerable for r in records)
        sets[f"ood_{name}"] = subsample(records, max_rows=cap, balance=balance, seed=seed)
    return sets


def task_prompt_budget(cfg: DictConfig) -> int:
    """Prompt tokens for the task-metric questions: ``eval.tasks.max_prompt_tokens``, or what
    training holds (``data.max_length`` minus the answer's ``max_new_tokens``); documents are cut."""
    tasks = cfg.eval.get("tasks") or {}
    if tasks.get("max_prompt_tokens") is not None:
        return int(tasks.max_prompt_tokens)
    return max(1, int(cfg.data.max_length) - int(tasks.get("max_new_tokens", 64)))


def build_drift_callback(cfg: DictConfig, datamodule: SSRDataModule, run_dir: Path) -> Any:
    """The generalization-drift callback (lm-eval suite + self-drift + task metrics), if enabled."""
    from ssr.eval.drift_callback import GeneralizationDriftCallback

    ev = cfg.get("eval")
    if not ev or not ev.callback.get("enabled", True):
        return None
    data_root = str(Path(cfg.paths.data_root).resolve())
    os.environ["SSR_DATA_ROOT"] = data_root  # the local lm-eval task YAMLs read it
    tasks = ev.get("tasks") or {}
    return GeneralizationDriftCallback.from_config(
        to_dict(ev),
        tokenizer=datamodule.tokenizer,
        run_dir=str(run_dir),
        data_root=data_root,
        task_sets=task_sets(cfg, datamodule.val_records),
        prompt=datamodule.prompt,
        task_every_epoch=bool(tasks.get("every_epoch", False)),
        task_max_new_tokens=int(tasks.get("max_new_tokens", 64)),
        task_max_prompt_tokens=task_prompt_budget(cfg),
    )


def build_trainer(cfg: DictConfig, extra_callbacks: list[Any] | None = None) -> L.Trainer:
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks + (extra_callbacks or []))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_trainer_config(trainer_cfg: DictConfig, export_merged: bool = False) -> None:
    """Fail before any generation on trainer settings that cannot run on this machine."""
    strategy = trainer_cfg.get("strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    if "deepspeed" not in target.lower():
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise RuntimeError(
            "trainer.strategy is DeepSpeed (trainer=deepspeed_*) but the deepspeed package is missing: "
            "pip install 'ssr[deepspeed]'"
        )
    if not _cuda_available():
        raise RuntimeError(
            "trainer.strategy is DeepSpeed (trainer=deepspeed_*), which Lightning runs on CUDA GPUs only, "
            "and no CUDA device is visible here: use trainer=cpu or trainer=ddp on this machine"
        )
    ds_config = (strategy.get("config") or {}) if isinstance(strategy, DictConfig) else {}
    if "gradient_accumulation_steps" in ds_config:
        raise ValueError(
            "trainer.strategy.config.gradient_accumulation_steps must not be set: "
            "use trainer.accumulate_grad_batches (Lightning passes it to DeepSpeed)"
        )
    bf16 = bool((ds_config.get("bf16") or {}).get("enabled", False))
    if bf16 != str(trainer_cfg.get("precision")).startswith("bf16"):
        raise ValueError(
            f"trainer.strategy.config.bf16.enabled={bf16} disagrees with "
            f"trainer.precision={trainer_cfg.get('precision')}: set both to bf16 or neither"
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


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path``, with ``last`` meaning the newest complete checkpoint of this run.

    Lightning's own ``last`` looks only at ``last.ckpt``, which a kill between writing
    ``step<N>.ckpt`` and ``last.ckpt`` leaves missing or one save behind. A file that is not a
    complete zip archive (a copy cut short) is skipped; no checkpoint yet means a fresh start.
    """
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path != "last":
        return ckpt_path
    node = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    folder = Path(node.get("dirpath") or run_dir / "checkpoints")
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for path in candidates:
        if path.is_dir() or zipfile.is_zipfile(path):  # DeepSpeed writes a directory
            log.info("ckpt_path=last: resuming from %s", path)
            return str(path)
        log.warning("ckpt_path=last: skipping %s (incomplete; interrupted while written)", path)
    log.info("ckpt_path=last: no checkpoint in %s yet; starting from scratch", folder)
    return None


def local_processes(trainer: L.Trainer) -> int:
    """Processes of this run sharing this machine's cores (CPU DDP ranks), else 1."""
    from lightning.pytorch.accelerators import CPUAccelerator

    return trainer.num_devices if isinstance(trainer.accelerator, CPUAccelerator) else 1


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns (and writes) its summary."""
    t0 = time.perf_counter()
    check_trainer_config(cfg.trainer, export_merged=bool(cfg.get("export_merged")))
    run_dir = Path(cfg.paths.output_dir)
    ckpt = resume_checkpoint(cfg, run_dir)
    run_record = preflight_train(cfg, run_dir, ckpt)  # bad settings / a changed resume stop here
    # after the fingerprint: it keeps the setting (`auto`), so a requeue onto another CPU resumes
    precision = resolve_precision(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg, run_dir)
    module = SSRModule(
        model=to_dict(cfg.model), peft=to_dict(cfg.get("peft")), loss=training_loss(cfg), **to_dict(cfg.optim)
    )
    drift = build_drift_callback(cfg, datamodule, run_dir)
    trackers = TrackerLogging(to_dict(cfg), run_dir / "selection_stats.json")
    extra = [trackers, ResumeState(run_record)] + ([drift] if drift else [])
    trainer = build_trainer(cfg, extra_callbacks=extra)
    check_launch(trainer)
    threads = configure_threads(local_processes(trainer))
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    fit_s = time.perf_counter() - t_fit
    adapter = module.save_adapter(run_dir / "adapter")  # every rank: ZeRO-3 gathers the shards
    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        if cfg.get("export_merged") and cfg.get("peft"):
            module.model.merge_and_unload().save_pretrained(run_dir / "merged", safe_serialization=True)
            datamodule.tokenizer.save_pretrained(run_dir / "merged")
        datamodule.tokenizer.save_pretrained(adapter)
        stats_path = run_dir / "selection_stats.json"
        summary = {
            "method": cfg.method.name,
            "seed": cfg.seed,
            "lr": float(cfg.optim.lr),
            "run_dir": str(run_dir),
            "adapter": str(adapter),
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "train_rows": len(datamodule.train_rows),
            "selection": json.loads(stats_path.read_text()) if stats_path.exists() else None,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
            "precision": {**precision.to_dict(), "threads": threads},
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        summary["stages"] = stage_seconds(
            summary["selection"], drift.records if drift else [], fit_s, summary["wall_s"]
        )
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        sel = summary["selection"] or {}
        log.info(
            "selection by source: %s | stages: %s", sel.get("by_source"), sel.get("extra", {}).get("stages")
        )
        log.info("stage seconds: %s", json.dumps(summary["stages"]))
        log.info("done in %.1fs; adapter: %s", summary["wall_s"], adapter)
    trackers.finish(trainer, summary)
    return summary


def stage_seconds(
    selection: dict[str, Any] | None, drift_records: list[dict[str, Any]], fit_s: float, total_s: float
) -> dict[str, Any]:
    """Wall seconds per pipeline stage, from the run's own records (selection stats, drift records).

    ``generate``/``judge``: rows computed this run (0 when cached); ``base_eval``: suite +
    self-drift + task metrics of the base model (0 when reused); per epoch: ``train`` (training and
    validation) and ``eval``; ``task_metrics``: their share of the evaluations; ``fit``: all of
    ``trainer.fit`` (data preparation, i.e. generation and judging, included); ``total``: ``train()``.
    """
    stages = ((selection or {}).get("extra") or {}).get("stages") or {}
    base = next((r for r in drift_records if r["stage"] == "base"), None)
    seconds = lambda r, k: float((r or {}).get("seconds", {}).get(k, 0.0))  # noqa: E731
    epochs = [
        {"epoch": r["epoch"], "train": seconds(r, "epoch"), "eval": seconds(r, "eval")}
        for r in drift_records
        if r["stage"] != "base"
    ]
    return {
        "generate": round(sum(v["seconds"] for k, v in stages.items() if k.startswith("generate")), 2),
        "judge": round(sum(v["seconds"] for k, v in stages.items() if k.startswith("judge")), 2),
        "base_eval": 0.0 if base is None or base.get("cached") else seconds(base, "eval"),
        "base_eval_cached": bool(base and base.get("cached")),
        "epochs": epochs,
        "task_metrics": round(sum(seconds(r, "tasks") for r in drift_records if not r.get("cached")), 2),
        "fit": round(fit_s, 2),
        "total": round(total_s, 2),
        "process": round(process_age_s(), 2),
    }


def release_memory() -> None:
    """Hand what a finished job freed back to the OS before the next job of a sweep.

    Hydra's basic launcher runs every ``-m`` job in one process: without this, the model, the
    Lightning objects (reference cycles) and glibc's cached heap of the last job stay resident,
    and a CPU sweep's RSS grew by several GB per job.
    """
    gc.collect()
    if _cuda_available():
        import torch

        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exits_on_config_error
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    finally:
        release_memory()


if __name__ == "__main__":
    main()
