"""Configs compose; the module learns; ssr-train writes a PEFT adapter; the real model trains a step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import compose
from ssr.cli._hydra import CONF_DIR
from ssr.data.prompts import PromptConfig
from ssr.data.records import Record
from ssr.data.tokenize import tokenize_all
from ssr.models.loading import ModelSpec
from ssr.training.datamodule import collate
from ssr.training.module import OptimConfig, SSRModule, response_token_loss

GROUPS = {
    p.name: sorted(f.stem for f in p.glob("*.yaml"))
    for p in Path(CONF_DIR).iterdir()
    if p.is_dir() and p.name not in ("hydra", "experiment")
}


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_group_option_composes(group, option):
    cfg = compose([f"{group}={option}"])
    assert "trainer" in cfg and "method" in cfg


def test_experiment_configs_compose():
    for exp in sorted((Path(CONF_DIR) / "experiment").glob("*.yaml")):
        compose([f"experiment={exp.stem}"])


def _batch(tokenizer):
    recs = [
        Record(
            id=str(i),
            question=f"What is item {i}?",
            gold=f"Item {i} is a blue box.",
            document=f"Item {i} is a blue box.",
        )
        for i in range(4)
    ]
    rows, _ = tokenize_all(tokenizer, recs, [r.gold for r in recs], PromptConfig(), 256)
    return collate(rows, tokenizer.pad_token_id)


def test_response_loss_ignores_prompt_positions(tokenizer, tiny_model):
    b = _batch(tokenizer)
    loss = response_token_loss(tiny_model, b["input_ids"], b["attention_mask"], b["labels"])
    logits = tiny_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1), reduction="sum"
    )
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert b["num_response_tokens"] == int((b["labels"] != -100).sum())


def test_tiny_model_loss_falls(tokenizer):
    torch.manual_seed(0)
    module = SSRModule(model=ModelSpec(name_or_path="tiny-random"), optim=OptimConfig(lr=1e-2), peft=None)
    module.configure_model()
    b = _batch(tokenizer)
    opt = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        loss = response_token_loss(module.model, b["input_ids"], b["attention_mask"], b["labels"])
        loss = loss / b["num_response_tokens"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_ssr_train_sft_writes_a_peft_adapter(tiny_cfg):
    from peft import PeftModel

    from ssr.cli.train import train
    from ssr.models.loading import ModelSpec, load_model

    cfg = tiny_cfg("method=sft")
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "metrics.csv").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    base, _ = load_model(ModelSpec(name_or_path="tiny-random", tiny_config=dict(cfg.model.tiny_config)))
    peft_model = PeftModel.from_pretrained(base, run / "adapter")
    assert any("lora_" in n for n, _ in peft_model.named_parameters())
    assert summary["global_step"] == 4 and summary["selection"]["by_source"]["gold"] == 1.0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"]), "adapter-only checkpoint"


@pytest.mark.slow
def test_real_smollm2_loads_from_cache_and_trains_one_step(tokenizer):
    import time

    from ssr.models.loading import embedded_model_dir

    embedded_model_dir()  # converted once per cache
    t0 = time.perf_counter()
    module = SSRModule(
        model=ModelSpec(name_or_path="embedded:smollm2-135m-instruct"),
        optim=OptimConfig(lr=1e-3),
        peft={"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
    )
    module.configure_model()
    load_s = time.perf_counter() - t0
    assert load_s < 10, f"cached load took {load_s:.1f}s"
    b = _batch(tokenizer)
    opt = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = response_token_loss(module.model, b["input_ids"], b["attention_mask"], b["labels"])
    (loss / b["num_response_tokens"]).backward()
    opt.step()
    per_token = loss.item() / b["num_response_tokens"]
    assert 0 < per_token < 6, "a real instruct model should already find these answers likely"


def test_ssr_train_runs_drift_and_task_evaluation(tiny_cfg):
    """The default eval wiring: base + final task metrics (eval.json) and self-drift (drift.json)."""
    import json

    from ssr.cli.train import train

    cfg = tiny_cfg(
        "method=sft",
        "eval.callback.enabled=true",
        "eval/suite=none",
        "eval.self_drift.limit=4",
        "eval.self_drift.max_new_tokens=8",
        "eval.tasks.max_rows=4",
        "eval.tasks.max_new_tokens=8",
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    drift = json.loads((run / "drift.json").read_text())
    assert drift["base"]["stage"] == "base" and len(drift["epochs"]) == 1
    assert "nll_increase" in drift["epochs"][0]["scores"]["self_drift"]
    ev = json.loads((run / "eval.json").read_text())
    for stage in ("base", "final"):
        scores = ev[stage]["tasks"]["in_domain"]
        assert scores["n"] == 4 and 0.0 <= scores["unanswerable_accuracy"] <= 1.0
    # per-item results of both evaluations, the same rows and prompts, pairable by id
    from ssr.eval.items import load_items

    items = load_items(run)
    assert set(items) == {"base", "epoch_0"}
    for tag, stage in (("base", "base"), ("epoch_0", "final")):
        rows = items[tag]["tasks.in_domain"]
        assert len(rows) == 4 and len(items[tag]["self_drift"]) == 4
        mean = sum(r["unanswerable_correct"] for r in rows.values()) / 4
        assert mean == pytest.approx(ev[stage]["tasks"]["in_domain"]["unanswerable_accuracy"])
    assert set(items["base"]["tasks.in_domain"]) == set(items["epoch_0"]["tasks.in_domain"])
    assert json.loads((run / "summary.json").read_text())["lr"] == cfg.optim.lr
    # kl_task beside self-drift: 0 for the base model, per training row in the items
    assert drift["base"]["scores"]["kl_task"]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert drift["epochs"][0]["scores"]["kl_task"]["n_rows"] == 16
    assert len(items["epoch_0"]["kl_task"]) == 16


def test_ssr_eval_scores_a_trained_adapter(tiny_cfg):
    import json

    from omegaconf import open_dict

    from ssr.cli.eval import evaluate
    from ssr.cli.train import train

    cfg = tiny_cfg(
        "method=sft",
        "eval/suite=none",
        "eval.self_drift.enabled=false",
        "eval.tasks.max_rows=4",
        "eval.tasks.max_new_tokens=4",
    )
    train(cfg)
    adapter = Path(cfg.paths.output_dir) / "adapter"
    with open_dict(cfg):
        cfg.adapter = str(adapter)
    result = evaluate(cfg)
    saved = json.loads((adapter / "eval.json").read_text())
    assert saved["final"]["tasks"]["in_domain"]["n"] == 4 == result["final"]["tasks"]["in_domain"]["n"]
    from ssr.eval.items import load_items

    assert len(load_items(adapter)["eval"]["tasks.in_domain"]) == 4


def test_a_finished_job_leaves_no_model_or_trainer_alive(tiny_cfg):
    """Sweep jobs share one process (Hydra's basic launcher): nothing of a job may outlive it."""
    import gc

    import lightning as L

    from ssr.cli._run import release_memory
    from ssr.cli.train import train
    from ssr.training.module import SSRModule

    def alive():
        gc.collect()
        return sum(type(o) in (SSRModule, L.Trainer) for o in gc.get_objects())

    before = alive()
    train(tiny_cfg("method=sft"))
    release_memory()
    assert alive() == before
