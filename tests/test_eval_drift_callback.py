"""GeneralizationDriftCallback on a 2-epoch tiny Lightning run."""

import contextlib
import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from ssr.cli._hydra import build
from ssr.data.prompts import PromptConfig
from ssr.eval import drift_callback
from ssr.eval.drift_callback import GeneralizationDriftCallback, score_deltas, table_rows
from ssr.eval.evaluator import Evaluator
from ssr.eval.items import final_tag, load_items
from ssr.eval.self_drift import SelfDriftConfig
from ssr.eval.suite import SuiteConfig
from ssr.eval.task_sets import TaskMetricsConfig
from ssr.models.loading import tiny_random_model

SUITE = {"tasks": ["ssr_arc_easy"], "limits": 3, "batch_size": 4}
SELF_DRIFT = {"limit": 3, "max_new_tokens": 4, "batch_size": 3}


def _evaluator(suite=None, self_drift=SELF_DRIFT) -> Evaluator:
    return Evaluator(
        SuiteConfig(**suite) if suite else SuiteConfig(),
        SelfDriftConfig(**self_drift),
        TaskMetricsConfig(),
        PromptConfig(),
        task_sets={},
        max_prompt_tokens=64,
    )


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path, data_root):
    monkeypatch.setenv("SSR_CACHE", str(tmp_path / "cache"))  # self-drift references


class TinyLM(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, _):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class TinyData(pl.LightningDataModule):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        g = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, 1000, (8, 12), generator=g)

    def train_dataloader(self):
        return DataLoader(self.rows, batch_size=2, shuffle=True)  # order drawn from torch's global RNG


