"""Trainer configs for DDP and DeepSpeed ZeRO-2/3/3-offload, the no-CUDA guard, and ZeRO-3 on CPU.

Lightning runs DeepSpeed on CUDA only. The config tests build each strategy and let Lightning
format its DeepSpeed config as it would at fit time. `CPUDeepSpeedStrategy` (test-only) lifts the
CUDA check so the real ZeRO code paths (sharded model init, gathered adapter save, sharded
checkpoints, resume) run on CPU over gloo; the `gpu` test runs the shipped config on CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import DeepSpeedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy

from conftest import compose
from cpu_deepspeed import cpu_deepspeed

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed: DS_BUILD_OPS=0 pip install --no-build-isolation 'ssr[deepspeed]'",
)


@pytest.fixture(autouse=True)
def _restore_environ():
    """Lightning's DeepSpeed setup writes MASTER_PORT, RANK, ... into os.environ; later tests and
    their subprocesses must not see them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def formatted_strategy(*overrides: str) -> tuple[DeepSpeedStrategy, object]:
    """Instantiate `trainer.strategy` and format its DeepSpeed config as Lightning does at fit time."""
    cfg = compose(list(overrides))
    strategy = instantiate(cfg.trainer.strategy)
    trainer = SimpleNamespace(
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
    )
    strategy._lightning_module = SimpleNamespace(trainer=trainer)
    strategy.precision_plugin = DeepSpeedPrecision(cfg.trainer.precision)
    strategy._format_config()
    return strategy, cfg


@needs_deepspeed
@pytest.mark.parametrize(
    "option, stage, offload",
    [("deepspeed_zero2", 2, False), ("deepspeed_zero3", 3, False), ("deepspeed_zero3_offload", 3, True)],
)
def test_deepspeed_trainer_config(option, stage, offload):
    strategy, cfg = formatted_strategy(
        f"trainer={option}", "trainer.accumulate_grad_batches=4", "data.batch_size=2"
    )
    ds = strategy.config
    assert type(strategy) is DeepSpeedStrategy and isinstance(ds, dict)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert ds["zero_optimization"]["stage"] == stage and strategy.zero_stage_3 == (stage == 3)
    assert ds["bf16"] == {"enabled": True} and "fp16" not in ds
    # accumulation and clipping come from the Trainer, batch size from the data config
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_clipping"] == cfg.trainer.gradient_clip_val == 1.0
    assert strategy.exclude_frozen_parameters, "LoRA checkpoints must hold the adapter only"
    zero = ds["zero_optimization"]
    assert ("offload_optimizer" in zero) == offload and ("offload_param" in zero) == offload
    if offload:
        assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"


def test_ddp_trainer_config():
    cfg = compose(["trainer=ddp"])
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.accelerator) == ("ddp", 2, "auto")
    assert cfg.trainer.use_distributed_sampler is False, "the DataModule shards batches itself"


def test_deepspeed_without_cuda_fails_before_generation(tiny_cfg, monkeypatch):
    import ssr.cli.train as train_cli
    from ssr.runtime import hardware

    monkeypatch.setattr(hardware, "cuda_available", lambda: False)
    cfg = tiny_cfg("trainer=deepspeed_zero2")
    expected = "CUDA GPUs only.*trainer=cpu" if importlib.util.find_spec("deepspeed") else "pip install"
    with pytest.raises(RuntimeError, match=rf"trainer=deepspeed_\*.*{expected}"):
        train_cli.train(cfg)
    assert not Path(cfg.paths.output_dir).exists(), "nothing may run before the check"
    assert not (Path(cfg.paths.cache_dir) / "generations").exists()


