"""ssr-train: generate -> judge -> select -> train (LoRA) -> adapter, with drift evaluation."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from ssr.cli._hydra import CONF_DIR, load_records, to_dict
from ssr.datamodule import SSRDataModule
from ssr.methods import MethodConfig
from ssr.module import SSRModule

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


def build_trainer(cfg: DictConfig, extra_callbacks: list[Any] | None = None) -> L.Trainer:
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks + (extra_callbacks or []))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns (and writes) its summary."""
    t0 = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg, run_dir)
    module = SSRModule(model=to_dict(cfg.model), peft=to_dict(cfg.get("peft")), **to_dict(cfg.optim))
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    summary: dict[str, Any] = {}
    if trainer.is_global_zero:
        adapter = module.save_adapter(run_dir / "adapter")
        if cfg.get("export_merged") and cfg.get("peft"):
            module.model.merge_and_unload().save_pretrained(run_dir / "merged", safe_serialization=True)
            datamodule.tokenizer.save_pretrained(run_dir / "merged")
        datamodule.tokenizer.save_pretrained(adapter)
        stats_path = run_dir / "selection_stats.json"
        summary = {
            "method": cfg.method.name,
            "seed": cfg.seed,
            "run_dir": str(run_dir),
            "adapter": str(adapter),
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "train_rows": len(datamodule.train_rows),
            "selection": json.loads(stats_path.read_text()) if stats_path.exists() else None,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        sel = summary["selection"] or {}
        log.info(
            "selection by source: %s | stages: %s", sel.get("by_source"), sel.get("extra", {}).get("stages")
        )
        log.info("done in %.1fs; adapter: %s", summary["wall_s"], adapter)
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
