"""run_suite on a tiny random Llama (fast) and on the real SmolLM2 (slow); suite configs."""

import math
from pathlib import Path

import pytest
import torch

from hub_mirror import hub_task_config
from ssr.eval.suite import SuiteConfig, flatten_results, run_suite, sample_indices
from ssr.models.loading import ModelSpec, load_model, tiny_random_model

ROOT = Path(__file__).resolve().parents[1]


class _FakeTask:
    def __init__(self, n):
        self.eval_docs = list(range(n))


def test_sample_indices_resolve_task_group_and_default_limits():
    loaded = {
        "tasks": {"a": _FakeTask(10), "b": _FakeTask(10), "g1": _FakeTask(10), "c": _FakeTask(3)},
        "group_map": {"grp": ["g1"]},
    }
    out = sample_indices(loaded, {"a": 4, "grp": 2, "default": 5})
    assert {k: len(v) for k, v in out.items()} == {"a": 4, "b": 5, "g1": 2, "c": 3}
    assert out["a"] == [0, 1, 2, 3]
    assert {k: len(v) for k, v in sample_indices(loaded, 0.5).items()} == {"a": 5, "b": 5, "g1": 5, "c": 2}
    assert len(sample_indices(loaded, None)["a"]) == 10
    with pytest.raises(ValueError, match="'a' must be positive"):
        sample_indices(loaded, {"a": 0})


def test_flatten_results_drops_stderr_and_names_filters():
    raw = {
        "results": {
            "t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact_match,strict-match": 0.25},
            "g": {"alias": "g"},
        }
    }
    assert flatten_results(raw) == {"t": {"acc": 0.5, "exact_match_strict-match": 0.25}}


def test_suite_config_rejects_unknown_keys():
    with pytest.raises(KeyError, match="limts"):
        SuiteConfig.from_mapping({"tasks": [], "limts": 3})


def test_run_suite_on_tiny_model_with_per_task_limits(tiny_model, tokenizer, data_root):
    tiny = tiny_model
    tiny.train()
    scores = run_suite(
        tiny,
        tokenizer,
        ["ssr_arc_easy", "ssr_truthfulqa_mc2", "ssr_mmlu"],
        limits={"ssr_arc_easy": 4, "default": 2},
        batch_size=8,
        mixed_precision="bf16",
    )
    assert set(scores) == {
        "ssr_arc_easy",
        "ssr_truthfulqa_mc2",
        "ssr_mmlu",
        *[
            f"ssr_mmlu_{s}"
            for s in (
                "elementary_mathematics",
                "high_school_biology",
                "high_school_geography",
                "nutrition",
                "world_religions",
                "conceptual_physics",
                "high_school_macroeconomics",
                "sociology",
                "marketing",
                "philosophy",
            )
        ],
    }
    assert set(scores["ssr_arc_easy"]) == {"acc", "acc_norm"}
    for metrics in scores.values():
        for value in metrics.values():
            assert 0.0 <= value <= 1.0 and not math.isnan(value)
    # 4 docs -> accuracy is a multiple of 1/4
    assert (scores["ssr_arc_easy"]["acc"] * 4) == pytest.approx(round(scores["ssr_arc_easy"]["acc"] * 4))
    assert not tiny.training  # HFLM switched to eval; the drift callback restores it


def test_peft_wrapped_model_runs_and_matches_base_when_adapter_is_zero(tiny_model, tokenizer, data_root):
    from peft import LoraConfig, get_peft_model

    base = run_suite(tiny_model, tokenizer, ["ssr_piqa"], limits=6, batch_size=6)
    peft_model = get_peft_model(
        tiny_random_model(tokenizer, seed=0), LoraConfig(r=4, target_modules="all-linear")
    )
    wrapped = run_suite(peft_model, tokenizer, ["ssr_piqa"], limits=6, batch_size=6)
    assert wrapped == base  # LoRA B starts at zero


def test_hydra_eval_group_composes_with_nested_suite():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name=None, overrides=["+eval=default"])
        assert cfg.eval.suite.name == "local" and "ssr_arc_easy" in cfg.eval.suite.tasks
        suite = SuiteConfig.from_mapping(cfg.eval.suite)
        assert suite.limits["ssr_mmlu"] == 1
        for name in ("paper", "none"):
            other = compose(config_name=None, overrides=["+eval=default", f"eval/suite={name}"])
            assert SuiteConfig.from_mapping(other.eval.suite).name == name
        assert (
            compose(config_name=None, overrides=["+eval=default", "eval/suite=none"]).eval.suite.tasks == []
        )


@pytest.mark.slow
def test_real_smollm2_two_tasks_and_hub_mirror_agree(data_root):
    torch.manual_seed(0)
    model, tokenizer = load_model(ModelSpec())
    tasks = ["ssr_arc_easy", "ssr_piqa", hub_task_config("ssr_arc_easy"), hub_task_config("ssr_piqa")]
    scores = run_suite(model, tokenizer, tasks, limits=10, batch_size=16, mixed_precision="bf16")
    assert scores["ssr_arc_easy"] == scores["arc_easy"]
    assert scores["ssr_piqa"] == scores["piqa"]
    # SmolLM2-135M-Instruct is far above chance (0.25 / 0.5) on these easy items
    assert scores["ssr_arc_easy"]["acc_norm"] >= 0.3
    assert scores["ssr_piqa"]["acc_norm"] >= 0.5


def test_built_tasks_are_reused_across_evaluations_with_the_scores_of_a_fresh_build(
    tokenizer, tiny_model, data_root, monkeypatch
):
    """The drift callback evaluates the same suite at fit start and after every epoch: lm-eval's
    task objects are built once per process, and reusing them changes no score (other limits too)."""
    from lm_eval.api.task import ConfigurableTask

    from ssr.eval import suite as suite_mod

    tasks = ["ssr_piqa", "ssr_mmlu"]
    built = []
    init = ConfigurableTask.__init__
    monkeypatch.setattr(
        ConfigurableTask, "__init__", lambda self, *a, **k: (built.append(1), init(self, *a, **k))[1]
    )
    suite_mod._BUILT.clear()
    first = suite_mod.run_suite(tiny_model, tokenizer, tasks, limits=3, data_root=data_root)
    n_built = len(built)
    assert n_built == 11  # piqa + 10 mmlu subjects, once (not twice: doc counts and evaluation)
    again = suite_mod.run_suite(tiny_model, tokenizer, tasks, limits=3, data_root=data_root)
    other = suite_mod.run_suite(tiny_model, tokenizer, tasks, limits=5, data_root=data_root)
    assert len(built) == n_built and again == first
    suite_mod._BUILT.clear()
    assert suite_mod.run_suite(tiny_model, tokenizer, tasks, limits=5, data_root=data_root) == other
    assert suite_mod.run_suite(tiny_model, tokenizer, tasks, limits=3, data_root=data_root) == first


def test_run_suite_skips_lm_eval_env_info(tiny_model, tokenizer, data_root, monkeypatch):
    import lm_eval.evaluator as evaluator

    def collect_env(results):
        raise AssertionError("add_env_info runs collect_env subprocesses; run_suite must skip it")

    monkeypatch.setattr(evaluator, "add_env_info", collect_env)
    scores = run_suite(tiny_model, tokenizer, ["ssr_boolq"], limits=2, data_root=data_root)
    assert "ssr_boolq" in scores
    assert evaluator.add_env_info is collect_env  # restored
