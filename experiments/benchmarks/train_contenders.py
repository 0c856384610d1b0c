"""One training contender per process: ssr (Lightning), trl (SFTTrainer) or hf (transformers Trainer).

All three: the embedded SmolLM2-135M-Instruct (fp32 weights; ``args["precision"]``: bf16 autocast
for ``bf16-mixed``, none for ``32-true``), LoRA r16 all-linear,
batch size 8, max length 512, lr 2e-4, grad clip 1.0, the same SQuAD rows with gold targets,
(warmup + steps) optimizer steps on exactly (warmup + steps) * batch rows, one epoch.
Tokens are real (non-padding) tokens; throughput is timed from the end of the last warmup step.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

from common import LORA, LR, MAX_LENGTH, FlopModel, StepLog, bench_records


def _lengths_from(batch: dict[str, Any]) -> tuple[list[int], int]:
    """Real row lengths and the padded token count of a batch (padded or packed)."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return [int(x) for x in mask.sum(1).tolist()], int(mask.numel())
    pos = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    return [b - a for a, b in itertools.pairwise(starts)], len(pos)


def run_ssr(args: dict[str, Any]) -> dict[str, Any]:
    import lightning as L
    import torch

    from ssr.models.loading import ModelSpec, load_tokenizer
    from ssr.selection.methods import MethodConfig
    from ssr.training.datamodule import SSRDataModule
    from ssr.training.module import SSRModule

    spec = ModelSpec(name_or_path=args["model"])
    tok = load_tokenizer(spec)
    n_rows = (args["warmup"] + args["steps"]) * args["batch_size"]
    records = bench_records(n_rows, tok)
    log = StepLog()

    class Timer(L.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            log.begin()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            lengths, padded = _lengths_from(batch)
            log.record_batch(lengths, batch["num_response_tokens"], padded)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            log.end_step()

    with tempfile.TemporaryDirectory() as tmp:
        dm = SSRDataModule(
            train_records=records,
            model=spec,
            method=MethodConfig(name="sft"),
            prompt={},
            run_dir=tmp,
            max_length=MAX_LENGTH,
            batch_size=args["batch_size"],
            cache_dir=str(Path(tmp) / "cache"),
            packing=bool(args.get("packing", False)),
        )
        module = SSRModule(
            model=spec,
            peft=dict(LORA),
            lr=LR,
            precast_frozen_weights=bool(args.get("precast", True)),
        )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision=args.get("precision", "bf16-mixed"),
            max_steps=args["warmup"] + args["steps"],
            max_epochs=1,
            gradient_clip_val=1.0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            callbacks=[Timer()],
            default_root_dir=tmp,
        )
        torch.manual_seed(0)
        trainer.fit(module, datamodule=dm)
        flops = FlopModel.of(module.model)
    return {**log.summary(args["warmup"], flops), "flop_model": flops.__dict__}


def _trainer_args(args: dict[str, Any], out: str, cls: Any, **extra: Any) -> Any:
    return cls(
        output_dir=out,
        per_device_train_batch_size=args["batch_size"],
        max_steps=args["warmup"] + args["steps"],
        learning_rate=LR,
        max_grad_norm=1.0,
        bf16=args.get("precision", "bf16-mixed").startswith("bf16"),
        use_cpu=args.get("device", "cpu") == "cpu",
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **extra,
    )


def _trainer_timing(log: StepLog, base: type) -> type:
    """A Trainer subclass recording each micro-batch's tokens, plus a step-end timing callback."""
    import torch
    from transformers import TrainerCallback

    class Timed(base):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict[str, Any], *a: Any, **kw: Any) -> Any:
            if model.training:
                labels = inputs["labels"]
                lengths = [int(x) for x in inputs["attention_mask"].sum(1).tolist()]
                log.record_batch(lengths, int((labels[:, 1:] != -100).sum()), int(labels.numel()))
            return super().compute_loss(model, inputs, *a, **kw)

    class StepEnd(TrainerCallback):
        def on_train_begin(self, *a: Any, **kw: Any) -> None:
            log.begin()

        def on_step_end(self, *a: Any, **kw: Any) -> None:
            log.end_step()

    Timed.step_end_callback = StepEnd  # type: ignore[attr-defined]
    torch.manual_seed(0)
    return Timed


def prompt_completions(rows: list[tuple[Any, str]], prompt_cfg: Any = None) -> Any:
    """(record, target) pairs as TRL's prompt/completion rows (the chat messages ssr trains on)."""
    from datasets import Dataset

    from ssr.data.prompts import PromptConfig, build_messages

    cfg = prompt_cfg or PromptConfig()
    return Dataset.from_list(
        [
            {"prompt": build_messages(r, cfg), "completion": [{"role": "assistant", "content": t}]}
            for r, t in rows
        ]
    )


def sft_trainer_run(
    model: Any, tok: Any, data: Any, args: dict[str, Any], lora: dict[str, Any], max_length: int
) -> dict[str, Any]:
    """TRL's SFTTrainer (completion-only loss, no gradient checkpointing, no packing), timed per step."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    log = StepLog()
    Timed = _trainer_timing(log, SFTTrainer)
    with tempfile.TemporaryDirectory() as tmp:
        sft_args = _trainer_args(
            args,
            tmp,
            SFTConfig,
            max_length=max_length,
            completion_only_loss=True,
            gradient_checkpointing=False,  # TRL defaults to True; ssr and hf do not checkpoint
            packing=False,
        )
        trainer = Timed(
            model=model,
            args=sft_args,
            train_dataset=data,
            processing_class=tok,
            peft_config=LoraConfig(task_type="CAUSAL_LM", **lora),
            callbacks=[Timed.step_end_callback()],
        )
        trainer.train()
        flops = FlopModel.of(trainer.model)
    return {**log.summary(args["warmup"], flops), "flop_model": flops.__dict__}


def run_trl(args: dict[str, Any]) -> dict[str, Any]:
    from ssr.models.loading import ModelSpec, load_model

    model, tok = load_model(ModelSpec(name_or_path=args["model"]))
    n_rows = (args["warmup"] + args["steps"]) * args["batch_size"]
    records = bench_records(n_rows, tok)
    data = prompt_completions([(r, r.gold) for r in records])
    return sft_trainer_run(model, tok, data, args, dict(LORA), MAX_LENGTH)


def run_hf(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainingArguments

    from ssr.data.prompts import PromptConfig
    from ssr.data.tokenize import IGNORE_INDEX, tokenize_all
    from ssr.models.loading import ModelSpec, apply_peft, load_model

    model, tok = load_model(ModelSpec(name_or_path=args["model"]))
    model = apply_peft(model, dict(LORA))
    n_rows = (args["warmup"] + args["steps"]) * args["batch_size"]
    records = bench_records(n_rows, tok)
    rows, _ = tokenize_all(tok, records, [r.gold for r in records], PromptConfig(), MAX_LENGTH)
    data = [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]

    def pad_collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), IGNORE_INDEX)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (
                torch.tensor(b["input_ids"]),
                torch.tensor(b["labels"]),
                1,
            )
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    log = StepLog()
    Timed = _trainer_timing(log, Trainer)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Timed(
            model=model,
            args=_trainer_args(args, tmp, TrainingArguments, remove_unused_columns=False),
            train_dataset=data,
            data_collator=pad_collate,
            callbacks=[Timed.step_end_callback()],
        )
        trainer.train()
        flops = FlopModel.of(model)
    return {**log.summary(args["warmup"], flops), "flop_model": flops.__dict__}


CONTENDERS = {"ssr": run_ssr, "trl": run_trl, "hf": run_hf}
