"""W&B offline: the run files hold the redacted config, the metrics and the selection statistics,
and no planted credential appears anywhere under the run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ssr.cli.train import train
from ssr.training.loggers import REDACTED, redact

PLANTED = {"OPENAI_API_KEY": "sk-planted-openai-0123456789", "WANDB_API_KEY": "planted-wandb-abcdef012345"}


def test_redact_hides_credential_keys_and_secret_env_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_planted_token_value")
    cfg = {
        "judge": {"api_key_env": "OPENAI_API_KEY", "api_key": "sk-x", "model": "gpt"},
        "hub": {"hf_token": None, "headers": ["Bearer hf_planted_token_value"]},
        "model": {"tokenizer": "some/dir", "max_new_tokens": 8},
    }
    out = redact(cfg)
    assert out["judge"] == {"api_key_env": "OPENAI_API_KEY", "api_key": REDACTED, "model": "gpt"}
    assert out["hub"] == {"hf_token": None, "headers": [REDACTED]}
    assert out["model"] == cfg["model"]


def _records(wandb_file: Path) -> list:
    """Protobuf records of a run-*.wandb file: W&B's LevelDB-style log (a 7-byte header, then
    32 KiB blocks of chunks: crc32 (4), length (2), type (1: full, 2: first, 3: middle, 4: last))."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = wandb_file.read_bytes()
    assert data[:4] == b":W&B", f"{wandb_file} is not a W&B record log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if len(chunk) < length:  # still being written
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _finished_records(wandb_file: Path, timeout_s: float = 60) -> list:
    """The records once W&B's service has written the run's exit record (it writes asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = _records(wandb_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _items(items) -> dict[str, object]:
    """key -> decoded value of history/summary/config items (nested keys joined with '.')."""
    return {(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in items}


def test_wandb_offline_run_has_config_metrics_and_selection_table(tiny_cfg, monkeypatch):
    import wandb

    if wandb.run is not None:  # left open by another test: WandbLogger would log into it
        wandb.finish()
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny_cfg(
        "method=ssr",
        "judge.threshold=0.0",
        "logger=wandb",
        "experiment_name=wb",
        "trainer.log_every_n_steps=1",
        "+judge_extra.api_key=${oc.env:OPENAI_API_KEY}",  # a secret interpolated into the config
    )
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)

    # offline runs keep everything in the run-*.wandb record log (files/ holds media and logs)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    files = offline / "files"
    records = _finished_records(next(offline.glob("run-*.wandb")))
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update(_items(r.config.update))
    run_cfg = config["run"]
    assert run_cfg["method"]["name"] == "ssr" and run_cfg["model"]["name_or_path"] == "tiny-random"
    assert run_cfg["judge_extra"]["api_key"] == REDACTED
    assert config["lr"] == pytest.approx(2e-4), "the module's hyperparameters are there too"

    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert sum("train/loss" in h for h in history) == 4, "one loss per optimizer step"
    run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run_record.run_group == "wb" and run_record.display_name == "wb-ssr-s0"

    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    assert summary["selection/share_self"] > 0 and summary["selection/share_gold"] > 0
    assert summary["stages/generate_self/computed"] == 16
    assert summary["final/global_step"] == 4
    assert summary["selection/by_source._type"] == "table-file"
    (table_file,) = (files / "media" / "table" / "selection").glob("by_source_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:3] == ["source", "count", "share"]
    assert {row[0] for row in table["data"]} == {"self", "paraphrase", "rewrite", "gold", "dropped"}
    assert sum(row[1] for row in table["data"]) == 16

    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for name, value in PLANTED.items():
                assert value.encode() not in data, f"{name} leaked into {path}"
