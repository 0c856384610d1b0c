"""generator=openai: own answers and rewrites from OpenAI-compatible completions servers.

Prompts are rendered locally with the model's chat template (as for generator=hf) and sent to
``POST {base_url}/completions`` as text, or as token ids (``prompt_format: token_ids``; vLLM and
SGLang accept them, llama-cpp-python's server does not). Rows are spread over every base URL
through one work queue (``max_concurrency`` requests in flight per URL), so a fast replica takes
more rows. ``server: llama_cpp`` starts llama-cpp-python's server(s) over a GGUF here
(:class:`ssr.generation.llama_server.LlamaCppServer`); ``server: external`` uses running servers.

The generation cache is keyed by the *served* model (:meth:`ServerGenerator.fingerprint`), never
by the HF weights: a quantized GGUF and the bf16 checkpoint are different models.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from tqdm.auto import tqdm

from ssr.generation.config import DecodingConfig, GeneratorConfig, check_server_options
from ssr.generation.llama_server import LlamaCppServer, llama_cpp_version
from ssr.models.loading import embedded_gguf_path
from ssr.runtime.hardware import usable_cores
from ssr.runtime.hashing import content_hash

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

LLAMA_CPP_ALIAS = "ssr-local"
# llama-cpp-python's request defaults are repeat_penalty 1.1, top_k 40, min_p 0.05: not plain
# greedy decoding. These make its "temperature 0" the argmax of the raw logits, as in transformers.
LLAMA_CPP_PLAIN_SAMPLING = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}
_RETRYABLE_STATUS = {408, 409, 429}
_MAX_BACKOFF_S = 30.0


class ServerGenerationError(RuntimeError):
    """A server did not answer, refused a request or returned no text; the message names the URL."""


def end_of_turn_stops(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Stop strings: the chat template's end of an assistant turn (``<|im_end|>`` for SmolLM2) and eos."""
    stops: list[str] = []
    try:
        messages = [{"role": "user", "content": "q"}]
        marker = "\x00ANSWER\x00"
        chat = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": marker}], tokenize=False
        )
        after = chat.split(marker, 1)[1].strip()
        if after:
            stops.append(after)
    except (ValueError, IndexError, TypeError):  # no chat template: eos only
        pass
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops


