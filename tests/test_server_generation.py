"""generator=openai against real llama-cpp-python servers on 127.0.0.1 (the embedded SmolLM2 GGUF).

Rows in order, cache reuse, resume after a kill -9, several base URLs, the preflight error, the
`server: llama_cpp` lifecycle and the fidelity line; the config checks need no server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from hydra.utils import instantiate

from cli_runs import cli_env, run_train
from conftest import compose
from ssr.data.adapters import embedded_grounded_qa
from ssr.data.prompts import PromptConfig
from ssr.generation.config import DecodingConfig, GeneratorConfig
from ssr.generation.generator import BaseModelGenerator
from ssr.generation.llama_server import LlamaCppServer, ServerStartError, free_port, port_is_free
from ssr.generation.server import ServerGenerationError, end_of_turn_stops, llama_cpp_layout
from ssr.judges.rule_qa import RuleQAJudge
from ssr.models.loading import ModelSpec, embedded_gguf_path
from ssr.selection.methods import MethodConfig
from ssr.selection.pipeline import answer_prompts, fidelity_sample_indices, run_selection

if TYPE_CHECKING:
    from llama_server_fixtures import LlamaServer

pytest_plugins = ["llama_server_fixtures"]  # the session-scoped `llama_server` fixture

SPEC = ModelSpec(name_or_path="tiny-random")  # the real SmolLM2 tokenizer; hf fidelity runs a tiny model
DECODING = DecodingConfig(max_new_tokens=8)


def records(n: int):
    return embedded_grounded_qa(split="train")[:n]


def prompts(tokenizer, n: int) -> list[str]:
    return answer_prompts(tokenizer, records(n), PromptConfig(), max_tokens=200)


def external_cfg(server: LlamaServer, *urls: str, **kw) -> GeneratorConfig:
    """generator=openai, server=external at ``urls`` (default: the fixture's server)."""
    return GeneratorConfig(
        backend="openai",
        server="external",
        base_urls=list(urls or [server.base_url]),
        api_key_env=server.key_env,
        max_concurrency=2,
        decoding=DECODING,
        **kw,
    )


def one_request(server: LlamaServer, prompt: str) -> str:
    """The server's greedy answer to one prompt, asked directly (not through ssr)."""
    r = httpx.post(
        f"{server.base_url}/completions",
        json={"model": server.model, "prompt": prompt, "max_tokens": 8, "temperature": 0,
              "repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0, "stop": ["<|im_end|>"]},
        headers={"Authorization": f"Bearer {server.key}"},
        timeout=60,
    )  # fmt: skip
    r.raise_for_status()
    return r.json()["choices"][0]["text"].strip()


@pytest.fixture
def server_key(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(llama_server.key_env, llama_server.key)


# ---- no server needed --------------------------------------------------------------------------


def test_stops_are_the_chat_templates_end_of_turn_and_eos(tokenizer) -> None:
    assert end_of_turn_stops(tokenizer) == ["<|im_end|>"]  # SmolLM2: eos is the end of turn


def test_llama_cpp_layout_is_one_thread_per_server_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ssr.generation.server.usable_cores", lambda: 8)
    assert llama_cpp_layout(None, None) == (8, 1)
    assert llama_cpp_layout(2, None) == (2, 4)
    assert llama_cpp_layout(None, 4) == (2, 4)
    assert llama_cpp_layout(3, 2) == (3, 2)


def test_fidelity_sample_is_spread_and_bounded() -> None:
    assert fidelity_sample_indices(16, 4) == [0, 4, 8, 12]
    assert fidelity_sample_indices(3, 8) == [0, 1, 2]
    assert fidelity_sample_indices(10, 0) == []


def test_hydra_config_builds_a_server_generator_config() -> None:
    cfg = compose(["generator=openai", "generator.server=external", "generator.base_urls=[http://a:1/v1]"])
    gen = instantiate(cfg.generator)
    assert (gen.backend, gen.server, gen.base_urls, gen.fidelity_sample) == (
        "openai", "external", ["http://a:1/v1"], 8,
    )  # fmt: skip
    assert gen.decoding.do_sample is False
    assert compose().generator.backend == "hf"  # the default generator is unchanged


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server": "vllm"}, "generator.server='vllm'"),
        ({"server": "external"}, "needs generator.base_urls"),
        ({"base_urls": ["http://a:1/v1"]}, "set generator.server=external"),
        ({"prompt_format": "token_ids"}, "accepts text only"),
        ({"llama_cpp": {"n_parallel": 4}}, r"generator.llama_cpp: unknown keys \['n_parallel'\]"),
        ({"max_concurrency": 0}, "max_concurrency >= 1"),
    ],
)
def test_bad_server_options_fail_with_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorConfig(backend="openai", **overrides)


def test_a_server_that_exits_at_start_fails_with_its_log_tail(
    llama_cpp_installed: None, tmp_path: Path
) -> None:
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file")
    server = LlamaCppServer(bad, startup_timeout_s=60, log_dir=tmp_path)
    with pytest.raises(ServerStartError, match=r"exited with code \d+ while starting: .+\(log: "):
        server.start()
    assert server.port is not None and port_is_free(server.port)


# ---- against the shared llama_server fixture ---------------------------------------------------


@pytest.mark.server
def test_rows_come_back_in_order_and_a_second_run_makes_no_requests(
    llama_server: LlamaServer, server_key: None, tokenizer, tmp_path: Path
) -> None:
    batch = prompts(tokenizer, 5)
    before = llama_server.requests()
    with BaseModelGenerator(SPEC, external_cfg(llama_server), tmp_path) as gen:
        texts, stats = gen.generate(batch)
    assert (stats.rows, stats.generated, stats.cached) == (5, 5, 0)
    assert llama_server.requests() - before == 5
    assert all(texts) and "<|im_end|>" not in "".join(texts)
    assert texts == [one_request(llama_server, p) for p in batch]  # each row is its prompt's

    rows = [json.loads(line) for line in gen.cache_path.read_text().splitlines()]
    assert len(rows) == 5 and {r["backend"] for r in rows} == {"openai"}
    before = llama_server.requests()
    with BaseModelGenerator(SPEC, external_cfg(llama_server), tmp_path) as again:
        assert again.fingerprint == gen.fingerprint  # keyed by the served model, not a URL or run
        texts2, stats2 = again.generate(batch)
    assert texts2 == texts and (stats2.cached, stats2.generated) == (5, 0)
    assert llama_server.requests() - before == 0


@pytest.mark.server
def test_the_cache_is_keyed_by_the_served_model_not_the_hf_weights(
    llama_server: LlamaServer, server_key: None, tmp_path: Path
) -> None:
    served = BaseModelGenerator(SPEC, external_cfg(llama_server), tmp_path)
    local = BaseModelGenerator(SPEC, GeneratorConfig(server="llama_cpp", backend="openai"), tmp_path)
    hf = BaseModelGenerator(SPEC, GeneratorConfig(), tmp_path)
    assert len({served.fingerprint, local.fingerprint, hf.fingerprint}) == 3
    sampled = replace(external_cfg(llama_server), decoding=replace(DECODING, do_sample=True))
    assert BaseModelGenerator(SPEC, sampled, tmp_path).server.request_fields()["temperature"] == 1.0
    assert served.server.request_fields()["temperature"] == 0.0  # greedy by default


@pytest.mark.server
def test_preflight_names_the_url_when_nothing_answers(
    llama_server: LlamaServer, server_key: None, tokenizer, tmp_path: Path, monkeypatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerGenerationError, match=rf"nothing answers at {dead}/models \(ConnectError"):
        BaseModelGenerator(SPEC, external_cfg(llama_server, llama_server.base_url, dead), tmp_path).generate(
            prompts(tokenizer, 1)
        )
    monkeypatch.setenv(llama_server.key_env, "wrong-key")
    with pytest.raises(ServerGenerationError, match=r"HTTP 401 \(check generator.api_key_env\)"):
        BaseModelGenerator(SPEC, external_cfg(llama_server), tmp_path).generate(prompts(tokenizer, 1))
    with pytest.raises(ServerGenerationError, match="served_model='nope' is not served"):
        monkeypatch.setenv(llama_server.key_env, llama_server.key)
        _ = BaseModelGenerator(SPEC, external_cfg(llama_server, served_model="nope"), tmp_path).fingerprint


@pytest.mark.server
def test_a_failing_request_is_retried_then_fails_naming_the_row(
    llama_server: LlamaServer, server_key: None, tokenizer, tmp_path: Path
) -> None:
    # llama-cpp-python's server takes text prompts only; it answers token ids with HTTP 500
    cfg = replace(external_cfg(llama_server), prompt_format="token_ids", max_retries=1, backoff_s=0.1)
    before = llama_server.requests()
    failed = r"row 0: POST .+/completions failed on 2 of 2 attempts; last error: HTTP 500: .+valid string"
    with pytest.raises(ServerGenerationError, match=failed), BaseModelGenerator(SPEC, cfg, tmp_path) as gen:
        gen.generate(prompts(tokenizer, 1))
    assert llama_server.requests() - before == 2
    assert not gen.cache_path.exists() or gen.cache_path.read_text() == ""


@pytest.mark.server
def test_several_base_urls_share_the_rows(
    llama_server: LlamaServer, server_key: None, tokenizer, tmp_path: Path
) -> None:
    second = LlamaCppServer(
        embedded_gguf_path(),
        alias=llama_server.model,
        n_ctx=2048,
        n_threads=1,
        api_key=llama_server.key,
        log_dir=tmp_path,
    )
    batch = prompts(tokenizer, 6)
    with second:
        cfg = replace(external_cfg(llama_server, llama_server.base_url, second.base_url), max_concurrency=1)
        first_before = llama_server.requests()
        with BaseModelGenerator(SPEC, cfg, tmp_path / "cache") as gen:
            texts, _ = gen.generate(batch)
        first = llama_server.requests() - first_before
        other = second.log_path.read_text().count('"POST /v1/completions HTTP')
    assert first + other == 6 and first >= 1 and other >= 1
    assert texts == [one_request(llama_server, p) for p in batch]


@pytest.mark.server
def test_ssr_generate_resumes_after_kill_9(
    llama_server: LlamaServer, server_key: None, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    overrides = [
        "generator=openai", "generator.server=external", f"generator.base_urls=[{llama_server.base_url}]",
        f"generator.api_key_env={llama_server.key_env}", "generator.max_concurrency=1", "generator.decoding.max_new_tokens=8",
        "model=tiny_random", "method=ssr", "data.max_train_rows=6", "data.max_val_rows=2", "data.max_length=200",
        f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    cmd = [sys.executable, "-c", "from ssr.cli.stages import generate_main; generate_main()", *overrides]
    env = cli_env(**{llama_server.key_env: llama_server.key, "SSR_FAULT_AT": "cache.generations:4"})
    before = llama_server.requests()
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (path,) = (cache / "generations").glob("*.jsonl")
    lines = path.read_text()
    assert lines.count("\n") == 3 and not lines.endswith("\n")  # 3 rows + the torn 4th write
    assert llama_server.requests() - before == 4

    env.pop("SSR_FAULT_AT")
    before = llama_server.requests()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "3/6 cached, 3 computed" in rerun.stdout + rerun.stderr
    assert llama_server.requests() - before == 3  # only the missing rows
    assert len([json.loads(line) for line in path.read_text().splitlines()]) == 6


# ---- server: llama_cpp (started and stopped by the generator) ----------------------------------


@pytest.mark.server
def test_llama_cpp_server_starts_per_stage_and_stops_afterwards(
    llama_cpp_installed: None, tokenizer, tmp_path: Path
) -> None:
    cfg = GeneratorConfig(
        backend="openai", server="llama_cpp", llama_cpp={"replicas": 2, "n_threads": 1, "n_ctx": 1024},
        decoding=DECODING,
    )  # fmt: skip
    batch = prompts(tokenizer, 4)
    with BaseModelGenerator(SPEC, cfg, tmp_path) as gen:
        texts, stats = gen.generate(batch)
        servers = list(gen.server.servers)
        procs = [s._proc for s in servers]
        assert len(servers) == 2 and all(p is not None and p.poll() is None for p in procs)
        assert not any(port_is_free(s.port) for s in servers)  # the check sees a listening server
        per_server = [s.log_path.read_text().count('"POST /v1/completions HTTP') for s in servers]
    assert stats.generated == 4 and all(texts)
    assert sum(per_server) == 4 and min(per_server) >= 1  # the rows were spread over both
    assert all(p.poll() is not None for p in procs) and all(port_is_free(s.port) for s in servers)

    with BaseModelGenerator(SPEC, cfg, tmp_path) as again:  # all cached: no server is started
        texts2, stats2 = again.generate(batch)
        assert again.server.servers == [] and stats2.cached == 4 and texts2 == texts

    with pytest.raises(KeyboardInterrupt), BaseModelGenerator(SPEC, cfg, tmp_path) as gen:
        gen.generate(prompts(tokenizer, 5))  # one new row: the servers start
        ports = [s.port for s in gen.server.servers]
        raise KeyboardInterrupt  # Ctrl-C in the middle of the stage
    assert ports and all(port_is_free(p) for p in ports)


@pytest.mark.server
def test_a_kill_9_of_the_stage_takes_its_llama_cpp_server_down(
    llama_cpp_installed: None, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cmd = [
        sys.executable, "-c", "from ssr.cli.stages import generate_main; generate_main()",
        "generator=openai", "generator.llama_cpp.replicas=1", "generator.llama_cpp.n_ctx=1024",
        "generator.decoding.max_new_tokens=8", "model=tiny_random", "method=ssr", "data.max_train_rows=4",
        "data.max_val_rows=2", "data.max_length=200", f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    env = cli_env(SSR_FAULT_AT="cache.generations:2")
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (log,) = (cache / "servers").glob("llama_cpp-*.log")
    port = int(log.stem.split("-")[1])
    deadline = time.monotonic() + 20
    while not port_is_free(port) and time.monotonic() < deadline:  # SIGTERM as its parent dies
        time.sleep(0.2)
    assert port_is_free(port)


@pytest.mark.server
def test_fidelity_line_in_selection_stats(
    llama_server: LlamaServer, server_key: None, tmp_path: Path
) -> None:
    rows = records(6)
    cfg = replace(external_cfg(llama_server), fidelity_sample=3, max_prompt_tokens=200)
    gen = BaseModelGenerator(SPEC, cfg, tmp_path / "cache")
    _, _, counters = run_selection(
        rows,
        MethodConfig(name="ssr"),
        PromptConfig(),
        gen,
        RuleQAJudge(unanswerable_sentence=PromptConfig().unanswerable_sentence),
        tmp_path / "cache",
        tmp_path / "run",
    )
    fidelity = json.loads((tmp_path / "run" / "selection_stats.json").read_text())["extra"]["fidelity"]
    assert fidelity["rows"] == 3 and fidelity["backend"] == "openai"
    selected = [json.loads(line) for line in (tmp_path / "run" / "selection.jsonl").read_text().splitlines()]
    own_accept = [s["verdict"] for s in selected]  # ssr: the verdict on the own answer
    assert fidelity["self"]["accept_rate"] == round(sum(own_accept[i] for i in (0, 2, 4)) / 3, 4)
    for key in ("identical_to_hf", "accept_rate_hf", "same_verdict"):
        assert 0.0 <= fidelity["self"][key] <= 1.0
    # the hf answers for the sample went through the hf generation cache
    hf = BaseModelGenerator(SPEC, replace(cfg, backend="hf", fidelity_sample=0), tmp_path / "cache")
    assert len(hf.cache_path.read_text().splitlines()) == 3
    assert counters.stages["fidelity_hf_self"]["computed"] == 3
    assert os.path.exists(tmp_path / "cache" / "generations" / f"{gen.fingerprint}.jsonl")


@pytest.mark.server
def test_ssr_train_with_a_llama_cpp_generator_writes_the_fidelity_line(
    llama_cpp_installed: None, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = run_train(
        "generator=openai", "generator.fidelity_sample=2", "generator.decoding.max_new_tokens=8",
        "data.max_length=200", "generator.llama_cpp.n_ctx=1024",
        f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )  # fmt: skip
    extra = json.loads((run / "selection_stats.json").read_text())["extra"]
    assert extra["stages"]["generate_self"]["computed"] == 16
    assert extra["fidelity"]["rows"] == 2 and 0 <= extra["fidelity"]["self"]["identical_to_hf"] <= 1
    assert extra["stages"]["fidelity_hf_self"]["computed"] == 2
    logs = proc.stdout + proc.stderr
    started = re.findall(r"llama_cpp server on http://127.0.0.1:(\d+)/v1", logs)
    stopped = re.findall(r"llama_cpp server on port (\d+) stopped", logs)
    assert started and sorted(stopped) == sorted(started)  # every server it started was stopped
    assert (run / "adapter").is_dir()