@needs_deepspeed
@pytest.mark.parametrize(
    "override, message",
    [
        ("+trainer.strategy.config.gradient_accumulation_steps=4", "use trainer.accumulate_grad_batches"),
        ("trainer.precision=32-true", r"bf16.enabled=True disagrees with trainer.precision=32-true"),
        ("export_merged=true", "export_merged=true cannot merge ZeRO-3 shards"),
    ],
)
def test_deepspeed_config_mistakes_are_named(tiny_cfg, monkeypatch, override, message):
    import ssr.cli.train as train_cli
    from ssr.runtime import hardware

    monkeypatch.setattr(hardware, "cuda_available", lambda: True)
    trainer = "deepspeed_zero3" if override.startswith("export_merged") else "deepspeed_zero2"
    with pytest.raises(ValueError, match=message):
        train_cli.train(tiny_cfg(f"trainer={trainer}", override))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random model saved as a local checkpoint, so ZeRO-3 loads it through from_pretrained."""
    from ssr.models.loading import ModelSpec, load_model

    path = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = load_model(ModelSpec(name_or_path="tiny-random"))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _first_losses(run: Path) -> list[float]:
    import csv

    with open(run / "metrics.csv") as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


@needs_deepspeed
def test_zero2_on_cpu_trains_and_writes_adapter_only_checkpoints(tiny_cfg, monkeypatch):
    import ssr.cli.train as train_cli
    from ssr.runtime import hardware

    monkeypatch.setattr(hardware, "cuda_available", lambda: True)
    cfg = tiny_cfg("method=sft", "trainer.accumulate_grad_batches=2", *cpu_deepspeed("deepspeed_zero2"))
    summary = train_cli.train(cfg)
    run = Path(cfg.paths.output_dir)
    assert summary["global_step"] == 2, "4 batches, 2 per optimizer step"
    ours = _adapter(run)
    assert ours and all("lora_" in k for k in ours)
    assert all(ours[k].abs().max() > 0 for k in ours if "lora_B" in k), "trained"
    states = torch.load(
        run / "checkpoints" / "last.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt", weights_only=False
    )
    assert states["module"] and all("lora_" in k for k in states["module"]), "no frozen weights"
    assert states["ds_config"]["gradient_accumulation_steps"] == 2


@needs_deepspeed
@pytest.mark.slow
def test_zero3_on_cpu_shards_trains_saves_the_gathered_adapter_and_resumes(
    tiny_cfg, tiny_model_dir, monkeypatch
):
    """ZeRO-3 (the DeepSpeed code path, on CPU): the base weights load into the shards, LoRA starts
    at zero, the adapter is gathered from the shards, checkpoints hold no frozen weights, and a run
    resumed from a sharded checkpoint ends where an uninterrupted one does."""
    import ssr.cli.train as train_cli
    from ssr.runtime import hardware

    monkeypatch.setattr(hardware, "cuda_available", lambda: True)
    common = (
        "method=sft",
        "model=hub",
        f"model.name_or_path={tiny_model_dir}",
        "model.dtype=float32",
        "trainer.log_every_n_steps=1",
        "trainer.max_epochs=2",
        "optim.warmup_ratio=0",
        "peft.lora_dropout=0",  # Lightning does not checkpoint RNG streams; keep resume exact
    )
    zero3 = cpu_deepspeed("deepspeed_zero3")
    plain = tiny_cfg(*common)
    plain.paths.output_dir = str(Path(plain.paths.output_dir).with_name("plain"))
    train_cli.train(plain)
    sharded = tiny_cfg(*common, *zero3)
    summary = train_cli.train(sharded)
    run = Path(sharded.paths.output_dir)

    assert summary["global_step"] == 8
    # same base weights and an identity adapter: the first step's loss matches the plain run's
    assert _first_losses(run)[0] == pytest.approx(_first_losses(Path(plain.paths.output_dir))[0], rel=2e-2)
    ours, ref = _adapter(run), _adapter(Path(plain.paths.output_dir))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
    lora_b = [k for k in ours if "lora_B" in k]
    assert lora_b and all(ours[k].abs().max() > 0 for k in lora_b), "adapter gathered from shards"
    assert max((ours[k].float() - ref[k].float()).abs().max().item() for k in lora_b) < 2e-3
    # checkpoints: DeepSpeed directories without the frozen base weights
    ckpt = run / "checkpoints" / "last.ckpt"
    states = torch.load(ckpt / "checkpoint" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)
    frozen = [k for k, v in states["module"].items() if "lora_" not in k and v.numel()]  # tied: 0 elems
    assert not frozen, f"frozen weights in the ZeRO-3 checkpoint: {frozen[:3]}"
    model_bytes = sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in ckpt.rglob("*.pt")) < model_bytes / 10

    # resume from the epoch-1 checkpoint (step 4) and finish epoch 2
    resumed = tiny_cfg(*common, *zero3, f"ckpt_path={run / 'checkpoints' / 'step4.ckpt'}")
    resumed.paths.output_dir = str(run.with_name("resumed"))
    again = train_cli.train(resumed)
    assert again["global_step"] == 8
    final = _adapter(run.with_name("resumed"))
    assert max((final[k].float() - ours[k].float()).abs().max().item() for k in lora_b) < 1e-5
    assert json.loads((run.with_name("resumed") / "summary.json").read_text())["epochs"] == 2


def _zero3_drift(model_dir: Path) -> tuple[str, ...]:
    """The tiny checkpoint in float32 and a small drift evaluation with every measure on."""
    return (
        "method=sft",
        "model=hub",
        f"model.name_or_path={model_dir}",
        "model.dtype=float32",
        "eval.callback.enabled=true",
        "eval.suite.tasks=[ssr_arc_easy]",
        "eval.suite.limits=3",
        "eval.suite.batch_size=4",
        "eval.self_drift={enabled: true, limit: 3, max_new_tokens: 4, batch_size: 2, cache: false}",
        "eval.kl_task.max_rows=3",
        "eval.ifeval={enabled: true, limit: 2, max_gen_toks: 4, batch_size: 2, cache: false}",
        "eval.tasks.max_rows=3",
        "eval.tasks.max_new_tokens=4",
        "eval.callback.cache_base=false",
    )


def _check_drift_record(run: Path) -> dict:
    """drift.json with the base and epoch 0, every measure in each; self-drift and kl_task are 0 for
    the base against its own answers and move with training."""
    drift = json.loads((run / "drift.json").read_text())
    base, epochs = drift["base"], drift["epochs"]
    assert [e["epoch"] for e in epochs] == [0]
    for record in (base, *epochs):
        assert set(record["scores"]) == {"ssr_arc_easy", "self_drift", "kl_task", "ifeval"}
    assert base["scores"]["self_drift"]["nll_increase"] == pytest.approx(0.0, abs=1e-6)
    assert base["scores"]["kl_task"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert base["scores"]["ifeval"]["n"] == 2 and set(base["tasks"]) == {"in_domain"}
    assert epochs[0]["scores"]["kl_task"]["kl"] != 0.0, "the trained adapter moved the answers' NLL"
    assert (run / "eval_items" / "epoch_0" / "ifeval.jsonl").is_file()
    return drift


@needs_deepspeed
@pytest.mark.slow
def test_zero3_on_cpu_writes_a_drift_record(tiny_cfg, tiny_model_dir, monkeypatch):
    """ZeRO-3 runs the drift evaluation (it used to be skipped): every forward gathers the
    partitioned weights, generation goes through hf's generate (the continuous engine reads weights
    directly), and the record holds every measure: the suite, self-drift and kl_task (0 for the
    base against its own answers), IFEval and the task metrics."""
    import ssr.cli.train as train_cli
    from ssr.runtime import hardware

    monkeypatch.setattr(hardware, "cuda_available", lambda: True)
    cfg = tiny_cfg(*_zero3_drift(tiny_model_dir), *cpu_deepspeed("deepspeed_zero3"))
    summary = train_cli.train(cfg)
    run = Path(cfg.paths.output_dir)
    drift = _check_drift_record(run)
    assert "ranks" not in drift["base"]  # one process
    engines = summary["generation_engine"]
    assert engines and all(e["engine"] == "hf" and "ZeRO-3" in e["reason"] for e in engines), engines


@needs_deepspeed
@pytest.mark.slow
def test_zero3_on_two_cpu_processes_evaluates_in_lockstep(tmp_path, tiny_model_dir):
    """Two ZeRO-3 ranks (the CLI, Lightning starting rank 1): both run every forward of the
    evaluation in the same order, each gathering the other's weight shards (hf generate with
    synced_gpus), and rank 0 writes the record."""
    import subprocess
    import sys

    from cli_runs import cli_env
    from conftest import TINY_OVERRIDES

    run = tmp_path / "run"
    app = Path(__file__).parent / "apps" / "cpu_deepspeed_train.py"
    cmd = [
        sys.executable, str(app), *TINY_OVERRIDES, *_zero3_drift(tiny_model_dir),
        *cpu_deepspeed("deepspeed_zero3"), "trainer.devices=2",
        f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    drift = _check_drift_record(run)
    for record in (drift["base"], *drift["epochs"]):
        ranks = record["ranks"]
        assert (ranks["world_size"], ranks["mode"]) == (2, "lockstep")
        assert ranks["items"]["self_drift"] == [3] and ranks["items"]["ifeval"] == [2]  # all, on each
    assert (run / "train_ddp_process_1.log").is_file()


@needs_deepspeed
@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="Lightning runs DeepSpeed on CUDA only; no CUDA here"
)
def test_zero2_trains_a_step_on_cuda(tiny_cfg):
    from ssr.cli.train import train

    summary = train(tiny_cfg("method=sft", "trainer=deepspeed_zero2", "trainer.max_steps=2"))
    assert summary["global_step"] == 2
    assert (Path(summary["adapter"]) / "adapter_model.safetensors").is_file()