def llama_cpp_layout(replicas: int | None, n_threads: int | None) -> tuple[int, int]:
    """(servers, threads per server): one thread per server and one server per core by default.

    llama-cpp-python serves one request at a time, and its threads spin-wait on each other, so
    on a small or busy CPU one thread per server is much faster than several in one server (24
    rows: 2 servers x 1 thread 33.6 s, 1 server x 2 threads 43.3 s; a lone request on a loaded
    2-core machine: 0.6 s vs 12.6 s). Given only one of the two, the cores are split by it.
    """
    cores = usable_cores()
    if replicas and n_threads:
        return int(replicas), int(n_threads)
    if replicas:
        return int(replicas), max(1, cores // int(replicas))
    threads = int(n_threads or 1)
    return max(1, cores // threads), threads


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


class CompletionClient:
    """One base URL: ``GET /models`` and ``POST /completions`` with retries of transient failures."""

    def __init__(
        self,
        base_url: str,
        api_key_env: str | None,
        timeout_s: float,
        max_concurrency: int,
        max_retries: int,
        backoff_s: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.max_retries, self.backoff_s = max_retries, backoff_s
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), limits=limits)

    def _headers(self) -> dict[str, str]:
        if self.api_key_env is None:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ServerGenerationError(
                f"generator.api_key_env names the environment variable {self.api_key_env!r}, which is not set"
            )
        return {"Authorization": f"Bearer {key}"}

    def models(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The preflight: the served models, or a one-line error naming the URL."""
        url = f"{self.base_url}/models"
        try:
            response = self._http.get(url, headers=self._headers(), timeout=timeout_s)
        except httpx.TransportError as err:
            raise ServerGenerationError(
                f"generator: nothing answers at {url} ({type(err).__name__}: {err}); start the server "
                "or fix generator.base_urls"
            ) from err
        if response.status_code != 200:
            hint = " (check generator.api_key_env)" if response.status_code in (401, 403) else ""
            raise ServerGenerationError(
                f"generator: GET {url} -> HTTP {response.status_code}{hint}: {_one_line(response.text)}"
            )
        try:
            data = response.json()["data"]
            assert isinstance(data, list)
        except (ValueError, KeyError, TypeError, AssertionError) as err:
            raise ServerGenerationError(
                f"generator: GET {url} is not an OpenAI model list: {_one_line(response.text)}"
            ) from err
        return data

    def complete(self, payload: dict[str, Any], row: int, stop: threading.Event) -> dict[str, Any]:
        """The completion body for one row; transient failures are retried with backoff."""
        url = f"{self.base_url}/completions"
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                response = self._http.post(url, json=payload, headers=self._headers())
                status = response.status_code
                if status < 400:
                    body = response.json()
                    if not isinstance(body["choices"][0]["text"], str):  # malformed bodies are retried
                        raise TypeError(f"choices[0].text is not a string: {_one_line(response.text)}")
                    return body
                error = f"HTTP {status}: {_one_line(response.text)}"
                if status < 500 and status not in _RETRYABLE_STATUS:
                    raise ServerGenerationError(f"row {row}: POST {url} -> {error} (not retried)")
            except (httpx.TransportError, ValueError, KeyError, IndexError, TypeError) as err:
                error = f"{type(err).__name__}: {err}"
            if attempt + 1 == attempts or stop.is_set():
                raise ServerGenerationError(
                    f"row {row}: POST {url} failed on {attempt + 1} of {attempts} attempts; last error: {error}"
                )
            wait = min(self.backoff_s * 2**attempt, _MAX_BACKOFF_S)
            log.warning("row %d: %s failed (%s); retrying in %.1fs", row, url, error, wait)
            stop.wait(wait)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()


@dataclass(frozen=True)
class _Served:
    base_urls: list[str]
    model: str


class ServerGenerator:
    """Generates through OpenAI-compatible completions servers (see the module docstring)."""

    def __init__(self, cfg: GeneratorConfig, tokenizer: PreTrainedTokenizerBase, log_dir: Path) -> None:
        check_server_options(cfg)
        self.cfg, self.tokenizer, self.log_dir = cfg, tokenizer, Path(log_dir)
        self.stops = end_of_turn_stops(tokenizer)
        self._stack: ExitStack | None = None
        self._served: _Served | None = None
        self._clients: list[CompletionClient] = []
        self.servers: list[LlamaCppServer] = []
        self._identity: dict[str, Any] | None = None
        self.prompt_token_mismatches = 0

    # ---- identity -------------------------------------------------------------------------------
    @property
    def gguf(self) -> Path:
        return Path(self.cfg.gguf) if self.cfg.gguf else embedded_gguf_path()

    def request_fields(self) -> dict[str, Any]:
        """Decoding fields sent besides the prompt and max_tokens (part of the fingerprint)."""
        d: DecodingConfig = self.cfg.decoding
        fields: dict[str, Any] = {"temperature": d.temperature if d.do_sample else 0.0, "stop": self.stops}
        if d.do_sample:
            fields.update(top_p=d.top_p, seed=d.seed)
        if self.cfg.server == "llama_cpp":
            fields.update(LLAMA_CPP_PLAIN_SAMPLING)
        return {**fields, **dict(self.cfg.extra_body)}

    @cached_property
    def fingerprint(self) -> str:
        """The served model's identity: the GGUF file (name, size) and llama-cpp-python's version for
        ``server: llama_cpp`` (no server is started for it); the model id and root that
        ``GET /v1/models`` reports for ``server: external`` (the preflight)."""
        if self.cfg.server == "llama_cpp":
            gguf = self.gguf
            if not gguf.is_file():
                raise FileNotFoundError(f"generator.gguf: GGUF file {gguf} does not exist")
            served: dict[str, Any] = {
                "kind": "llama_cpp",
                "gguf": gguf.name,
                "bytes": gguf.stat().st_size,
                "llama_cpp_python": llama_cpp_version(),
            }
        else:
            self._identity = self._external_identity()
            served = {"kind": "external", **self._identity}
        return content_hash("openai", served, self.cfg.prompt_format, self.request_fields())

    def _external_identity(self) -> dict[str, Any]:
        clients = [self._client(url) for url in self.cfg.base_urls]
        listed = {c.base_url: c.models() for c in clients}
        chosen: dict[str, dict[str, Any]] = {}
        for url, models in listed.items():
            ids = [str(m.get("id")) for m in models]
            name = self.cfg.served_model or (ids[0] if ids else None)
            entry = next((m for m in models if str(m.get("id")) == name), None)
            if entry is None:
                raise ServerGenerationError(
                    f"generator.served_model={name!r} is not served at {url} (it serves {ids})"
                )
            chosen[url] = entry
        names = {(str(e.get("id")), str(e.get("root", ""))) for e in chosen.values()}
        if len(names) > 1:
            served = ", ".join(f"{u}: {e.get('id')}" for u, e in chosen.items())
            raise ServerGenerationError(f"generator.base_urls serve different models ({served})")
        model, root = names.pop()
        self._served = _Served(base_urls=list(chosen), model=model)
        return {"model": model, "root": root}

    # ---- lifecycle ------------------------------------------------------------------------------
    def _client(self, url: str) -> CompletionClient:
        for c in self._clients:
            if c.base_url == url.rstrip("/"):
                return c
        client = CompletionClient(
            url,
            self.cfg.api_key_env,
            self.cfg.timeout_s,
            self.cfg.max_concurrency,
            self.cfg.max_retries,
            self.cfg.backoff_s,
        )
        self._clients.append(client)
        return client

    def _start(self) -> _Served:
        """Start the llama_cpp server(s), or run the preflight against the external ones."""
        if self._served is not None:
            return self._served
        if self.cfg.server == "external":
            known = self.__dict__.get("fingerprint") is not None and self._identity is not None
            identity = self._external_identity()  # the preflight: GET /models on every URL
            if known and identity != self._identity:
                raise ServerGenerationError(
                    f"the model served at {', '.join(self.cfg.base_urls)} changed since this stage "
                    f"started ({self._identity} -> {identity}); rerun the stage"
                )
            assert self._served is not None
            return self._served
        opts = dict(self.cfg.llama_cpp)
        replicas, threads = llama_cpp_layout(opts.pop("replicas", None), opts.pop("n_threads", None))
        self._stack = ExitStack()
        try:
            for _ in range(replicas):
                server = LlamaCppServer(
                    self.gguf, alias=LLAMA_CPP_ALIAS, n_threads=threads, log_dir=self.log_dir, **opts
                )
                self.servers.append(self._stack.enter_context(server))
            urls = [s.base_url for s in self.servers]
            for url in urls:
                self._client(url).models()
        except BaseException:
            self.close()
            raise
        self._served = _Served(base_urls=urls, model=LLAMA_CPP_ALIAS)
        return self._served

    def close(self) -> None:
        """Stop the servers this generator started and close its connections."""
        for c in self._clients:
            c.close()
        self._clients = []
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()
        self.servers = []
        self._served = None

    def __enter__(self) -> ServerGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- generation -----------------------------------------------------------------------------
    def _payload(self, model: str, prompt: str | list[int]) -> dict[str, Any]:
        return {
            "model": model,
            "prompt": prompt,
            "max_tokens": self.cfg.decoding.max_new_tokens,
            **self.request_fields(),
        }

    def generate(
        self,
        prompts: list[str],
        on_batch: Callable[[list[int], list[str]], None] | None = None,
        progress: bool = True,
    ) -> list[str]:
        """Texts for already-rendered prompts, in input order; ``on_batch([i], [text])`` runs as each
        row arrives (the cache writes there), so an interruption loses only the rows in flight."""
        if not prompts:
            return []
        served = self._start()
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        sent: list[str | list[int]] = ids if self.cfg.prompt_format == "token_ids" else list(prompts)  # type: ignore[assignment]
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(prompts)):
            todo.put(i)
        done: queue.SimpleQueue[tuple[int, str, int] | BaseException] = queue.SimpleQueue()
        stop = threading.Event()

        def worker(client: CompletionClient) -> None:
            while not stop.is_set():
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    body = client.complete(self._payload(served.model, sent[i]), i, stop)
                    seen = int((body.get("usage") or {}).get("prompt_tokens") or -1)
                    done.put((i, str(body["choices"][0]["text"]).strip(), seen))
                except BaseException as err:  # handed to the main thread
                    done.put(err)
                    return

        clients = [self._client(u) for u in served.base_urls]
        slots = [c for _ in range(self.cfg.max_concurrency) for c in clients]  # interleaved URLs
        results: list[str | None] = [None] * len(prompts)
        pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="ssr-server-gen")
        bar = tqdm(total=len(prompts), desc="generate", unit="row", disable=not progress)
        t0 = time.perf_counter()
        try:
            for c in slots:
                pool.submit(worker, c)
            for _ in range(len(prompts)):
                item = done.get()
                if isinstance(item, BaseException):
                    raise item
                i, text, seen = item
                if seen >= 0 and seen != len(ids[i]):
                    self._prompt_mismatch(i, seen, len(ids[i]))
                results[i] = text
                if on_batch:
                    on_batch([i], [text])
                bar.update(1)
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
        log.info(
            "server generation: %d rows in %.1fs from %d URL(s) (%s)",
            len(prompts), time.perf_counter() - t0, len(clients), ", ".join(served.base_urls),
        )  # fmt: skip
        return [r if r is not None else "" for r in results]

    def _prompt_mismatch(self, row: int, seen: int, local: int) -> None:
        self.prompt_token_mismatches += 1
        if self.prompt_token_mismatches == 1:
            log.warning(
                "row %d: the server counted %d prompt tokens, the local chat template renders %d: it "
                "tokenizes the prompt differently (an added BOS or special tokens?); outputs will differ "
                "from generator=hf. Use prompt_format=token_ids where the server accepts token ids, or "
                "extra_body (e.g. add_special_tokens: false for vLLM)",
                row, seen, local,
            )  # fmt: skip