class Probe(pl.Callback):
    """Runs after the drift callback: records train flags and the RNG stream it sees."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen.append((pl_module.training, pl_module.model.training, torch.rand(1).item()))


def _fit(tokenizer, tmp_path, with_drift=True, suite=SUITE, every_n_steps=0):
    pl.seed_everything(7)
    module = TinyLM(tiny_random_model(tokenizer, seed=0))
    probe = Probe()
    callbacks = [probe]
    drift = None
    if with_drift:
        drift = GeneralizationDriftCallback(
            _evaluator(suite), run_dir=tmp_path / "run", every_n_steps=every_n_steps
        )
        callbacks.insert(0, drift)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=CSVLogger(tmp_path / "logs"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=TinyData(tokenizer))
    weights = torch.cat([p.detach().flatten() for p in module.parameters()])
    return drift, probe, weights, trainer


def test_two_epochs_write_base_and_epoch_records_and_restore_state(tokenizer, tmp_path):
    _, probe, weights, trainer = _fit(tokenizer, tmp_path / "a")
    _, probe_plain, weights_plain, _ = _fit(tokenizer, tmp_path / "b", with_drift=False)

    payload = json.loads((tmp_path / "a" / "run" / "drift.json").read_text())
    assert payload["base"]["stage"] == "base" and payload["base"]["step"] == 0
    assert set(payload["base"]["scores"]) == {"ssr_arc_easy", "self_drift"}
    assert [e["epoch"] for e in payload["epochs"]] == [0, 1]
    assert [e["step"] for e in payload["epochs"]] == [4, 8]
    assert payload["base"]["scores"]["self_drift"]["nll_increase"] == pytest.approx(0.0, abs=1e-6)
    last = payload["epochs"][-1]
    assert last["delta"]["self_drift"]["nll"] == pytest.approx(
        last["scores"]["self_drift"]["nll"] - payload["base"]["scores"]["self_drift"]["nll"]
    )
    assert last["scores"]["self_drift"]["nll_increase"] != 0.0  # lr 0.5 SGD moved the weights
    assert (tmp_path / "a" / "run" / "self_drift_reference.json").is_file()

    # ssr-report reads this drift.json
    from ssr.report.runs import load_run

    (tmp_path / "a" / "run" / "summary.json").write_text(json.dumps({"method": "sft"}))
    run = load_run(tmp_path / "a" / "run")
    assert run.base["suite/ssr_arc_easy/acc"] == payload["base"]["scores"]["ssr_arc_easy"]["acc"]
    assert len(run.epochs) == 2 and run.final["suite/self_drift/nll"] == last["scores"]["self_drift"]["nll"]

    # evaluation leaves training exactly as it would have been: same RNG stream, same weights, train mode
    assert probe.seen == probe_plain.seen
    assert all(training and inner for training, inner, _ in probe.seen)
    assert torch.equal(weights, weights_plain)

    # every logger got absolute scores and deltas
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    keys = set(rows[0])
    assert {"drift/ssr_arc_easy/acc", "drift/self_drift/nll", "drift_delta/self_drift/nll"} <= keys
    assert sum(1 for r in rows if r["drift/self_drift/nll"]) == 3


def test_every_n_steps_adds_evaluations_along_training_that_leave_it_unchanged(tokenizer, tmp_path):
    _, _, weights, _ = _fit(tokenizer, tmp_path / "a", suite={**SUITE, "limits": 1}, every_n_steps=3)
    _, _, weights_plain, _ = _fit(tokenizer, tmp_path / "b", with_drift=False)
    payload = json.loads((tmp_path / "a" / "run" / "drift.json").read_text())
    # 4 steps per epoch: steps 3 and 6 inside the epochs; 4 and 8 are the epochs' own evaluations
    assert [(r["stage"], r["step"]) for r in payload["steps"]] == [("step", 3), ("step", 6)]
    assert [r["step"] for r in payload["epochs"]] == [4, 8]
    assert payload["steps"][0]["delta"]["self_drift"]["nll"] == pytest.approx(
        payload["steps"][0]["scores"]["self_drift"]["nll"] - payload["base"]["scores"]["self_drift"]["nll"]
    )
    assert sorted(p.name for p in (tmp_path / "a" / "run" / "eval_items").iterdir()) == [
        "base",
        "epoch_0",
        "epoch_1",
        "step_3",
        "step_6",
    ]
    assert torch.equal(weights, weights_plain)  # evaluating along the way changes no training step
    with pytest.raises(ValueError, match="every_n_steps"):
        GeneralizationDriftCallback(_evaluator(), every_n_steps=-1)


def test_base_evaluation_is_reused_across_runs_and_timed(tokenizer, tmp_path, monkeypatch):
    """A sweep evaluates the base model once: the second run reads SSR_CACHE/drift_base."""
    calls = []
    real = Evaluator.drift_scores
    monkeypatch.setattr(Evaluator, "drift_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    _fit(tokenizer, tmp_path / "a")
    assert len(calls) == 3  # base + 2 epochs
    _fit(tokenizer, tmp_path / "b")
    assert len(calls) == 5  # base reused
    first, second = (json.loads((tmp_path / r / "run" / "drift.json").read_text()) for r in "ab")
    assert second["base"]["cached"] and "cached" not in first["base"]
    assert second["base"]["scores"] == first["base"]["scores"]
    assert all(e["seconds"]["drift"] > 0 and e["seconds"]["epoch"] > 0 for e in second["epochs"])
    assert all(e["seconds"]["eval"] >= e["seconds"]["drift"] for e in second["epochs"])
    # a different suite is a different base evaluation
    _fit(tokenizer, tmp_path / "c", suite={**SUITE, "limits": 2})
    assert len(calls) == 8

    # per-item results of every evaluation, the reused base's included, agree with the scores
    items_a, items_b = (load_items(tmp_path / r / "run") for r in "ab")
    assert set(items_a) == set(items_b) == {"base", "epoch_0", "epoch_1"}
    assert items_b["base"] == items_a["base"]
    for tag, record in zip(["base", "epoch_0", "epoch_1"], [first["base"], *first["epochs"]]):
        arc = items_a[tag]["lm_eval.ssr_arc_easy"]
        assert sorted(arc) == ["0", "1", "2"]
        assert all(row["acc"] in (0.0, 1.0) and len(row["ll"]) >= 2 for row in arc.values())
        assert sum(r["acc"] for r in arc.values()) / 3 == pytest.approx(
            record["scores"]["ssr_arc_easy"]["acc"]
        )
        drift_rows = items_a[tag]["self_drift"].values()
        assert len(drift_rows) == 3
        nll = sum(r["nll_sum"] for r in drift_rows) / sum(r["n_tokens"] for r in drift_rows)
        assert nll == pytest.approx(record["scores"]["self_drift"]["nll"], rel=1e-5)
    assert items_a["epoch_1"]["self_drift"] != items_a["base"]["self_drift"]
    assert final_tag(items_a) == "epoch_1"


def test_without_restoring_state_training_would_change(tokenizer, tmp_path, monkeypatch):
    """The control for the test above: skip the restore and the run diverges."""
    monkeypatch.setattr(drift_callback, "preserved_state", lambda module: contextlib.nullcontext())
    _, probe, weights, _ = _fit(tokenizer, tmp_path / "a")
    _, probe_plain, weights_plain, _ = _fit(tokenizer, tmp_path / "b", with_drift=False)
    assert not torch.equal(weights, weights_plain)
    assert [s[2] for s in probe.seen] != [s[2] for s in probe_plain.seen]
    assert not any(inner for _, inner, _ in probe.seen)  # HFLM left the model in eval mode


def test_checkpoint_state_round_trip_keeps_base_and_reference(tokenizer, tmp_path):
    drift, *_ = _fit(tokenizer, tmp_path, suite=None)
    restored = GeneralizationDriftCallback(_evaluator())
    restored.load_state_dict(drift.state_dict())
    assert restored.base_scores == drift.base_scores
    assert restored.evaluator.reference == drift.evaluator.reference


def test_table_rows_and_deltas():
    records = [
        {"stage": "base", "epoch": -1, "step": 0, "scores": {"t": {"acc": 0.5}}},
        {"stage": "epoch", "epoch": 0, "step": 4, "scores": {"t": {"acc": 0.75}, "new": {"acc": 1.0}}},
    ]
    assert score_deltas(records[1]["scores"], records[0]["scores"]) == {"t": {"acc": 0.25}}
    rows = table_rows(records)
    assert rows[0] == ["base", -1, 0, "t", "acc", 0.5, 0.5, 0.0]
    assert rows[1] == ["epoch", 0, 4, "t", "acc", 0.75, 0.5, 0.25]
    assert rows[2][3] == "new" and rows[2][6] != rows[2][6]  # nan base


def test_from_eval_config(tokenizer):
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    from ssr.training.callbacks import instantiate_callbacks

    def drift_of(*overrides):
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = compose(config_name="train", overrides=["paths.output_dir=/tmp/unused", *overrides])
        evaluator = build(cfg.eval)(val_records=[], ood={})
        return instantiate_callbacks(cfg.callbacks, evaluator=evaluator, config={}, run_record=None)["drift"]

    cb = drift_of("eval.callback.every_n_epochs=2")
    cb.tokenizer = tokenizer
    assert cb.every_n_epochs == 2 and cb.evaluator.suite.name == "local"
    assert cb.evaluator.self_drift.max_new_tokens == 48
    assert cb.tokenizer is tokenizer and cb.mixed_precision == "auto" and cb.enabled
    assert not drift_of("eval.callback.enabled=false").enabled


def test_needs_a_tokenizer(tmp_path):
    trainer = pl.Trainer(logger=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        GeneralizationDriftCallback(_evaluator())._tokenizer(trainer)


def test_wandb_logger_gets_metrics_and_a_table(tokenizer, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    monkeypatch.setattr(
        WandbLogger, "log_metrics", lambda self, metrics, step=None: logged.append((metrics, step))
    )
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    drift = GeneralizationDriftCallback(_evaluator(), tokenizer=tokenizer, run_dir=tmp_path / "run")
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=logger,
        callbacks=[drift],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyLM(tiny_random_model(tokenizer, seed=0)), datamodule=TinyData(tokenizer))
    tables = [m["drift/table"] for m, _ in logged if "drift/table" in m]
    assert len(tables) == 2  # base + epoch 0
    # base + epoch 0, each self-drift's nll, nll_increase(_rel) and end of turn (stop_prob, survival, end_prob)
    assert tables[-1].columns == drift_callback.TABLE_COLUMNS and len(tables[-1].data) == 2 * 6
    assert any("drift_delta/self_drift/nll" in m for m, _ in logged)


def test_final_evaluation_at_larger_settings_after_training(tokenizer, tmp_path, monkeypatch):
    """eval.final: base (cached across runs) and model once more at the end, at larger limits;
    ssr-report takes the run's base/final suite scores and the paired items from it."""
    from ssr.report.paired import Measure, pair_tags
    from ssr.report.runs import load_run

    def fit(run):
        pl.seed_everything(7)
        evaluator = _evaluator(SUITE)
        evaluator.final = _evaluator({**SUITE, "limits": 5}, {**SELF_DRIFT, "limit": 4})
        drift = GeneralizationDriftCallback(evaluator, run_dir=tmp_path / run)
        trainer = pl.Trainer(
            max_epochs=2, accelerator="cpu", logger=False, callbacks=[drift], enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(TinyLM(tiny_random_model(tokenizer, seed=0)), datamodule=TinyData(tokenizer))
        return drift

    calls = []
    real = Evaluator.drift_scores
    monkeypatch.setattr(Evaluator, "drift_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    drift = fit("a")
    assert len(calls) == 5  # base + 2 epochs + final base + final model
    payload = json.loads((tmp_path / "a" / "drift.json").read_text())
    final = payload["final"]
    assert final["settings"]["suite"]["limits"] == 5 and final["settings"]["self_drift"]["limit"] == 4
    assert final["base"]["stage"] == "final_base" and final["model"]["stage"] == "final"
    assert final["model"]["epoch"] == 1 and final["model"]["step"] == 8
    assert final["model"]["delta"]["self_drift"]["nll"] == pytest.approx(
        final["model"]["scores"]["self_drift"]["nll"] - final["base"]["scores"]["self_drift"]["nll"]
    )
    assert final["model"]["scores"]["self_drift"]["nll"] != final["base"]["scores"]["self_drift"]["nll"]
    assert [r["stage"] for r in drift.records] == ["base", "epoch", "epoch"]  # eval.json unchanged
    items = load_items(tmp_path / "a")
    assert set(items) == {"base", "epoch_0", "epoch_1", "final_base", "final"}
    assert sorted(items["final"]["lm_eval.ssr_arc_easy"]) == ["0", "1", "2", "3", "4"]
    assert len(items["final"]["self_drift"]) == len(items["final_base"]["self_drift"]) == 4
    assert len(items["epoch_1"]["lm_eval.ssr_arc_easy"]) == 3
    # a second run reuses the final base evaluation (and the per-epoch one)
    fit("b")
    assert len(calls) == 8
    second = json.loads((tmp_path / "b" / "drift.json").read_text())["final"]
    assert second["base"]["cached"] and second["base"]["scores"] == final["base"]["scores"]
    assert load_items(tmp_path / "b")["final_base"] == items["final_base"]

    (tmp_path / "a" / "summary.json").write_text(json.dumps({"method": "sft"}))
    run = load_run(tmp_path / "a")
    assert run.final_eval and run.final_eval_s == pytest.approx(
        final["model"]["seconds"]["eval"] + final["base"]["seconds"]["eval"]
    )
    assert run.base["suite/ssr_arc_easy/acc"] == final["base"]["scores"]["ssr_arc_easy"]["acc"]
    assert run.final["suite/self_drift/nll"] == final["model"]["scores"]["self_drift"]["nll"]
    assert run.curve_base["suite/self_drift/nll"] == payload["base"]["scores"]["self_drift"]["nll"]
    assert run.epochs[-1]["suite/self_drift/nll"] == payload["epochs"][-1]["scores"]["self_drift"]["nll"]
    arc = Measure("ssr_arc_easy/acc", ("lm_eval.ssr_arc_easy",), "acc")
    assert pair_tags(run, arc) == ("final_base", "final")
    assert pair_tags(run, Measure("x", ("tasks.in_domain",), "answer_recall")) == ("base", "epoch_1")


def test_final_settings_replace_the_per_epoch_limits_whole(tokenizer):
    from conftest import compose
    from ssr.eval.evaluator import final_settings

    assert final_settings(compose([]).eval) is None  # off by default
    cfg = compose(
        [
            "eval.final.enabled=true",
            "+eval.final.suite.limits={default: 50}",
            "+eval.final.self_drift.limit=null",
        ]
    )
    final = final_settings(cfg.eval)
    assert final["suite"]["limits"] == {"default": 50}  # not merged with the per-epoch ssr_arc_easy: 8
    assert final["suite"]["tasks"] == list(cfg.eval.suite.tasks) and final["self_drift"]["limit"] is None
    assert final["kl_task"] == dict(cfg.eval.kl_task)
    evaluator = build(cfg.eval)(val_records=[], ood={})
    assert evaluator.final.suite.limits == {"default": 50} and evaluator.final.task_sets == {}
    assert evaluator.suite.limits["ssr_arc_easy"] == 8
    assert final["tasks"] is None  # no final task metrics unless eval.final.tasks is given
    with pytest.raises(KeyError, match=r"unknown eval\.final keys \['task'\]"):
        final_settings(compose(["eval.final.enabled=true", "+eval.final.task={max_rows: 3}"]).eval)
    # eval.final.tasks: laid over eval.tasks (max_new_tokens kept), its own sets and prompt budget
    from ssr.data.records import Record

    ood = {"nq": [Record(id=f"n{i}", question="?", gold="g") for i in range(30)]}
    cfg = compose(
        [
            "eval.final.enabled=true",
            "eval.final.tasks={in_domain: false, max_rows: null, ood_answerable_only: true}",
        ]
    )
    evaluator = build(cfg.eval)(val_records=[Record(id="v", question="?", gold="g")], ood=ood)
    assert set(evaluator.task_sets) == {"in_domain", "ood_nq"} and len(evaluator.task_sets["ood_nq"]) == 16
    assert set(evaluator.final.task_sets) == {"ood_nq_answerable"}
    assert len(evaluator.final.task_sets["ood_nq_answerable"]) == 30
    assert evaluator.final.tasks.max_new_tokens == cfg.eval.tasks.max_new_tokens
