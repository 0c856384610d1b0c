"""llama-cpp-python's OpenAI-compatible server as a child process: start, wait for health, stop.

``with LlamaCppServer(gguf) as server: ...`` starts ``python -m llama_cpp.server`` on a free
127.0.0.1 port, waits until ``GET /v1/models`` answers and stops the server when the block ends
(also on an exception or Ctrl-C). On Linux the server also dies with its parent (``kill -9``
included), so an interrupted stage leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from ssr.runtime.hardware import usable_cores

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy; the message ends with its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (as servers bind: TIME_WAIT leftovers are ok)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the context manager still stops it
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _log_tail(path: Path, chars: int = 600) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    lines = [ln.strip() for ln in text[-chars:].splitlines() if ln.strip()]
    return " | ".join(lines) or "(empty server log)"


class LlamaCppServer:
    """One llama-cpp-python server over a GGUF file, on 127.0.0.1 (see the module docstring).

    llama-cpp-python's server runs one request at a time (it has no parallel slots): run several
    servers, each with a share of the cores, for concurrency (``ssr.generation.server`` does).
    """

    def __init__(
        self,
        gguf: str | Path,
        alias: str = "local",
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        api_key: str | None = None,
        startup_timeout_s: float = 120.0,
        log_dir: str | Path | None = None,
    ) -> None:
        self.gguf = Path(gguf)
        if not self.gguf.is_file():
            raise FileNotFoundError(f"generator.gguf: GGUF file {self.gguf} does not exist")
        self.alias, self.n_ctx, self.n_batch = alias, n_ctx, n_batch
        self.n_threads = n_threads or usable_cores()
        self.api_key = api_key
        self.startup_timeout_s = startup_timeout_s
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
        self.port: int | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the llama_cpp server is not running")
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, port: int) -> list[str]:
        cmd = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf),
            "--model_alias", self.alias,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(self.n_ctx),
            "--n_batch", str(self.n_batch),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--logits_all", "false",  # only the last position's logits are needed to decode
        ]  # fmt: skip
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        return cmd

    def start(self) -> LlamaCppServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ServerStartError(
                "generator.server=llama_cpp needs llama-cpp-python's server: pip install -e '.[judge-server]'"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # another process may take the free port before the server binds it
            self.port = free_port()
            self.log_path = self.log_dir / f"llama_cpp-{self.port}.log"
            with open(self.log_path, "wb") as log_file:
                self._proc = subprocess.Popen(
                    self.command(self.port),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            try:
                self._wait_healthy()
                break
            except ServerStartError:
                self.stop()
                if attempt == 2 or "address already in use" not in _log_tail(self.log_path).lower():
                    raise
        log.info(
            "llama_cpp server on %s (pid %d, %s, %d threads, log %s)",
            self.base_url, self._proc.pid, self.gguf.name, self.n_threads, self.log_path,
        )  # fmt: skip
        return self

    def _wait_healthy(self) -> None:
        assert self._proc is not None and self.log_path is not None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"llama_cpp server ({self.gguf.name}) exited with code {code} while starting: "
                    f"{_log_tail(self.log_path)} (log: {self.log_path})"
                )
            try:
                if httpx.get(f"{self.base_url}/models", headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"llama_cpp server ({self.gguf.name}) did not answer {self.base_url}/models within "
                    f"{self.startup_timeout_s:g}s: {_log_tail(self.log_path)} (log: {self.log_path})"
                )
            time.sleep(0.25)

    def stop(self) -> None:
        """Terminate the server (kill it after 15 s) and wait until it has exited."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.info("llama_cpp server on port %s stopped", self.port)

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
