"""The shipped experiment configs compose into the settings the reproduction and the paper need."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose
from ssr.cli import guard
from ssr.runtime import hardware


def _plain(cfg, key):
    # unresolved: the run directory interpolations need a running Hydra job
    return OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=False)


def test_cpu_reproduction_trains_every_method_the_same_way():
    cfgs = {
        m: compose(["experiment=cpu_squad_smollm2", f"method={m}"]) for m in ("sft", "ssr", "sdft", "s3ft")
    }
    for cfg in cfgs.values():
        assert cfg.model.name_or_path == "embedded:smollm2-135m-instruct"
        assert cfg.data.train.split == "train" and cfg.data.val.split == "test" and cfg.data.balance
        assert set(cfg.data.ood) == {"quac", "nq"}
        assert cfg.eval.suite.name == "local" and cfg.eval.self_drift.enabled and cfg.eval.callback.enabled
        assert cfg.judge._target_.endswith("RuleQAJudge")
    # the same LoRA, steps, learning rate and data for every method: only the method differs
    for key in ("peft", "optim", "trainer", "data", "eval", "generator"):
        assert len({str(_plain(c, key)) for c in cfgs.values()}) == 1, key
    assert [cfgs[m].method.name for m in cfgs] == list(cfgs)


@pytest.mark.parametrize(
    ("experiment", "model"),
    [
        ("paper_mistral7b", "mistralai/Mistral-7B-Instruct-v0.2"),
        ("paper_llama3_8b", "meta-llama/Meta-Llama-3-8B-Instruct"),
    ],
)
def test_paper_recipe(experiment, model, monkeypatch):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.model.name_or_path == model and cfg.model.dtype == "bfloat16"
    assert cfg.experiment_name == experiment
    assert cfg.judge._target_.endswith("OpenAIJudge") and cfg.judge.api_key_env == "JUDGE_API_KEY"
    assert cfg.generator.backend == "vllm"
    assert {"mmlu", "truthfulqa_mc2", "gsm8k", "hellaswag"} <= set(cfg.eval.suite.tasks)
    assert cfg.trainer.strategy.config.zero_optimization.stage == 2
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == cfg.trainer.devices == 8
    # ssr-train's DeepSpeed checks pass on a CUDA machine (accumulation, bf16 agreement)
    monkeypatch.setattr(hardware, "cuda_available", lambda: True)
    guard.check_trainer(cfg.trainer)
    # and stop this CPU machine before any generation
    monkeypatch.setattr(hardware, "cuda_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):
        guard.check_trainer(cfg.trainer)


def test_sample_seed_gives_every_run_seed_the_same_rows_and_eval_items():
    from ssr.cli._hydra import load_records

    def rows(seed, *overrides):
        cfg = compose(["data.max_train_rows=8", *overrides])
        return [r.id for r in load_records(cfg.data, "train", seed)]

    assert rows(1) != rows(2)  # default: each run seed draws its own sample
    assert rows(1, "data.sample_seed=0") == rows(2, "data.sample_seed=0")
    from ssr.cli._hydra import build

    def eval_ids(seed):
        cfg = compose(["eval.tasks.max_rows=4", f"seed={seed}"])
        evaluator = build(cfg.eval)(val_records=load_records(cfg.data, "val", 0), ood={})
        return [r.id for r in evaluator.task_sets["in_domain"]]

    assert eval_ids(1) == eval_ids(2) and len(eval_ids(1)) == 4  # fixed items, whatever the run seed


def _sweep_params(cfg) -> dict[str, list[str]]:
    return {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


def test_replication_v2_sweep_gives_every_method_the_same_budget_and_a_grid():
    from ssr.eval.suite import sample_counts

    params = _sweep_params(compose(["experiment=cpu_replication_v2"]))
    methods = params["method"]
    assert set(methods) == {"sft", "ssr", "sdft", "s3ft", "dft", "self_only"}
    lrs = sorted(float(v) for v in params["optim.lr"])
    assert len(lrs) >= 3 and 4 <= round(lrs[-1] / lrs[0], 6) <= 10  # the grid: >= 3 values, 4x-10x
    assert params["seed"] == ["1"]  # phase 1: one seed over the grid
    # phase 2: the chosen lr with 3 seeds and the final evaluation (the README's command)
    phase2 = ["experiment=cpu_replication_v2", "eval.final.enabled=true", "seed=1"]
    cfgs = {m: compose([*phase2, f"method={m}", f"optim.lr={lrs[1]}"]) for m in methods}
    for cfg in cfgs.values():
        assert cfg.model.name_or_path == "embedded:smollm2-135m-instruct"
        assert cfg.data.train.split == "train" and cfg.data.val.split == "test" and cfg.data.balance
        assert cfg.data.sample_seed == 0 and set(cfg.data.ood) == {"quac", "nq"}
        assert cfg.judge._target_.endswith("RuleQAJudge") and cfg.peft.r > 0
        assert cfg.eval.kl_task.enabled and cfg.eval.self_drift.enabled and cfg.eval.suite.name == "local"
    # the same data, LoRA, steps, optimiser (but the lr) and evaluation for every method
    for key in ("peft", "optim", "trainer", "data", "eval", "generator", "loss"):
        if key == "loss":  # dft is the one method whose objective is its point
            assert {m: cfgs[m].loss for m in methods} == {m: "dft" if m == "dft" else "ce" for m in methods}
            continue
        assert len({str(_plain(c, key)) for c in cfgs.values()}) == 1, key
    # the final evaluation: >= 300 documents per benchmark (or all it has), MMLU >= 20 x >= 10
    final = cfgs["ssr"].eval.final
    assert final.enabled and final.self_drift.limit is None and final.kl_task.max_rows is None
    limits = OmegaConf.to_container(final.suite.limits)
    counts = sample_counts(list(final.suite.tasks), limits, data_root=cfgs["ssr"].paths.data_root)
    mmlu = {t: n for t, n in counts.items() if t.startswith("ssr_mmlu_")}
    assert len(mmlu) >= 10 and min(mmlu.values()) >= 20
    others = {t: n for t, n in counts.items() if t not in mmlu}
    assert set(others) >= {"ssr_arc_easy", "ssr_arc_challenge", "ssr_piqa", "ssr_hellaswag"}
    assert {"ssr_truthfulqa_mc1", "ssr_truthfulqa_mc2"} <= set(others)
    assert min(others.values()) >= 300, others
    # per epoch: the small defaults of conf/eval/suite/local.yaml; the final one is off in phase 1
    assert cfgs["ssr"].eval.suite.limits == compose([]).eval.suite.limits
    assert not compose(["experiment=cpu_replication_v2"]).eval.final.enabled


def test_replication_v3_learns_a_learnable_task_and_follows_forgetting_along_training():
    from ssr.cli._hydra import build, load_records

    params = _sweep_params(compose(["experiment=cpu_replication_v3"]))
    methods = params["method"]
    assert set(methods) == {"sft", "ssr", "sdft", "s3ft", "dft", "self_only"}
    lrs = sorted(float(v) for v in params["optim.lr"])
    assert len(lrs) >= 3 and 4 <= round(lrs[-1] / lrs[0], 6) <= 10
    phase2 = ["experiment=cpu_replication_v3", "eval.final.enabled=true", "seed=2"]
    cfgs = {m: compose([*phase2, f"method={m}", f"optim.lr={lrs[1]}"]) for m in methods}
    for key in ("peft", "optim", "trainer", "data", "eval", "generator"):  # the same budget for all
        assert len({str(_plain(c, key)) for c in cfgs.values()}) == 1, key
    cfg = cfgs["ssr"]
    assert cfg.data.train.unanswerables == "swapped" and cfg.data.val.unanswerables == "swapped"
    assert cfg.eval.callback.every_n_steps > 0  # an evaluation interval inside the epochs
    assert cfg.eval.ifeval.limit >= 32 and cfg.eval.ifeval.max_gen_toks >= 256  # the curves' subset
    main_job = compose([]).eval.suite.limits  # the curves' MC points: more items than the smoke check
    assert all(cfg.eval.suite.limits[k] >= v for k, v in main_job.items()), cfg.eval.suite.limits
    assert cfg.eval.suite.limits.ssr_arc_easy >= 3 * main_job.ssr_arc_easy
    # the lr-selection rows and the reported test rows are disjoint in-domain validation rows
    val = load_records(cfg.data, "val", cfg.seed)
    sets = build(cfg.eval)(val_records=val, ood={}).task_sets
    assert len(sets["in_domain"]) == cfg.eval.tasks.max_rows
    assert len(sets["in_domain_val"]) == cfg.eval.tasks.selection_rows
    assert not {r.id for r in sets["in_domain"]} & {r.id for r in sets["in_domain_val"]}
    final = cfg.eval.final
    assert final.enabled and final.self_drift.limit is None and final.kl_task.max_rows is None
    assert final.suite.limits.default >= 300 and final.suite.limits.ssr_mmlu >= 20
    # over-refusal on every answerable out-of-domain row
    ood = {str(name): build(node) for name, node in cfg.data.ood.items()}
    final_sets = build(cfg.eval)(val_records=val, ood=ood).final.task_sets
    assert set(final_sets) == {"ood_quac_answerable", "ood_nq_answerable"}
    for name, records in ood.items():
        assert len(final_sets[f"ood_{name}_answerable"]) == sum(r.answerable for r in records) > 300


_TRAIN_STUB = """#!/usr/bin/env bash
# ssr-train stand-in: records its call, writes the records run.sh keeps
for a in "$@"; do case $a in hydra.run.dir=*) dir=${a#hydra.run.dir=};; esac; done
echo "$*" >> "$CALLS"
mkdir -p "$dir/.hydra" && echo '{}' > "$dir/summary.json" && echo '{}' > "$dir/.hydra/config.yaml"
case " $* " in *" eval.final.enabled=true "*) mkdir -p "$dir/eval_items/final";; esac
"""
_EVAL_STUB = """#!/usr/bin/env bash
# ssr-eval +run= stand-in: records its call, adds an over-refusal set's items to the run
for a in "$@"; do case $a in +run=*) run=${a#+run=};; esac; done
echo "$*" >> "$CALLS"
mkdir -p "$run/eval_items/final" && echo '{"id": "1"}' > "$run/eval_items/final/tasks.ood_nq_answerable.jsonl"
"""
_REPORT_STUB = """#!/usr/bin/env bash
# ssr-report stand-in: every method with a kept grid run gets lr 1e-3
runs=$1 out=${@: -1}
mkdir -p "$out"
python -c "import json, os, sys; json.dump({'chosen_lr': {d.split('_lr')[0]: 1e-3 for d in os.listdir(sys.argv[1])}}, open(sys.argv[2], 'w'))" "$runs" "$out/item_stats.json"
"""


def test_replication_v3_script_resumes_and_answers_sft_vs_ssr_before_the_other_methods(tmp_path):
    """run.sh (stand-ins for ssr-train, ssr-eval and ssr-report): kept runs are skipped; sft and ssr
    get their grid and three seeds with eval.final (seed 1: the grid run resumed) before any other
    method runs; each final run lacking the over-refusal sets gets them from ``ssr-eval +run=``."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments/results/cpu_replication_v3/run.sh"
    here = tmp_path / "experiments/results/cpu_replication_v3"
    here.mkdir(parents=True)
    shutil.copy(script, here / "run.sh")
    kept = here / "runs/grid/sft_lr3.0e-4_s1"  # a run finished in an earlier session
    kept.mkdir(parents=True)
    (kept / "summary.json").write_text("{}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("ssr-train", _TRAIN_STUB), ("ssr-eval", _EVAL_STUB), ("ssr-report", _REPORT_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OUT": str(tmp_path / "out"),
        "CALLS": str(calls),
        "METHODS": "sft ssr dft sdft",
        "LRS": "3.0e-4 1.0e-3 3.0e-3",
        "OTHER_SEEDS": "2",
    }
    env.pop("COMMIT", None)
    subprocess.run(
        ["bash", "experiments/results/cpu_replication_v3/run.sh"], cwd=tmp_path, env=env, check=True
    )

    def runs() -> list[str]:
        lines = calls.read_text().splitlines() if calls.exists() else []
        return [
            next(a.split("=", 1)[1] for a in line.split() if a.startswith("hydra.run.dir=")) for line in lines
        ]

    out = tmp_path / "out"
    order = [str(Path(r).relative_to(out)) for r in runs()]
    assert order == [
        "grid/sft_lr1.0e-3_s1",  # sft 3e-4 was kept: skipped
        "grid/sft_lr3.0e-3_s1",
        "grid/ssr_lr3.0e-4_s1",
        "grid/ssr_lr1.0e-3_s1",
        "grid/ssr_lr3.0e-3_s1",
        "grid/sft_lr1.0e-3_s1",  # seed 1 at the chosen lr: the grid run resumed for eval.final
        "over_refusal/sft_lr1.0e-3_s1",  # its final records lack the over-refusal sets: added
        "grid/ssr_lr1.0e-3_s1",  # seed by seed: an interrupted budget leaves paired seeds
        "over_refusal/ssr_lr1.0e-3_s1",
        "seeds/sft_lr1.0e-3_s2",
        "over_refusal/sft_lr1.0e-3_s2",
        "seeds/ssr_lr1.0e-3_s2",
        "over_refusal/ssr_lr1.0e-3_s2",
        "seeds/sft_lr1.0e-3_s3",
        "over_refusal/sft_lr1.0e-3_s3",
        "seeds/ssr_lr1.0e-3_s3",
        "over_refusal/ssr_lr1.0e-3_s3",
        "grid/dft_lr1.0e-3_s1",  # only now the other methods, lr by lr: sft's and ssr's lr first,
        "grid/sdft_lr1.0e-3_s1",
        "grid/dft_lr3.0e-3_s1",  # then the others from the largest down
        "grid/sdft_lr3.0e-3_s1",
        "grid/dft_lr3.0e-4_s1",
        "grid/sdft_lr3.0e-4_s1",
        "grid/dft_lr1.0e-3_s1",
        "over_refusal/dft_lr1.0e-3_s1",
        "grid/sdft_lr1.0e-3_s1",
        "over_refusal/sdft_lr1.0e-3_s1",
        "seeds/dft_lr1.0e-3_s2",
        "over_refusal/dft_lr1.0e-3_s2",
        "seeds/sdft_lr1.0e-3_s2",
        "over_refusal/sdft_lr1.0e-3_s2",
    ]
    lines = calls.read_text().splitlines()
    assert "ckpt_path=last" in lines[5] and "eval.final.enabled=true" in lines[5] and "seed=1" in lines[5]
    assert all("eval.final.enabled=true" not in line for line in lines[:5])
    assert f"+run={out}/grid/sft_lr1.0e-3_s1" in lines[6] and "+eval.final.ifeval.enabled=false" in lines[6]
    kept_seeds = sorted(p.name for p in (here / "runs/seeds").iterdir())
    assert len(kept_seeds) == 10 and all(
        (here / "runs/seeds" / n / "eval_items/final/tasks.ood_nq_answerable.jsonl").is_file()
        for n in kept_seeds
    )
    # everything kept: a second call runs nothing
    calls.unlink()
    subprocess.run(
        ["bash", "experiments/results/cpu_replication_v3/run.sh"], cwd=tmp_path, env=env, check=True
    )
    assert runs() == []
