"""The session-scoped `llama_server` fixture: llama-cpp-python's real server over the embedded GGUF.

Test modules load it with ``pytest_plugins = ["llama_server_fixtures"]`` (and import it only under
TYPE_CHECKING: the fixture object carries the URL, model alias and key). It is started through
``ssr.generation.llama_server.LlamaCppServer`` (what ``generator.server=llama_cpp`` runs), with an API key the
server demands. Skipped without llama-cpp-python, except in CI (``CI`` set), where that fails.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ssr.generation.llama_server import LlamaCppServer
from ssr.models.loading import embedded_gguf_path

SERVER_KEY = "ssr-test-server-key-7f3a9c"  # the server demands it: a request without it gets 401
KEY_ENV = "SSR_TEST_LLAMA_SERVER_KEY"
MODEL_ALIAS = "smollm2-135m-instruct"
STARTUP_TIMEOUT_S = 120


@dataclass(frozen=True)
class LlamaServer:
    base_url: str
    log_path: Path
    model: str = MODEL_ALIAS
    key: str = SERVER_KEY
    key_env: str = KEY_ENV  # tests set it (monkeypatch) where a client reads the key from the env

    def requests(self, path: str = "/v1/completions") -> int:
        """POST requests to ``path`` so far, from the server's access log."""
        return self.log_path.read_text(errors="replace").count(f'"POST {path} HTTP')


def require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        reason = "llama-cpp-python is not installed (pip install -e '.[judge-server]')"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the server tests")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def llama_cpp_installed() -> None:
    require_llama_cpp()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    require_llama_cpp()
    server = LlamaCppServer(
        embedded_gguf_path(),
        alias=MODEL_ALIAS,
        n_ctx=2048,
        n_threads=1,  # 2 threads spin-wait on each other on a busy 2-core machine: ~20x slower
        api_key=SERVER_KEY,
        startup_timeout_s=STARTUP_TIMEOUT_S,
        log_dir=tmp_path_factory.mktemp("llama_server"),
    )
    with server:
        assert server.log_path is not None
        yield LlamaServer(base_url=server.base_url, log_path=server.log_path)
