"""OpenAIJudge against misbehaving local HTTP servers (refused, hanging, 5xx, 429, malformed, nonsense)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ssr.judges import JudgeError, JudgeItem, run_judge
from ssr.judges.openai import OpenAIJudge
from ssr.runtime.cache import JsonlCache


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0


def chat_reply(text: str) -> Reply:
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    return Reply(body=json.dumps(body).encode())


@dataclass
class FakeServer:
    url: str
    requests: list[dict] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)  # GET paths (the endpoint preflight's /v1/models)


@contextmanager
def fake_server(script: Callable[[int, dict], Reply], models_status: int = 200) -> Iterator[FakeServer]:
    """Serve ``script(n, request_json)`` for the n-th POST (0-based) on a free 127.0.0.1 port;
    ``GET .../models`` answers a one-model list with ``models_status``."""
    release = threading.Event()
    lock = threading.Lock()
    state: FakeServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                n = len(state.requests)
                state.requests.append({"json": body, "headers": dict(self.headers)})
                state.times.append(time.monotonic())
            reply = script(n, body)
            if reply.hang_s:
                release.wait(reply.hang_s)  # bounded: released at teardown
                return
            self.send_response(reply.status)
            for k, v in {"Content-Type": "application/json", **reply.headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def do_GET(self) -> None:
            state.gets.append(self.path)
            body = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode()
            self.send_response(models_status if self.path.endswith("/models") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = FakeServer(url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_judge(url: str, **kw) -> OpenAIJudge:
    opts = {"api_key_env": None, "timeout_s": 2.0, "max_retries": 3, "backoff_s": 0.01, "max_concurrency": 4}
    return OpenAIJudge(base_url=url, model="fake", **{**opts, **kw})


def items(n: int = 1) -> list[JudgeItem]:
    return [
        JudgeItem(id=f"r{k}", question=f"q{k}?", gold="Paris", candidate="Paris", document="doc")
        for k in range(n)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_fails_after_retry_budget() -> None:
    judge = make_judge(f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"failed on 3 of 3 attempts.*ConnectError"):
        judge.judge_batch(items())
    assert time.monotonic() - start < 5


def test_hanging_server_times_out_then_fails() -> None:
    with fake_server(lambda n, body: Reply(hang_s=10)) as server:
        judge = make_judge(server.url, timeout_s=0.3, max_retries=1)
        start = time.monotonic()
        with pytest.raises(JudgeError, match=r"timed out after 0.3s"):
            judge.judge_batch(items())
        elapsed = time.monotonic() - start
    assert len(server.requests) == 2 and 0.6 <= elapsed < 3


def test_hang_then_answer_recovers() -> None:
    def script(n: int, body: dict) -> Reply:
        return Reply(hang_s=10) if n == 0 else chat_reply("Yes")

    with fake_server(script) as server:
        (verdict,) = make_judge(server.url, timeout_s=0.3).judge_batch(items())
    assert verdict.accept and verdict.parsed and len(server.requests) == 2


def test_500_then_success_with_exponential_backoff() -> None:
    def script(n: int, body: dict) -> Reply:
        return Reply(status=500, body=b"boom") if n < 2 else chat_reply("Yes.")

    with fake_server(script) as server:
        (verdict,) = make_judge(server.url, backoff_s=0.1).judge_batch(items())
    assert verdict.accept and verdict.parsed
    gaps = [b - a for a, b in zip(server.times, server.times[1:])]
    assert len(gaps) == 2 and gaps[0] >= 0.1 and gaps[1] >= 0.2  # backoff_s * 2**attempt


def test_429_honours_retry_after() -> None:
    def script(n: int, body: dict) -> Reply:
        return (
            Reply(status=429, body=b"slow down", headers={"Retry-After": "1"}) if n == 0 else chat_reply("No")
        )

    with fake_server(script) as server:
        (verdict,) = make_judge(server.url, backoff_s=0.01).judge_batch(items())
    assert not verdict.accept and verdict.parsed
    assert server.times[1] - server.times[0] >= 0.95  # waited Retry-After, not the 10 ms backoff


def test_client_error_is_not_retried() -> None:
    with (
        fake_server(lambda n, body: Reply(status=400, body=b'{"error": "bad model"}')) as server,
        pytest.raises(JudgeError, match=r"HTTP 400 \(not retried\).*bad model"),
    ):
        make_judge(server.url).judge_batch(items())
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "body",
    [b"not json at all", b'{"choices": []}', b'{"object": "error"}', b'{"choices": [{"text": "Yes"}]}'],
)
def test_malformed_replies_fail_clearly_and_run_judge_says_how_to_resume(tmp_path: Path, body: bytes) -> None:
    ok_items = items(2)
    bad = JudgeItem(id="bad", question="BROKEN", gold="g", candidate="c")

    def script(n: int, request: dict) -> Reply:
        return Reply(body=body) if "BROKEN" in json.dumps(request) else chat_reply("Yes")

    path = tmp_path / "verdicts.jsonl"
    with fake_server(script) as server:
        judge = make_judge(server.url, max_retries=2)
        with pytest.raises(JudgeError) as err:
            run_judge(judge, [*ok_items, bad], JsonlCache(path), batch_size=2, progress=False)
    message = str(err.value)
    assert "item 'bad'" in message and "3 of 3 attempts" in message
    assert "2 of 3 unique items are judged" in message and "re-running resumes" in message
    bad_requests = [r for r in server.requests if "BROKEN" in json.dumps(r["json"])]
    assert len(bad_requests) == 3
    assert len(path.read_text().splitlines()) == 2


def test_unparseable_verdict_text_is_counted_and_never_cached(tmp_path: Path) -> None:
    replies = {"r0": "Yes", "r1": "Maybe, it depends.", "r2": "", "r3": "No"}

    def script(n: int, request: dict) -> Reply:  # item rK asks question "qK?"
        return chat_reply(
            next(text for rid, text in replies.items() if f"q{rid[1:]}?" in json.dumps(request))
        )

    path = tmp_path / "v.jsonl"
    with fake_server(script) as server:
        verdicts = run_judge(
            make_judge(server.url, max_unparseable=0.5), items(4), JsonlCache(path), progress=False
        )
    assert [(v.accept, v.parsed) for v in verdicts] == [
        (True, True),
        (False, False),
        (False, False),
        (False, True),
    ]
    assert "Maybe" in verdicts[1].rationale
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["r0", "r3"]


def test_requests_are_concurrent_but_bounded() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def script(n: int, body: dict) -> Reply:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return chat_reply("Yes")

    with fake_server(script) as server:
        start = time.monotonic()
        verdicts = make_judge(server.url, max_concurrency=3).judge_batch(items(9))
        elapsed = time.monotonic() - start
    assert all(v.accept for v in verdicts) and len(server.requests) == 9
    assert peak[0] == 3 and elapsed < 1.5  # 3 waves of 0.2 s, not 9 sequential requests


def test_payload_is_a_chat_completion_request() -> None:
    with fake_server(lambda n, body: chat_reply("Yes")) as server:
        make_judge(server.url, temperature=0, max_tokens=8).judge_batch(items())
    (request,) = server.requests
    payload = request["json"]
    assert payload["model"] == "fake" and payload["max_tokens"] == 8 and payload["temperature"] == 0
    assert [m["role"] for m in payload["messages"]] == ["system", "user"]
    assert "<candidate>\nParis\n</candidate>" in payload["messages"][1]["content"]
    assert "authorization" not in {k.lower() for k in request["headers"]}  # api_key_env=None: no auth


def test_key_variable_must_be_set_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSR_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeError, match=r"SSR_TEST_JUDGE_KEY.*not set"):
        make_judge("http://127.0.0.1:9/v1", api_key_env="SSR_TEST_JUDGE_KEY")


def test_key_is_read_at_request_time_and_never_stored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    monkeypatch.setenv("SSR_TEST_JUDGE_KEY", "first-secret-value")
    with fake_server(lambda n, body: Reply(status=500) if n == 0 else chat_reply("Yes")) as server:
        judge = make_judge(server.url, api_key_env="SSR_TEST_JUDGE_KEY")
        monkeypatch.setenv("SSR_TEST_JUDGE_KEY", "rotated-secret-value")
        cache_path = tmp_path / "v.jsonl"
        run_judge(judge, items(), JsonlCache(cache_path), progress=False)
    assert [r["headers"]["Authorization"] for r in server.requests] == ["Bearer rotated-secret-value"] * 2
    stored = repr(judge) + judge.fingerprint() + json.dumps(judge.__getstate__(), default=str)
    stored += cache_path.read_text() + caplog.text
    assert "secret-value" not in stored


# --------------------------------------------------------------------------- backoff jitter, Retry-After dates
def test_retry_after_as_an_http_date_is_honoured() -> None:
    from email.utils import formatdate

    def script(n: int, body: dict) -> Reply:
        if n:
            return chat_reply("Yes")
        # an HTTP date 3 s ahead (whole seconds: 2-3 s from now)
        return Reply(
            status=429, body=b"slow down", headers={"Retry-After": formatdate(time.time() + 3, usegmt=True)}
        )

    with fake_server(script) as server:
        (verdict,) = make_judge(server.url, backoff_s=0.01, backoff_jitter=0).judge_batch(items())
    assert verdict.accept
    assert 1.9 <= server.times[1] - server.times[0] < 5  # not the 10 ms backoff (the date used to be ignored)


def test_retry_after_parsing() -> None:
    from datetime import datetime, timezone

    import httpx

    from ssr.judges.openai import _retry_after_s

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)

    def parsed(value: str) -> float | None:
        return _retry_after_s(httpx.Response(429, headers={"Retry-After": value}), now=now)

    assert parsed("7") == 7.0
    assert parsed("Thu, 01 Jan 2026 12:00:30 GMT") == 30.0
    assert parsed("Thu, 01 Jan 2026 11:59:00 GMT") == 0.0  # in the past: retry now
    assert parsed("soon") is None  # unparseable: our own backoff


def test_backoff_has_jitter_and_never_undercuts_the_base_wait() -> None:
    import random

    from ssr.judges.openai import backoff_wait

    rng = random.Random(0)
    waits = [backoff_wait(2, 1.0, 0.5, None, rng) for _ in range(200)]
    assert all(4.0 <= w <= 6.0 for w in waits) and max(waits) - min(waits) > 1.5
    after = [backoff_wait(0, 1.0, 0.5, 10.0, rng) for _ in range(50)]
    assert all(10.0 <= w <= 15.0 for w in after) and len({round(w, 3) for w in after}) > 40
    assert backoff_wait(3, 0.5, 0.0, None, rng) == 4.0  # jitter 0: plain exponential backoff


def test_threads_failing_together_do_not_retry_in_lockstep() -> None:
    first: dict[str, float] = {}
    gaps: dict[str, float] = {}
    lock = threading.Lock()

    def script(n: int, body: dict) -> Reply:
        question = body["messages"][-1]["content"]
        with lock:
            if question not in first:
                first[question] = time.monotonic()
                return Reply(status=503, body=b"busy")
            gaps[question] = time.monotonic() - first[question]
        return chat_reply("Yes")

    with fake_server(script) as server:
        judge = make_judge(server.url, backoff_s=0.3, backoff_jitter=1.0, max_concurrency=12)
        verdicts = judge.judge_batch(items(12))
    assert all(v.accept for v in verdicts) and len(gaps) == 12
    assert min(gaps.values()) >= 0.29  # never sooner than the backoff
    assert max(gaps.values()) - min(gaps.values()) > 0.08, f"retries in lockstep: {sorted(gaps.values())}"


# --------------------------------------------------------------------------- endpoint preflight
def test_preflight_of_an_endpoint_with_nothing_listening_names_the_url_and_what_was_tried() -> None:
    from ssr.runtime.http_preflight import EndpointError

    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(EndpointError) as err:
        make_judge(url).preflight()
    assert time.monotonic() - start < 5
    text = str(err.value)
    assert text.startswith(f"judge.base_url={url}: no server answered (tried GET {url}/models: ConnectError")
    assert "\n" not in text


def test_preflight_passes_on_a_model_list_and_sends_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSR_TEST_JUDGE_KEY", "sk-test-preflight")
    with fake_server(lambda n, body: chat_reply("Yes")) as server:
        what = make_judge(server.url, api_key_env="SSR_TEST_JUDGE_KEY").preflight()
    assert server.gets == ["/v1/models"] and not server.requests and "HTTP 200" in what


def test_preflight_falls_back_to_a_one_token_completion() -> None:
    """A server without GET /models (404) that answers chat completions passes; one that answers
    neither fails, naming both requests."""
    from ssr.runtime.http_preflight import EndpointError, check_endpoint

    with fake_server(lambda n, body: chat_reply("Yes"), models_status=404) as server:
        what = check_endpoint(server.url, key="generator.base_url", model="fake")
    assert server.gets == ["/v1/models"] and len(server.requests) == 1
    assert server.requests[0]["json"]["max_tokens"] == 1 and what.startswith("POST")
    with (
        fake_server(lambda n, body: Reply(status=404, body=b"no"), models_status=404) as server,
        pytest.raises(
            EndpointError, match=r"no OpenAI-compatible API there \(tried GET .*/v1/models: HTTP 404; POST"
        ),
    ):
        check_endpoint(server.url, key="judge.base_url")


def test_preflight_reports_a_rejected_key() -> None:
    from ssr.runtime.http_preflight import EndpointError, check_endpoint

    with (
        fake_server(lambda n, body: chat_reply("Yes"), models_status=401) as server,
        pytest.raises(EndpointError, match=r"rejected the API key \(check judge.api_key_env=K\)"),
    ):
        check_endpoint(server.url, key="judge.base_url", key_hint="judge.api_key_env=K")
