"""A tiny-model lr-grid sweep (Hydra multirun of the real ssr-train) feeds ssr-report: paired
statistics on the runs' per-item results, the lr chosen per method and the Pareto plot."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from cli_runs import run_train
from conftest import compose
from ssr.cli.report import main as report_main


def test_lr_grid_experiment_sweeps_every_method_over_the_grid():
    cfg = compose(["experiment=cpu_lr_grid"])
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params == {"method": "sft,dft,ssr,self_only", "optim.lr": "1.0e-4,3.0e-4,1.0e-3"}
    assert (
        cfg.eval.kl_task.enabled and cfg.eval.callback.enabled and cfg.judge._target_.endswith("RuleQAJudge")
    )


def test_tiny_lr_sweep_feeds_the_report_and_the_pareto_plot(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_train(
        "-m",
        "method=sft,ssr",
        "optim.lr=1e-4,5e-2",
        "eval.callback.enabled=true",
        "eval/suite=none",
        "eval.self_drift.limit=4",
        "eval.self_drift.max_new_tokens=8",
        "eval.tasks.max_rows=6",
        "eval.tasks.max_new_tokens=8",
        "eval.kl_task.max_rows=6",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
        timeout_s=900,
    )
    out = tmp_path / "report"
    report_main([str(sweep), "--out", str(out)])
    stats = json.loads((out / "item_stats.json").read_text())
    points = {(p["method"], p["lr"]): p for p in stats["pareto"]}
    assert set(points) == {("sft", 1e-4), ("sft", 5e-2), ("ssr", 1e-4), ("ssr", 5e-2)}
    assert sorted(m for (m, _), p in points.items() if p["chosen"]) == ["sft", "ssr"]
    assert all(p["kl_task"] is not None and p["self_drift"] is not None for p in points.values())
    # the large lr moved the policy further from pi0 on the training prompts than the small one
    # (greedy answers of a random model are unlikely under pi0, so training can raise them: the
    # estimate's sign is not fixed there, its size is)
    assert abs(points["sft", 5e-2]["kl_task"]) > 3 * abs(points["sft", 1e-4]["kl_task"])
    assert (out / "pareto.png").stat().st_size > 1000
    measures = {(r["group"], r["measure"]) for r in stats["change_vs_base"]}
    assert {("sft", "kl_task/kl"), ("ssr", "self_drift/nll"), ("sft", "in_domain/answer_recall")} <= measures
    assert {r["measure"] for r in stats["difference_vs_sft"]} >= {"kl_task/kl", "self_drift/nll"}
    assert all(r["n_items"] > 0 and r["mdd"] >= 0 for r in stats["change_vs_base"])
    md = (out / "results.md").read_text()
    assert "## Paired change vs base" in md and "## Method − SFT" in md and "![pareto](pareto.png)" in md
