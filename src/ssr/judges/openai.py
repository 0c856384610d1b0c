"""LLM judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp...).

Requests run on a thread pool bounded by ``max_concurrency``; connect errors, timeouts, 5xx,
429 (honouring ``Retry-After``, in seconds or as an HTTP date) and malformed replies are retried
with exponential backoff plus random jitter (so threads that failed together do not retry in
lockstep). :meth:`OpenAIJudge.preflight` checks the endpoint before any work.
The API key is read from the environment variable ``api_key_env`` at request time only: it is
never stored on the judge, in its fingerprint, repr, logs or errors.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ssr.judges.base import Judge, JudgeError, JudgeItem, Verdict
from ssr.judges.prompt import DEFAULT_SYSTEM_PROMPT, JudgePrompt, parse_yes_no
from ssr.runtime.http_preflight import check_endpoint

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 60.0
_RETRYABLE_STATUS = {408, 409, 429}


class _Retryable(Exception):
    """A failure worth another attempt; ``wait_s`` overrides the backoff (from Retry-After)."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


def _retry_after_s(response: httpx.Response, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date (RFC 9110 section 10.2.3)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # unparseable: our own backoff
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def backoff_wait(
    attempt: int, backoff_s: float, jitter: float, retry_after_s: float | None, rng: random.Random
) -> float:
    """Seconds before retry ``attempt + 1``: ``Retry-After`` if the server gave one, else
    ``backoff_s * 2**attempt``; plus up to ``jitter`` times that at random (never less)."""
    base = retry_after_s if retry_after_s is not None else backoff_s * 2**attempt
    return min(base * (1.0 + jitter * rng.random()), max(_MAX_BACKOFF_S, base))


def _reply_text(response: httpx.Response) -> str | None:
    """The first choice's message text (None: ``content: null``); raises ``_Retryable`` for a
    malformed body."""
    try:
        body = response.json()
    except ValueError as err:
        raise _Retryable(f"reply is not JSON ({err}): {response.text[:200]!r}") from err
    try:
        content = body["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise _Retryable(f"reply has no choices[0].message: {str(body)[:200]!r}") from err
    return content if isinstance(content, str) else None


class OpenAIJudge(Judge):
    """Asks a chat model "Yes or No?"; a reply that is neither (or ``content: null``) is no
    verdict: counted, never cached, and past ``max_unparseable`` of the items the run stops."""

    name = "openai"
    shardable = False  # a server's queue: rank 0 sends every request

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_jitter: float = 0.5,
        temperature: float = 0.0,
        max_tokens: int = 8,
        prompt_template: str | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        max_document_chars: int | None = 6000,
        max_unparseable: float = 0.05,
    ) -> None:
        if not base_url:
            raise ValueError("judge.base_url must be set (e.g. https://api.openai.com/v1)")
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0 or backoff_jitter < 0:
            raise ValueError(
                "judge needs max_concurrency >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0, "
                "backoff_jitter >= 0"
            )
        if not 0 <= max_unparseable <= 1:
            raise ValueError(f"judge.max_unparseable must be a share in [0, 1], got {max_unparseable}")
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise JudgeError(
                f"judge.api_key_env names the environment variable {api_key_env!r}, which is not "
                "set; export it, or set judge.api_key_env=null for a server without auth"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.max_unparseable = float(max_unparseable)
        self.backoff_s = float(backoff_s)
        self.backoff_jitter = float(backoff_jitter)
        self._rng = random.Random()
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prompt = JudgePrompt.build(prompt_template, system_prompt, max_document_chars)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"
        )

    def _fingerprint_parts(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.prompt.fingerprint_parts(),
        }

    def __getstate__(self) -> dict[str, Any]:  # picklable for process pools / launchers
        state = self.__dict__.copy()
        state["_client"], state["_client_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()

    @property
    def client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                limits = httpx.Limits(
                    max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
                )
                self._client = httpx.Client(timeout=httpx.Timeout(self.timeout_s), limits=limits)
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _headers(self) -> dict[str, str]:
        if self.api_key_env is None:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise JudgeError(f"environment variable {self.api_key_env!r} (judge.api_key_env) is not set")
        return {"Authorization": f"Bearer {key}"}

    def preflight(self) -> str:
        """Check that the endpoint answers and takes the key (``ssr.runtime.http_preflight``)."""

        hint = f"judge.api_key_env={self.api_key_env}" if self.api_key_env else "judge.api_key_env"
        return check_endpoint(
            self.base_url,
            key="judge.base_url",
            model=self.model,
            headers=self._headers(),
            timeout_s=min(self.timeout_s, 15.0),
            key_hint=hint,
        )

    def _payload(self, item: JudgeItem) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": self.prompt.messages(item),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _attempt(self, payload: dict[str, Any]) -> str | None:
        """One request; returns the reply text or raises ``_Retryable`` / ``JudgeError``."""
        url = f"{self.base_url}/chat/completions"
        try:
            response = self.client.post(url, json=payload, headers=self._headers())
        except httpx.TimeoutException as err:
            raise _Retryable(f"timed out after {self.timeout_s:g}s ({type(err).__name__})") from err
        except httpx.TransportError as err:  # connect refused, reset, protocol errors
            raise _Retryable(f"{type(err).__name__}: {err}") from err
        status = response.status_code
        if status >= 500 or status in _RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {status}: {response.text[:200]!r}", wait_s=_retry_after_s(response))
        if status >= 400:
            raise JudgeError(f"POST {url} -> HTTP {status} (not retried): {response.text[:300]!r}")
        return _reply_text(response)

    def ask(self, item: JudgeItem, stop: threading.Event | None = None) -> str | None:
        """The model's reply text for one item (None: ``content: null``), retrying transient
        failures (until ``stop`` is set)."""
        payload = self._payload(item)
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(payload)
            except _Retryable as err:
                if attempt + 1 == attempts or (stop is not None and stop.is_set()):
                    raise JudgeError(
                        f"item {item.id!r}: POST {self.base_url}/chat/completions failed on "
                        f"{attempt + 1} of {attempts} attempts; last error: {err}"
                    ) from err
                wait = backoff_wait(attempt, self.backoff_s, self.backoff_jitter, err.wait_s, self._rng)
                log.warning(
                    "judge %s: item %r attempt %d/%d failed (%s); retrying in %.2fs",
                    self.name,
                    item.id,
                    attempt + 1,
                    attempts,
                    err,
                    wait,
                )
                if stop is not None:
                    stop.wait(wait)
                else:
                    time.sleep(wait)
        raise AssertionError("unreachable")

    def verdict(self, item: JudgeItem, stop: threading.Event | None = None) -> Verdict:
        reply = self.ask(item, stop)
        if reply is None:
            return Verdict(accept=False, score=0.0, rationale="reply content is null", parsed=False)
        answer = parse_yes_no(reply)
        shown = reply.strip()[:200]
        if answer is None:
            return Verdict(accept=False, score=0.0, rationale=f"unparseable reply: {shown!r}", parsed=False)
        return Verdict(accept=answer, score=float(answer), rationale=f"reply: {shown!r}")

    def judge_batch(self, items: list[JudgeItem]) -> list[Verdict]:
        if not items:
            return []
        self._headers()  # fail fast if the key vanished from the environment
        workers = min(self.max_concurrency, len(items))
        stop = threading.Event()  # set on the first failure: the other requests stop retrying
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-judge")
        futures = [pool.submit(self.verdict, item, stop) for item in items]
        try:
            verdicts = [f.result() for f in futures]
        except BaseException:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return verdicts
