"""Preflight for OpenAI-compatible endpoints: is a server there, and does it take our key?

Run before any generation, so a wrong ``base_url`` (nothing listening, a typo, a wrong port) or a
rejected key fails in a second with one line naming the URL and what was tried, instead of after
the expensive stages with a wall of retry warnings. Judges and generators share it::

    check_endpoint(base_url, key="judge.base_url", model="gpt-4o-mini", headers=auth_headers)

First ``GET {base_url}/models``; a server without that route (404/405/501) gets a 1-token chat
completion instead. Any other answer (2xx, 400, 422, 5xx...) shows that the server is there.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from ssr.runtime.configs import ConfigError

log = logging.getLogger(__name__)

_NO_ROUTE = {404, 405, 501}
_AUTH = {401, 403}


class EndpointError(ConfigError):
    """An endpoint the run needs cannot be reached or refuses the key."""


def _request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response | str:
    """The response, or one line saying why there was none."""
    try:
        return client.request(method, url, **kwargs)
    except httpx.TimeoutException as err:
        return f"timed out ({type(err).__name__})"
    except httpx.TransportError as err:
        return f"{type(err).__name__}: {err}"


def check_endpoint(
    base_url: str,
    *,
    key: str,
    model: str | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    key_hint: str = "",
) -> str:
    """Return what answered (for the log); raise :class:`EndpointError` if nothing usable did.

    ``key`` is the config key of ``base_url`` (for the message); ``key_hint`` says where the API
    key comes from (e.g. "judge.api_key_env=OPENAI_API_KEY"), shown when the server rejects it.
    """
    base = base_url.rstrip("/")
    where = f"{key}={base}"
    tried: list[str] = []
    with httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers or {}) as client:
        models_url = f"{base}/models"
        reply = _request(client, "GET", models_url)
        tried.append(f"GET {models_url}: {reply if isinstance(reply, str) else f'HTTP {reply.status_code}'}")
        if isinstance(reply, str):
            raise EndpointError(f"{where}: no server answered (tried {'; '.join(tried)})")
        if reply.status_code in _NO_ROUTE:
            chat_url = f"{base}/chat/completions"
            payload = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
            reply = _request(client, "POST", chat_url, json=payload)
            tried.append(
                f"POST {chat_url} (1 token): {reply if isinstance(reply, str) else f'HTTP {reply.status_code}'}"
            )
            if isinstance(reply, str) or reply.status_code in _NO_ROUTE:
                raise EndpointError(
                    f"{where}: no OpenAI-compatible API there (tried {'; '.join(tried)}); "
                    "the URL usually ends in /v1"
                )
    if reply.status_code in _AUTH:
        hint = f" (check {key_hint})" if key_hint else ""
        raise EndpointError(f"{where}: the server rejected the API key{hint} (tried {'; '.join(tried)})")
    if model and reply.is_success and reply.request.method == "GET":
        served = _model_ids(reply)
        if served is not None and model not in served:
            log.warning("%s: model %r is not in the server's list %s", where, model, sorted(served)[:10])
    log.info("%s: endpoint answered (%s)", where, tried[-1])
    return tried[-1]


def _model_ids(response: httpx.Response) -> set[str] | None:
    try:
        return {str(m["id"]) for m in response.json()["data"]}
    except (ValueError, KeyError, TypeError):
        return None
