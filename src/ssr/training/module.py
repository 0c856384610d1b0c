"""LightningModule: response-only loss (cross-entropy, or DFT: ``loss=dft``) over mixed self/gold
targets, LoRA.

bf16 autocast comes from the Trainer's ``precision: bf16-mixed`` (CPU and GPU) or DeepSpeed's bf16.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from transformers import PreTrainedModel

from ssr.models.loading import (
    SPEC_FILE,
    ModelSpec,
    apply_peft,
    cast_frozen_linear_weights,
    import_model_classes,
    load_model,
)
from ssr.models.logits import response_logits
from ssr.models.losses import LOSSES, summed_token_loss
from ssr.runtime.precision import autocast_dtype, trainer_autocast

log = logging.getLogger(__name__)


def response_token_loss(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    loss: str = "ce",
) -> torch.Tensor:
    """Summed next-token loss (``ce`` or ``dft``, :mod:`ssr.models.losses`) over response positions only."""
    logits, targets, _ = response_logits(model, input_ids, attention_mask, labels, position_ids)
    return summed_token_loss(logits, targets, loss)


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay to ``min_lr_ratio * lr`` (``optim`` in conf/train.yaml)."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.1
    gradient_checkpointing: bool = False


class SSRModule(L.LightningModule):
    """Fine-tunes a causal LM on pre-selected targets (the method lives in the DataModule).

    The loss is normalised by the number of response tokens in the whole optimizer step:
    summed over every micro-batch of the gradient-accumulation window and every data-parallel
    rank (gradients are rescaled once before the optimizer step). Under DeepSpeed, whose engine
    owns the gradients, each micro-batch is normalised by its own token count instead.
    """

    def __init__(
        self,
        model: ModelSpec,
        optim: OptimConfig,
        peft: dict[str, Any] | None = None,
        precast_frozen_weights: bool = True,
        loss: str = "ce",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")
        # flat, as the loggers (W&B config, hparams.yaml) have always shown them
        hparams = {"model": asdict(model), "peft": peft, **asdict(optim), "loss": loss}
        self.save_hyperparameters({**hparams, "precast_frozen_weights": precast_frozen_weights})
        self.spec, self.optim, self.peft_cfg = model, optim, peft
        self.precast_frozen_weights = precast_frozen_weights
        self.loss = loss
        self.model: PreTrainedModel | None = None
        self.strict_loading = False  # LoRA checkpoints hold only the trainable weights
        self._window_tokens = 0
        self._t_batch = 0.0

    # -- model ---------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the model here so DeepSpeed ZeRO-3 can shard it while it is created."""
        if self.model is not None:
            return
        if self._zero3:
            from deepspeed.runtime.zero.partition_parameters import (
                restore_init_context,
                shutdown_init_context,
            )

            shutdown_init_context()  # the model's classes defined outside zero.Init (see there)
            try:
                import_model_classes(self.spec)
            finally:
                restore_init_context()
            # from_pretrained must see the ZeRO-3 config to load real weights into sharded params;
            # the config is global (weakref), so it is set for this load only.
            from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

            hf_ds_config = HfDeepSpeedConfig(self.trainer.strategy.config)
            try:
                model, _ = load_model(self.spec)
            finally:
                unset_hf_deepspeed_config()
                del hf_ds_config
        else:
            model, _ = load_model(self.spec)
        if self.optim.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        if self._zero3 and self.peft_cfg:
            # Create the adapter outside zero.Init: PEFT's init (lora_B = 0) cannot reach
            # already-partitioned tensors; deepspeed.initialize shards the new weights later.
            from deepspeed.runtime.zero.partition_parameters import (
                restore_init_context,
                shutdown_init_context,
            )

            shutdown_init_context()
            try:
                self.model = apply_peft(model, self.peft_cfg)
            finally:
                restore_init_context()
        else:
            self.model = apply_peft(model, self.peft_cfg)
        self.model.train()  # from_pretrained returns eval mode; Lightning expects train mode here
        if self.precast_frozen_weights and self._autocast_dtype() is not None:
            n = cast_frozen_linear_weights(self.model, self._autocast_dtype())
            log.info(
                "stored %d frozen linear weights in %s (bit-identical under autocast)",
                n,
                self._autocast_dtype(),
            )
        sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in self.model.parameters()]
        n_train, n_all = sum(n for n, grad in sizes if grad), sum(n for n, _ in sizes)  # ZeRO-3: ds_numel
        log.info("trainable parameters: %d / %d (%.2f%%)", n_train, n_all, 100 * n_train / n_all)

    def _autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the attached Trainer's ``*-mixed`` precision (None otherwise)."""
        trainer = self._trainer
        if trainer is None or type(trainer.strategy).__name__.startswith("DeepSpeed"):
            return None
        return autocast_dtype(trainer_autocast(trainer))

    @property
    def _deepspeed(self) -> bool:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return self._trainer is not None and isinstance(self.trainer.strategy, DeepSpeedStrategy)

    @property
    def _zero3(self) -> bool:
        return self._deepspeed and self.trainer.strategy.zero_stage_3

    @property
    def _is_global_zero(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    # -- steps ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._t_batch = time.perf_counter()

    def _batch_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Summed response-token CE of a batch and its response-token count."""
        loss_sum = response_token_loss(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            batch.get("position_ids"),
            loss=self.loss,
        )
        return loss_sum, int(batch["num_response_tokens"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss_sum, n = self._batch_loss(batch)
        self._window_tokens += n
        self.log("train/loss", loss_sum.detach() / max(n, 1), prog_bar=True, batch_size=n)
        if self._deepspeed:
            return loss_sum / max(n, 1)
        # Lightning divides by accumulate_grad_batches; the true normaliser is applied to the grads.
        return loss_sum

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._deepspeed:
            return
        tokens = torch.tensor(float(self._window_tokens), device=self.device)
        world = self.trainer.world_size
        if world > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum")
        # grads hold (1/world) * sum_ranks sum_window loss_sum / accumulate  ->  sum / tokens
        scale = self.trainer.accumulate_grad_batches * world / tokens.clamp(min=1.0)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)
        self._window_tokens = 0

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        dt = time.perf_counter() - self._t_batch
        if dt > 0:
            self.log_dict(
                {
                    "train/tokens_per_s": batch["num_tokens"] / dt,
                    "train/response_tokens_per_s": batch["num_response_tokens"] / dt,
                },
                on_step=True,
                on_epoch=False,
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss_sum, n = self._batch_loss(batch)
        self.log("val/loss", loss_sum / max(n, 1), prog_bar=True, batch_size=n, sync_dist=True)

    def on_train_start(self) -> None:
        if not math.isfinite(self.optim.lr) or self.optim.lr <= 0:
            raise ValueError(f"optim lr must be a positive number, got {self.optim.lr}")

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self._deepspeed and self.trainer.strategy.config.get("zero_optimization", {}).get(
            "offload_optimizer"
        ):
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            opt = DeepSpeedCPUAdam(
                params, lr=self.optim.lr, betas=tuple(self.optim.betas), weight_decay=self.optim.weight_decay
            )
        else:
            opt = torch.optim.AdamW(
                params, lr=self.optim.lr, betas=tuple(self.optim.betas), weight_decay=self.optim.weight_decay
            )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.optim.warmup_ratio * total)
        floor = self.optim.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> Any:
        """With LoRA, the module's state is its trainable weights: checkpoints hold the adapter only.

        Filtering here (not in on_save_checkpoint) also covers DeepSpeed, which builds its checkpoints
        from this state dict and whose exclude_frozen_parameters misses tied aliases of frozen weights
        (lm_head.weight of tied-embedding models).
        """
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        if self.peft_cfg:
            trainable = {prefix + n for n, p in self.named_parameters() if p.requires_grad}
            for key in [k for k in out if k.startswith(prefix) and k not in trainable]:
                del out[key]
        return out

    def save_adapter(self, path: str | Path) -> Path:
        """Write the PEFT adapter (or the full model without LoRA) in Hugging Face format.

        Call it on every rank: under ZeRO-3 the sharded weights are gathered first (a collective),
        then global rank 0 writes.
        """
        path = Path(path)
        state_dict = self._gathered_state_dict() if self._zero3 else None
        if self._is_global_zero:
            self.model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
            # the exact base model (ssr-eval / ssr-export read it: adapter_base_spec)
            (path / SPEC_FILE).write_text(json.dumps(asdict(self.spec), indent=1))
        return path

    def _gathered_state_dict(self) -> dict[str, torch.Tensor]:
        """ZeRO-3: the full weights to save (LoRA: the trainable ones), gathered one parameter
        at a time; rank 0 keeps a CPU copy, the other ranks return an empty dict."""
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        for name, param in self.model.named_parameters():
            if self.peft_cfg and not param.requires_grad:
                continue
            gathered = deepspeed.zero.GatheredParameters([param], modifier_rank=None)
            with gathered if hasattr(param, "ds_id") else nullcontext():
                if self._is_global_zero:
                    out[name] = param.detach().to("cpu", copy=True)
        return out
