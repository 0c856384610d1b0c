"""Resume refuses a changed run (exit 2, the differing keys old -> new) and, with the same config,
continues a killed run exactly, dropout on: the real `ssr-train` CLI, killed with SIGKILL."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from cli_runs import cli_env, run_train, train_cmd
from conftest import TINY_OVERRIDES, compose

# 16 rows, batch 4: 4 steps per epoch, 8 in all; a checkpoint every 2 steps; LoRA dropout on.
RUN = ("method=ssr", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "peft.lora_dropout=0.05")
KILL_AT = 3  # SIGKILL after step 3: the resume starts at step 2 and crosses the epoch boundary


def _cfg(*overrides: str):
    from omegaconf import open_dict

    cfg = compose([*TINY_OVERRIDES, *RUN, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/ssr-fingerprint-unused"
        del cfg["hydra"]
    return cfg


def _losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as fh:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")}


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


def _run(*overrides: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(*overrides), cwd=cwd, env=cli_env(**env), capture_output=True, text=True, timeout=600
    )


# --------------------------------------------------------------------------- the fingerprint itself
def test_fingerprint_ignores_where_things_go_and_sees_what_is_trained():
    from ssr.training.fingerprint import config_diff, make_record

    base = make_record(_cfg())
    same = make_record(
        _cfg(
            "ckpt_path=last",
            "logger=wandb",
            "experiment_name=elsewhere",
            "trainer.enable_progress_bar=true",
            "callbacks.model_checkpoint.every_n_train_steps=5",
            "resume.allow_config_change=true",
        )
    )
    assert same["fingerprint"] == base["fingerprint"]
    assert (
        "ckpt_path" not in base["config"] and "logger" not in base["config"] and "paths" not in base["config"]
    )
    changed = make_record(_cfg("method=sft", "optim.lr=1e-3", "data.max_train_rows=12"))
    assert changed["fingerprint"] != base["fingerprint"]
    assert config_diff(base["config"], changed["config"]) == [
        "data.max_train_rows: 16 -> 12",
        'method.name: "ssr" -> "sft"',
        "optim.lr: 0.0002 -> 0.001",
    ]


def test_resume_before_the_first_checkpoint_is_compared_with_the_run_dir(tmp_path, no_model_loading):
    from ssr.training.fingerprint import ResumeMismatchError, check_resume, make_record, write_run_record

    write_run_record(tmp_path, make_record(_cfg()))
    assert (
        check_resume(_cfg("ckpt_path=last"), tmp_path, None)["fingerprint"]
        == make_record(_cfg())["fingerprint"]
    )
    with pytest.raises(ResumeMismatchError, match=r"run_fingerprint\.json was made by a different config"):
        check_resume(_cfg("ckpt_path=last", "optim.lr=1e-3"), tmp_path, None)
    assert check_resume(_cfg("optim.lr=1e-3"), tmp_path, None), "no ckpt_path: a fresh start, not compared"


def _before_the_layout(tree):
    """A run config as a checkpoint written before the package layout holds it: old class paths."""
    from ssr.training.fingerprint import MOVED_MODULES, MOVED_SYMBOLS

    if isinstance(tree, dict):
        return {k: _before_the_layout(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_before_the_layout(v) for v in tree]
    if isinstance(tree, str):
        old_symbol = {new: old for old, new in MOVED_SYMBOLS.items()}.get(tree)
        if old_symbol:
            return old_symbol
        module, _, name = tree.rpartition(".")
        old_module = {new: old for old, new in MOVED_MODULES.items()}.get(module)
        return f"{old_module}.{name}" if old_module else tree
    return tree


def test_a_run_started_before_the_layout_move_resumes(tmp_path, no_model_loading):
    """A config as checkpoints wrote it before the layout: classes at their old place, ``_convert_``
    keys, and none of the keys the layout added (the eval node's plumbing, schema defaults that the
    YAML did not name). It resumes as the same run; a real change is still one, named alone."""
    from ssr.cli.schemas import implicit_defaults
    from ssr.training.fingerprint import (
        ResumeMismatchError,
        check_resume,
        fingerprint_of,
        make_record,
        write_run_record,
    )

    config = _before_the_layout(make_record(_cfg())["config"])
    for key in ("_target_", "_partial_", "prompt", "max_length", "data_root"):
        del config["eval"][key]
    del config["optim"]["betas"]
    for key in ("server", "base_urls", "gguf", "timeout_s", "llama_cpp", "fidelity_sample"):
        del config["generator"][key]
    for group in ("model", "generator", "data", "module"):
        config[group]["_convert_"] = "all"
    assert config["data"]["_target_"] == "ssr.datamodule.SSRDataModule"
    assert config["generator"]["_target_"] == "ssr.generation.GeneratorConfig"
    write_run_record(tmp_path, {"fingerprint": fingerprint_of(config), "config": config})
    implicit = implicit_defaults()
    resumed = check_resume(_cfg("ckpt_path=last"), tmp_path, None, implicit)
    assert resumed["fingerprint"] == make_record(_cfg())["fingerprint"]
    with pytest.raises(ResumeMismatchError):  # without the schema defaults, the added keys differ
        check_resume(_cfg("ckpt_path=last"), tmp_path, None)
    with pytest.raises(ResumeMismatchError) as err:
        check_resume(_cfg("ckpt_path=last", "optim.lr=1e-3"), tmp_path, None, implicit)
    assert "optim.lr: 0.0002 -> 0.001" in str(err.value) and "_target_" not in str(err.value)


def test_rng_states_survive_a_weights_only_checkpoint_load(tmp_path):
    import random

    import numpy as np

    from ssr.runtime import rng

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    saved = rng.rng_states()
    torch.save({"rng": rng.to_checkpoint(saved)}, tmp_path / "x.ckpt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()  # move every generator on
    rng.set_rng_states(rng.from_checkpoint(torch.load(tmp_path / "x.ckpt", weights_only=True)["rng"]))
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]


# --------------------------------------------------------------------------- the real CLI
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run and the same run killed (SIGKILL) after step 3."""
    root = tmp_path_factory.mktemp("fingerprint")
    whole, killed = root / "whole", root / "killed"
    run_train(*RUN, f"hydra.run.dir={whole}", cwd=root)
    proc = _run(*RUN, f"hydra.run.dir={killed}", cwd=root, SSR_FAULT_AT=f"train.step:{KILL_AT}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "adapter").exists()
    return {"root": root, "whole": whole, "killed": killed}


def test_resume_with_a_changed_method_stops_before_any_work_listing_the_change(runs):
    killed = runs["killed"]
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == KILL_AT - 1
    record = json.loads((killed / "run_fingerprint.json").read_text())
    assert (
        last["ssr_run"]["fingerprint"] == record["fingerprint"]
        and record["config"]["method"]["name"] == "ssr"
    )
    before = {p.name: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}

    proc = _run(*RUN, "method=sft", "ckpt_path=last", f"hydra.run.dir={killed}", cwd=runs["root"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert re.match(
        rf"error: ckpt_path=last: {killed}/checkpoints/(last|step{KILL_AT - 1})\.ckpt was made by a "
        r"different config \(1 setting changed\); resume with the original settings, or set "
        r"resume\.allow_config_change=true to continue it with the new ones:$",
        lines[first],
    ), lines[first]
    assert lines[first + 1] == '  method.name: "ssr" -> "sft"'
    assert "Traceback" not in proc.stderr + proc.stdout
    after = {p.name: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    assert after == before, "the interrupted run is untouched (.hydra/, log, checkpoints)"
    assert "name: ssr" in (killed / ".hydra" / "config.yaml").read_text()


def test_resume_with_the_same_config_equals_the_uninterrupted_run_with_dropout(runs):
    whole, killed = runs["whole"], runs["killed"]
    run_train(*RUN, "ckpt_path=last", f"hydra.run.dir={killed}", cwd=runs["root"])
    assert json.loads((killed / "summary.json").read_text())["global_step"] == 8
    a, b = _adapter(whole), _adapter(killed)
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    whole_losses, resumed = _losses(whole), _losses(killed)
    assert resumed.keys() == whole_losses.keys() == set(range(8))
    for step in range(KILL_AT - 1, 8):  # every step after the resume point
        assert resumed[step] == pytest.approx(whole_losses[step], rel=1e-5), step


def test_allow_config_change_resumes_on_purpose_and_keeps_both_configs(runs):
    ckpt = runs["killed"] / "checkpoints" / f"step{KILL_AT - 1}.ckpt"
    changed = runs["root"] / "changed"
    proc = run_train(
        *RUN,
        "optim.lr=1e-3",
        f"ckpt_path={ckpt}",
        "resume.allow_config_change=true",
        f"hydra.run.dir={changed}",
        cwd=runs["root"],
    )
    assert "resume.allow_config_change=true: resuming" in proc.stdout + proc.stderr
    record = json.loads((changed / "run_fingerprint.json").read_text())
    assert record["config"]["optim"]["lr"] == 1e-3
    (previous,) = record["history"]
    assert previous["config"]["optim"]["lr"] == 2e-4 and previous["changes"] == ["optim.lr: 0.0002 -> 0.001"]
    last = torch.load(changed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["ssr_run"]["fingerprint"] == record["fingerprint"] != previous["fingerprint"]
