"""Resume: `ckpt_path=last` continues a killed run at its last checkpoint with the same weights,
optimizer and scheduler state, and ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch

from ssr.cli.train import train


class KillAtStep(L.Callback):
    """Simulates a crash during the optimizer step after `step` (its checkpoints are on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"killed at step {trainer.global_step}")


def _losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as fh:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


def _ckpt(run: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=False, map_location="cpu")


RESUME = (
    "method=sft",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "peft.lora_dropout=0.05",  # dropout on: the checkpoints carry the RNG states (ResumeState)
)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    """The uninterrupted 2-epoch run both resume cases are compared with."""
    from omegaconf import open_dict

    from conftest import TINY_OVERRIDES, compose

    out = tmp_path_factory.mktemp("whole")
    cfg = compose([*TINY_OVERRIDES, *RESUME])
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.cache_dir = str(out / "run"), str(out / "cache")
        del cfg["hydra"]
    train(cfg)
    return out / "run"


@pytest.mark.parametrize("kill_at", [3, 4], ids=["mid-epoch", "epoch-boundary"])
def test_killed_run_resumes_from_last_checkpoint_like_an_uninterrupted_run(tiny_cfg, whole_run, kill_at):
    killed = tiny_cfg(
        *RESUME, f"+callbacks.kill._target_={__name__}.KillAtStep", f"+callbacks.kill.step={kill_at}"
    )
    run = Path(killed.paths.output_dir)
    with pytest.raises(RuntimeError, match=f"killed at step {kill_at}"):
        train(killed)
    saved = _ckpt(run)
    # checkpoints every 2 steps (tiny config): a kill loses at most the steps since the last one
    assert saved["global_step"] == kill_at - kill_at % 2
    assert all("lora_" in k for k in saved["state_dict"]), "adapter-only checkpoint"

    resumed = tiny_cfg(*RESUME, "ckpt_path=last")  # same run dir: finds checkpoints/last.ckpt
    assert Path(resumed.paths.output_dir) == run
    summary = train(resumed)

    assert summary["global_step"] == 8
    a, b = _ckpt(whole_run), _ckpt(run)
    assert b["global_step"] == a["global_step"] == 8
    # LoRA weights (restored non-strictly from the adapter-only checkpoint, then trained on)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], rtol=0, atol=1e-6)
    # optimizer moments and step counts, scheduler position and learning rate
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i, state in opt_a["state"].items():
        assert int(opt_b["state"][i]["step"]) == int(state["step"]) == 8
        torch.testing.assert_close(opt_b["state"][i]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-6)
        torch.testing.assert_close(opt_b["state"][i]["exp_avg_sq"], state["exp_avg_sq"], rtol=0, atol=1e-8)
    sched_a, sched_b = a["lr_schedulers"][0], b["lr_schedulers"][0]
    assert sched_b["last_epoch"] == sched_a["last_epoch"] == 8
    assert sched_b["_last_lr"] == pytest.approx(sched_a["_last_lr"])
    # the same loss at every step after the resume point
    whole_losses, resumed_losses = _losses(whole_run), _losses(run)
    assert resumed_losses[7] == pytest.approx(whole_losses[7], rel=1e-5)
    assert resumed_losses.keys() == set(range(8)), "metrics of the interrupted part are kept"
    assert resumed_losses[kill_at - kill_at % 2 - 1] == pytest.approx(whole_losses[kill_at - kill_at % 2 - 1])


