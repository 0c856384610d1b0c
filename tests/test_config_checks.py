"""Every numeric and path setting is checked when the config is composed: before any model load or
generation, one line naming the key, its value and the valid range; on the CLI exit code 2, no
traceback and no run directory left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_runs import cli_env, train_cmd
from conftest import TINY_OVERRIDES, compose


def _cfg(*overrides: str):
    from omegaconf import open_dict

    cfg = compose([*TINY_OVERRIDES, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/ssr-config-checks-unused"
        del cfg["hydra"]
    return cfg


BAD = [
    (["data.batch_size=0"], r"data\.batch_size=0 \(must be an integer >= 1\)"),  # was ZeroDivisionError
    (["data.val_batch_size=-2"], r"data\.val_batch_size=-2 \(must be an integer >= 1\)"),
    (["optim.lr=-1"], r"optim\.lr=-1 \(must be a number > 0\)"),  # was torch's error, after data prep
    (["optim.lr=0"], r"optim\.lr=0 \(must be a number > 0\)"),
    (["trainer.max_epochs=0"], r"trainer\.max_epochs=0 \(must be an integer >= 1, or -1"),  # was rc 0
    (["trainer.max_steps=0"], r"trainer\.max_steps=0 \(must be an integer >= 1, or -1"),
    (["trainer.precision=bf17"], r"trainer\.precision='bf17' \(must be one of auto, 32-true"),
    (["trainer.accumulate_grad_batches=0"], r"trainer\.accumulate_grad_batches=0"),
    (["optim.warmup_ratio=1.5"], r"optim\.warmup_ratio=1\.5 \(must be a number in \[0, 1\)\)"),
    (["judge.threshold=1.5"], r"judge\.threshold=1\.5 \(must be a number in \[0, 1\]\)"),
    (["data.max_train_rows=0"], r"data\.max_train_rows=0 \(must be an integer >= 1\)"),
    (["generator.decoding.top_p=0"], r"generator\.decoding\.top_p=0 \(must be a number in \(0, 1\]\)"),
    (["generator.decoding.max_new_tokens=0"], r"generator\.decoding\.max_new_tokens=0"),
    (["eval.self_drift.limit=0"], r"eval\.self_drift\.limit=0 \(must be an integer >= 1\)"),
    (["eval.suite.limits.ssr_piqa=0"], r"eval\.suite\.limits\.ssr_piqa=0 \(must be an integer >= 1\)"),
    (["eval.ifeval.max_gen_toks=0"], r"eval\.ifeval\.max_gen_toks=0 \(must be an integer >= 1\)"),
    (["eval.final.ifeval.limit=0"], r"eval\.final\.ifeval\.limit=0 \(must be an integer >= 1\)"),
    (["peft.lora_dropout=1"], r"peft\.lora_dropout=1 \(must be a number in \[0, 1\)\)"),
    (["data.batch_size=abc"], r"data\.batch_size='abc' \(must be an integer >= 1\)"),
    (["judge=openai", "judge.max_concurrency=0"], r"judge\.max_concurrency=0"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[o[0][-1] for o in BAD])
def test_bad_setting_fails_before_any_model_load_naming_key_value_and_range(
    tiny_cfg, no_model_loading, overrides, message
):
    from ssr.cli.train import train
    from ssr.runtime.configs import ConfigError

    cfg = tiny_cfg(*overrides)
    with pytest.raises(ConfigError, match=message) as err:
        train(cfg)
    assert "\n" not in str(err.value), "one line"
    assert not Path(cfg.paths.cache_dir).exists(), "nothing generated or cached"
    assert not (Path(cfg.paths.output_dir) / "selection.jsonl").exists()


def test_every_broken_setting_is_named_in_the_one_line():
    from ssr.cli.config_checks import check_config
    from ssr.runtime.configs import ConfigError

    with pytest.raises(ConfigError) as err:
        check_config(_cfg("data.batch_size=0", "optim.lr=-1", "trainer.max_epochs=0"))
    text = str(err.value)
    assert text.startswith("invalid config: ") and "\n" not in text
    assert text.index("data.batch_size=0") < text.index("optim.lr=-1") < text.index("trainer.max_epochs=0")


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["trainer.max_epochs=-1", "trainer.max_steps=3"],  # -1: Lightning's "no limit"
        ["trainer.max_epochs=null"],
        ["data.max_val_rows=0", "data.max_train_rows=null"],
        ["optim.warmup_ratio=0", "optim.min_lr_ratio=1"],
        ["callbacks.model_checkpoint.every_n_train_steps=0"],
        ["judge=openai"],
        ["judge=none", "method=sft"],
        ["logger=wandb"],  # its group resolver is registered later: nothing here resolves it
    ],
)
def test_valid_settings_pass(overrides):
    from ssr.cli.config_checks import check_config

    check_config(_cfg(*overrides))


def test_every_precision_lightning_accepts_and_auto_pass():
    from ssr.cli.config_checks import PRECISIONS, check_config

    for value in ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"):
        assert value in PRECISIONS
        check_config(_cfg(f"trainer.precision={value}"))


def test_missing_data_file_names_the_key_and_the_path(tiny_cfg, no_model_loading, tmp_path):
    from ssr.cli.train import train
    from ssr.runtime.configs import ConfigError

    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(ConfigError, match=rf"data\.train\.path={missing}: no such file"):
        train(tiny_cfg("data=jsonl", f"data.train.path={missing}"))
    with pytest.raises(ConfigError, match=rf"data\.train\.path={tmp_path}: is a directory"):
        train(tiny_cfg("data=jsonl", f"data.train.path={tmp_path}"))
    with pytest.raises(ConfigError, match=r"data\.ood\.nq\.path=.*nowhere\.jsonl: no such file"):
        train(
            tiny_cfg(
                "+data.ood.nq._target_=ssr.data.adapters.nq_open_book", "+data.ood.nq.path=/nowhere.jsonl"
            )
        )


def test_adapter_names_a_missing_file(tmp_path):
    """Python callers of the adapters (no config check in between) also get the path."""
    from ssr.data.adapters import DataError, jsonl, squad_v2

    with pytest.raises(DataError, match=rf"{tmp_path}/gone\.jsonl: no such file"):
        jsonl(str(tmp_path / "gone.jsonl"))
    with pytest.raises(DataError, match=rf"{tmp_path}/gone\.json: no such file"):
        squad_v2(str(tmp_path / "gone.json"))


# --------------------------------------------------------------------------- real CLI
def _cli(*overrides: str, cwd: Path, module: str = "ssr.cli.train") -> subprocess.CompletedProcess:
    cmd = train_cmd(*overrides)
    if module != "ssr.cli.train":
        cmd[cmd.index("ssr.cli.train")] = module
    return subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_size=0"], "error: invalid config: data.batch_size=0 (must be an integer >= 1)"),
        (
            ["data=jsonl", "data.train.path=/no/such/train.jsonl"],
            "error: invalid config: data.train.path=/no/such/train.jsonl: no such file",
        ),
    ],
    ids=["batch_size", "data_path"],
)
def test_cli_bad_setting_exits_2_with_one_line_and_leaves_no_run_dir(tmp_path, overrides, message):
    proc = _cli(*overrides, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _error_lines(proc) == [message]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists(), "no dated run directory"


@pytest.mark.parametrize("module", ["ssr.cli.eval", "ssr.cli.stages_generate", "ssr.cli.stages_judge"])
def test_every_entry_point_checks_the_config(tmp_path, module):
    if module.startswith(
        "ssr.cli.stages_"
    ):  # console scripts without a __main__: call them as pyproject does
        func = f"{module.rsplit('_', 1)[1]}_main"
        code = f"import sys; from ssr.cli.stages import {func}; sys.argv[0] = 'ssr'; {func}()"
        cmd = [sys.executable, "-c", code, *TINY_OVERRIDES, "optim.lr=-1"]
    else:
        cmd = [sys.executable, "-m", module, *TINY_OVERRIDES, "optim.lr=-1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _error_lines(proc) == ["error: invalid config: optim.lr=-1 (must be a number > 0)"]
    assert not (tmp_path / "outputs").exists()


def test_a_failure_inside_the_job_removes_the_fresh_run_dir_or_marks_an_old_one(tmp_path, monkeypatch):
    from ssr.cli.guard import FAILED_FILE, mark_failed
    from ssr.runtime.configs import ConfigError

    monkeypatch.chdir(tmp_path)
    fresh = tmp_path / "outputs" / "default" / "2026-01-01" / "10-00-00"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (fresh / "train.log").write_text("")
    keep = tmp_path / "outputs" / "other"
    keep.mkdir()
    assert mark_failed(fresh, ConfigError("x")) == "removed"
    assert not (tmp_path / "outputs" / "default").exists() and keep.is_dir(), "empty dated folders go too"

    old = tmp_path / "outputs" / "old_run"
    (old / ".hydra").mkdir(parents=True)
    (old / "checkpoints").mkdir()
    assert mark_failed(old, ConfigError("invalid config: optim.lr=-1")) == "marked"
    assert "optim.lr=-1" in (old / FAILED_FILE).read_text()
    assert (old / "checkpoints").is_dir()
    assert mark_failed(tmp_path, ConfigError("x")) == "marked", "the working directory is never removed"
