"""The one-line logger presets: logger=tensorboard writes event files, logger=mlflow a run with the
training metrics; both keep metrics.csv (skipped when the optional package is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssr.cli.train import train

LOG_EVERY_STEP = ("trainer.log_every_n_steps=1",)


def test_tensorboard_preset_writes_event_files(tiny_cfg):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg("logger=tensorboard", "method=sft", *LOG_EVERY_STEP)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events, f"no event files under {run / 'tensorboard'}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert losses and all(e.value > 0 for e in losses)
    assert (run / "metrics.csv").is_file()


@pytest.mark.slow  # ~50 s: MLflow migrates a fresh SQLite store
def test_mlflow_preset_records_the_run(tiny_cfg):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")  # the SQLite store (full mlflow installs it)
    from mlflow.tracking import MlflowClient

    cfg = tiny_cfg("logger=mlflow", "method=sft", *LOG_EVERY_STEP)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == cfg.experiment_name]
    [record] = client.search_runs([experiment.experiment_id])
    assert record.info.run_name == f"{cfg.experiment_name}-sft-s{cfg.seed}"
    history = client.get_metric_history(record.info.run_id, "train/loss")
    assert history and all(m.value > 0 for m in history)
    assert (run / "metrics.csv").is_file()