def test_a_finished_run_resumed_with_eval_final_gets_that_evaluation_only(tiny_cfg):
    """eval.final is not part of what a run trains: resuming a finished run with it on adds the
    larger evaluation (base + model) and leaves the weights, the epochs and their records alone."""
    import json

    from omegaconf import open_dict

    evals = [
        "eval.callback.enabled=true",
        "eval.suite.tasks=[ssr_arc_easy]",
        "+eval.suite.limits={default: 2}",
        "eval.self_drift.limit=2",
        "eval.self_drift.max_new_tokens=4",
        "eval.tasks.max_rows=2",
        "eval.tasks.max_new_tokens=4",
        "eval.kl_task.max_rows=2",
        "eval.ifeval.limit=2",
        "eval.ifeval.max_gen_toks=4",
        "eval.final.ifeval.limit=2",  # not the published 541 x 1280 on a tiny random model
        "eval.final.ifeval.max_gen_toks=4",
        # checkpoints at epoch ends only (as the experiments): the last one holds the epoch's record
        "callbacks.model_checkpoint.every_n_train_steps=0",
    ]
    cfg = tiny_cfg(*evals)
    first = train(cfg)
    run = Path(cfg.paths.output_dir)
    drift = json.loads((run / "drift.json").read_text())
    assert "final" not in drift and not (run / "eval_items" / "final").exists()
    adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()

    cfg = tiny_cfg(
        *evals, "eval.final.enabled=true", "+eval.final.suite.limits={default: 3}", "ckpt_path=last"
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
    second = train(cfg)
    after = json.loads((run / "drift.json").read_text())
    assert after["epochs"] == drift["epochs"] and after["base"] == drift["base"]  # not re-trained
    assert after["final"]["settings"]["suite"]["limits"] == {"default": 3}
    assert len(after["final"]["model"]["scores"]["ssr_arc_easy"]) > 0
    assert len((run / "eval_items" / "final" / "lm_eval.ssr_arc_easy.jsonl").read_text().splitlines()) == 3
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert second["global_step"] == first["global_step"]
    assert second["wall_s_total"] == pytest.approx(first["wall_s"] + second["wall_s"], abs=0.2)
    assert second["stages"]["final_eval"] > 0


def test_ssr_eval_adds_final_task_metrics_to_a_finished_run(tiny_cfg):
    """eval.final.tasks measured in the run (in_domain here) and added afterwards by
    ``ssr-eval +run=`` (over-refusal on every answerable row of an out-of-domain set): both land in
    the run's final records and items, which ssr-report reads; a measure held already is refused."""
    import json

    from omegaconf import open_dict

    from ssr.cli.eval import evaluate
    from ssr.eval.items import load_items
    from ssr.report.runs import generative_keys, load_run

    common = [
        "eval.callback.enabled=true",
        "eval/suite=none",
        "eval.self_drift.limit=2",
        "eval.self_drift.max_new_tokens=4",
        "eval.kl_task.enabled=false",
        "eval.tasks.max_rows=2",
        "eval.tasks.max_new_tokens=4",
        "eval.ifeval.enabled=false",
        "eval.final.enabled=true",
    ]
    cfg = tiny_cfg(*common, "eval.final.tasks={max_rows: 4}")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    before = json.loads((run / "drift.json").read_text())["final"]
    assert before["model"]["tasks"]["in_domain"]["n"] == 4 == before["base"]["tasks"]["in_domain"]["n"]
    assert before["settings"]["tasks"]["max_rows"] == 4
    assert len(load_items(run)["final"]["tasks.in_domain"]) == 4

    ood = ["+data.ood.emb._target_=ssr.data.adapters.embedded_grounded_qa", "+data.ood.emb.split=test"]
    add = [
        *common, *ood,
        "+eval.final.self_drift.enabled=false",  # held already: only the new sets are measured
        "eval.final.tasks={in_domain: false, max_rows: null, ood_max_rows: 6, ood_answerable_only: true}",
    ]  # fmt: skip
    cfg = tiny_cfg(*add)
    with open_dict(cfg):
        cfg.run = str(run)
    evaluate(cfg)
    after = json.loads((run / "drift.json").read_text())["final"]
    for stage in ("base", "model"):
        new = after[stage]["tasks"]["ood_emb_answerable"]
        assert new["n"] == 6 and new["n_unanswerable"] == 0 and 0 <= new["over_refusal"] <= 1
        assert after[stage]["tasks"]["in_domain"] == before[stage]["tasks"]["in_domain"]  # kept
        assert after[stage]["scores"] == before[stage]["scores"]
    assert after["completed"][0]["tasks"] == ["ood_emb_answerable"] and after["completed"][0]["seconds"] > 0
    assert after["settings"]["tasks"] == before["settings"]["tasks"]  # the run's own settings stay
    assert after["completed"][0]["settings"]["tasks"]["ood_answerable_only"] is True
    trained_at = json.loads((run / "summary.json").read_text())["precision"]["precision"]
    assert after["completed"][0]["precision"] == trained_at  # compared as the run compared them
    items = load_items(run)
    for tag in ("final_base", "final"):
        assert len(items[tag]["tasks.ood_emb_answerable"]) == 6 and len(items[tag]["tasks.in_domain"]) == 4
        assert len(items[tag]["self_drift"]) == 2
    assert not (run / ".final_completion").exists()

    (run / "summary.json").write_text(json.dumps({"method": "sft"}))
    report = load_run(run)
    key = "tasks/ood_emb_answerable/over_refusal"
    assert report.final[key] == after["model"]["tasks"]["ood_emb_answerable"]["over_refusal"]
    assert report.base[key] == after["base"]["tasks"]["ood_emb_answerable"]["over_refusal"]
    assert key in generative_keys([report])

    with pytest.raises(ValueError, match=r"hold \['tasks\.ood_emb_answerable'\] already"):
        evaluate(cfg)
    assert json.loads((run / "drift.json").read_text())["final"] == after  # nothing lost
