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

from ssr.cache import JsonlCache
from ssr.judges import JudgeError, JudgeItem, run_judge
from ssr.judges.openai import OpenAIJudge


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
def fake_server(script: Callable[[int, dict], Reply]) -> Iterator[FakeServer]:
    """Serve ``script(n, request_json)`` for the n-th POST (0-based) on a free 127.0.0.1 port."""
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
            self.send_response(200 if self.path.endswith("/models") else 404)
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


def test_unparseable_verdict_text_is_a_counted_reject(tmp_path: Path) -> None:
    replies = {"r0": "Yes", "r1": "Maybe, it depends.", "r2": "", "r3": "No"}

    def script(n: int, request: dict) -> Reply:  # item rK asks question "qK?"
        return chat_reply(
            next(text for rid, text in replies.items() if f"q{rid[1:]}?" in json.dumps(request))
        )

    with fake_server(script) as server:
        verdicts = run_judge(
            make_judge(server.url), items(4), JsonlCache(tmp_path / "v.jsonl"), progress=False
        )
    assert [(v.accept, v.parsed) for v in verdicts] == [
        (True, True),
        (False, False),
        (False, False),
        (False, True),
    ]
    assert sum(not v.parsed for v in verdicts) == 2
    assert "Maybe" in verdicts[1].rationale


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
