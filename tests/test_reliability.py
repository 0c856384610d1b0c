"""Non-finite losses, config mistakes caught before any expensive step, secrets, safe model loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import compose


def _last_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------- NaN / inf loss
def test_nan_batch_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_cfg, monkeypatch):
    import ssr.training.module
    from ssr.cli.train import train
    from ssr.training.callbacks import NonFiniteLossError

    real_loss, calls = ssr.training.module.response_token_loss, []

    def loss_with_a_nan_batch(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(ssr.training.module, "response_token_loss", loss_with_a_nan_batch)
    cfg = tiny_cfg("method=sft", "data.max_val_rows=0")  # 4 steps, a checkpoint every 2
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at training step 3 \(epoch 0"):
        train(cfg)
    run = Path(cfg.paths.output_dir)
    ckpt = _last_checkpoint(run)
    assert ckpt["global_step"] == 2 and sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step2.ckpt",
    ]
    assert ckpt["state_dict"] and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not (run / "adapter").exists() and not (run / "summary.json").exists()


def test_exploding_lr_stops_before_a_nan_state_is_saved(tiny_cfg):
    from ssr.cli.train import train
    from ssr.training.callbacks import NonFiniteLossError

    cfg = tiny_cfg(
        "method=sft",
        "data.max_val_rows=0",
        "optim.lr=1e30",
        "optim.warmup_ratio=0",
        "callbacks.model_checkpoint.every_n_train_steps=1",
    )
    with pytest.raises(
        NonFiniteLossError, match=r"at training step (\d+) .*Last checkpoint: .*last\.ckpt"
    ) as err:
        train(cfg)
    bad_step = int(err.value.args[0].split("training step ")[1].split()[0])
    ckpt = _last_checkpoint(Path(cfg.paths.output_dir))
    assert ckpt["global_step"] == bad_step - 1 >= 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()), "no NaN state on disk"


def test_guard_checks_gradients_before_the_optimizer_step():
    from types import SimpleNamespace

    from ssr.training.callbacks import FiniteLossGuard, NonFiniteLossError

    progress = SimpleNamespace(current=SimpleNamespace(ready=5))
    trainer = SimpleNamespace(
        global_step=11,
        current_epoch=1,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        checkpoint_callback=None,
    )
    layer = torch.nn.Linear(2, 2)
    layer.weight.grad = torch.ones(2, 2)
    layer.bias.grad = torch.tensor([1.0, math.inf])
    guard = FiniteLossGuard()
    with pytest.raises(NonFiniteLossError, match=r"gradients at training step 12 \(epoch 1, batch 4\)"):
        guard.on_before_optimizer_step(trainer, layer, None)
    layer.bias.grad = torch.ones(2)
    guard.on_before_optimizer_step(trainer, layer, None)  # finite: no error
    guard.on_before_backward(trainer, layer, torch.tensor(2.5))
    with pytest.raises(NonFiniteLossError, match="loss \\(inf\\) at training step 12"):
        guard.on_before_backward(trainer, layer, torch.tensor(math.inf))


# --------------------------------------------------------------------------- config mistakes
@pytest.mark.parametrize(
    ("override", "group", "choices"),
    [
        ("method=sfft", "method", ["s3ft", "sdft", "sft", "ssr"]),
        ("judge=gpt4", "judge", ["hf", "none", "openai", "rule_qa"]),
        ("model=llama", "model", ["smollm2_135m", "tiny_random"]),
    ],
)
def test_unknown_group_option_lists_the_valid_choices(override, group, choices):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=f"Available options in '{group}'") as err:
        compose([override])
    assert all(f"\t{c}\n" in str(err.value) for c in choices)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method.name=sfft"],
            r"unknown method 'sfft'; valid choices: sft, dft, ssr, self_only, sdft, sdft_rewrite, s3ft",
        ),
        (["method=ssr", "judge=none"], r"method=ssr needs a judge"),
        (["method=s3ft", "judge=none"], r"method=s3ft needs a judge"),
        (["judge=openai", "judge.api_key_env=SSR_TEST_UNSET_KEY"], r"SSR_TEST_UNSET_KEY.*not set"),
        (["generator.backend=vlm"], r"unknown generator backend 'vlm'; valid choices: hf, vllm, openai"),
        (["generator=openai", "generator.server=external"], r"server=external needs generator.base_urls"),
        (["model=hub"], r"Missing mandatory value: .*name_or_path"),
        (["data=jsonl"], r"Missing mandatory value: data.train.path"),
    ],
)
def test_impossible_configs_fail_before_any_expensive_step(
    tiny_cfg, no_model_loading, monkeypatch, overrides, message
):
    from ssr.cli.train import train

    monkeypatch.delenv("SSR_TEST_UNSET_KEY", raising=False)
    cfg = tiny_cfg(*overrides)
    with pytest.raises(Exception, match=message):
        train(cfg)
    cache = Path(cfg.paths.cache_dir)
    assert not (cache / "generations").exists() and not (cache / "verdicts").exists()
    assert not (Path(cfg.paths.output_dir) / "selection.jsonl").exists()


# --------------------------------------------------------------------------- secrets
def test_planted_api_keys_never_reach_any_output_file(tmp_path, tokenizer):
    """A real ssr-train with the OpenAI judge (local fake server), CSV + offline W&B loggers and
    checkpoints; every file it writes (run dir, caches, W&B dirs) and its log are searched."""
    import os
    import subprocess
    import sys
    import uuid

    from conftest import REPO
    from ssr.models.loading import embedded_tokenizer_dir
    from test_judge_faults import chat_reply, fake_server

    secrets = {
        "OPENAI_API_KEY": f"sk-planted-{uuid.uuid4().hex}",
        "WANDB_API_KEY": f"planted-wandb-{uuid.uuid4().hex}",
        "HF_TOKEN": f"hf_planted{uuid.uuid4().hex}",
    }
    cache, run, wandb_home = tmp_path / "ssr_cache", tmp_path / "run", tmp_path / "wandb_home"
    cache.mkdir()
    (cache / "models").symlink_to(embedded_tokenizer_dir().parent)
    env = {
        **os.environ,
        **secrets,
        "PYTHONPATH": str(REPO / "src"),
        "SSR_CACHE": str(cache),
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": str(wandb_home / "config"),
        "WANDB_CACHE_DIR": str(wandb_home / "cache"),
        "WANDB_DATA_DIR": str(wandb_home / "data"),
    }
    with fake_server(lambda n, body: chat_reply("Yes" if n % 2 else "No")) as server:
        cmd = [
            sys.executable,
            "-m",
            "ssr.cli.train",
            "model=tiny_random",
            "method=ssr",
            "judge=openai",
            f"judge.base_url={server.url}",
            "judge.model=fake",
            "judge.max_concurrency=2",
            "data.max_train_rows=8",
            "data.max_val_rows=0",
            "data.batch_size=4",
            "eval.callback.enabled=false",
            "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "generator.decoding.max_new_tokens=8",
            "callbacks.model_checkpoint.every_n_train_steps=1",
            "logger=wandb",
            f"hydra.run.dir={run}",
        ]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log.decode(errors="replace")[-4000:]
    assert len(server.requests) == 8, "the judge really ran"
    assert {r["headers"]["Authorization"] for r in server.requests} == {f"Bearer {secrets['OPENAI_API_KEY']}"}

    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    for expected in (
        "run/.hydra/config.yaml",
        "run/train.log",
        "run/metrics.csv",
        "run/checkpoints/last.ckpt",
    ):
        assert expected in names
    assert any(n.startswith("run/wandb/offline-run-") for n in names), "W&B wrote its offline run"
    assert "api_key_env: OPENAI_API_KEY" in (run / ".hydra" / "config.yaml").read_text()
    for name, value in secrets.items():
        needle = value.encode()
        assert needle not in log, f"{name} in the console log"
        leaks = [p for p in files if needle in p.read_bytes()]
        assert not leaks, f"{name} written to {leaks}"
    assert len(files) > 20


def test_no_config_holds_a_secret_value():
    """Keys are named by env var (``api_key_env``), never given as values in conf/."""
    import re

    from ssr.cli._hydra import CONF_DIR

    for path in Path(CONF_DIR).rglob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"^\s*(api_key|token|password|secret)\s*:", text, re.M), path
        assert not re.search(r"\b(sk-[A-Za-z0-9]{8,}|hf_[A-Za-z0-9]{8,})", text), path


# --------------------------------------------------------------------------- safe model loading
def test_pickle_only_checkpoint_is_refused(tmp_path, tiny_model, tokenizer):
    from ssr.models.loading import ModelSpec, load_model

    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_model(ModelSpec(name_or_path=str(tmp_path)))  # safetensors weights load
    (tmp_path / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle: can run code on load
    with pytest.raises(OSError, match=r"safetensors"):
        load_model(ModelSpec(name_or_path=str(tmp_path)))
    assert model.config.num_hidden_layers == tiny_model.config.num_hidden_layers


def remote_code_model(folder: Path, model, tokenizer) -> Path:
    """A model directory whose remote code (``auto_map``) writes the returned marker file."""
    import json

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    marker = folder / "remote_code_ran"
    code = f"open({str(marker)!r}, 'w').write('pwned')\nfrom transformers import LlamaConfig as EvilConfig\n"
    (folder / "evil.py").write_text(code)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil_llama"
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    return marker


def test_remote_code_never_runs_without_opt_in(tmp_path, tiny_model, tokenizer):
    from ssr.models.loading import ModelSpec, load_model

    marker = remote_code_model(tmp_path, tiny_model, tokenizer)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(ModelSpec(name_or_path=str(tmp_path)))
    assert not marker.exists()
    assert ModelSpec().trust_remote_code is False  # the one default (the model group's schema)
    for path in Path(__file__).resolve().parents[1].joinpath("conf", "model").glob("*.yaml"):
        if path.name != "_base.yaml":  # every option says it again, on purpose: remote code is opt-in
            assert "trust_remote_code: false" in path.read_text(), path


# --------------------------------------------------------------------------- endpoints
def test_unreachable_judge_fails_before_generation_with_one_line_naming_the_url(tmp_path):
    """Before: found only after generation, 55 s later, with 48 warnings and 5 tracebacks."""
    import subprocess

    from cli_runs import cli_env, train_cmd
    from test_judge_faults import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    cache = tmp_path / "cache"
    cmd = train_cmd("method=ssr", "judge=openai", f"judge.base_url={url}", "judge.api_key_env=null")
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=cli_env(SSR_CACHE=str(cache)), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: judge.base_url={url}: no server answered "
        f"(tried GET {url}/models: ConnectError: [Errno 111] Connection refused)"
    ]
    assert "Traceback" not in proc.stderr + proc.stdout and "WARNING" not in proc.stderr + proc.stdout
    assert not (cache / "generations").exists(), "nothing was generated"
    assert not (tmp_path / "outputs").exists(), "the run directory Hydra made for it is gone"


def test_judge_endpoint_is_checked_before_any_model_load(tiny_cfg, no_model_loading):
    from ssr.cli.train import train
    from ssr.runtime.http_preflight import EndpointError
    from test_judge_faults import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    cfg = tiny_cfg("method=ssr", "judge=openai", f"judge.base_url={url}", "judge.api_key_env=null")
    with pytest.raises(EndpointError, match=rf"judge\.base_url={url}: no server answered"):
        train(cfg)
    cfg = tiny_cfg("method=sft", "judge=openai", f"judge.base_url={url}", "judge.api_key_env=null")
    from ssr.cli.guard import check_endpoints

    check_endpoints(cfg)  # sft never calls the judge: no preflight, no error
