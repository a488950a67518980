"""`serve` against hostile and broken clients, with raw sockets on 127.0.0.1.

Each test starts a real `serve` process with small limits (a 1-second head or body deadline, a cap
of a few connections) so the behaviour shows within seconds; every loop is bounded in count and time.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "wk_hostile_test"
BASIC = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
LOG_LINE = re.compile(r"^segment-klaviyo serve: INFO 127\.0\.0\.1:\d+ went away mid-body \(11 bytes of /v1/batch "
                      r"came\); nothing was stored$")


class Serve:
    """A `serve` process with the given options; `port` once it listens."""

    def __init__(self, tmp_path: Path, *options: str, env: dict[str, str] | None = None,
                 base_url: str = "http://127.0.0.1:9"):
        self.log = tmp_path / "serve.log"
        self.state = tmp_path / "state"
        command = [sys.executable, "-m", "engine", "serve", "--port", "0", "--state", str(self.state),
                   "--set", "privateKey=pk_hostile_SECRET", "--set", "listId=L", "--base-url", base_url, *options]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 30
        while not (found := re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.output())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"serve did not start:\n{self.output()}")
            time.sleep(0.05)
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def connect(self, sent: bytes = b"") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if sent:
            sock.sendall(sent)
        return sock

    def metric(self, series: str) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(f"segment_klaviyo_{series} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(*options: str, **kwargs: Any) -> Serve:
        server = Serve(tmp_path, "--write-key", KEY, *options, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def is_closed(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {BASIC}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


# what a slow client sends before it stalls
SLOW_HEADS = {
    "nothing": b"",
    "half a request line": b"POST /v1/tr",
    "headers without their end": b"POST /v1/track HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n",
    "a second request's head on a kept-alive connection":
        post_head("/v1/track", 2) + b'{}' + b"POST /v1/track HTTP/1.1\r\nHost: t\r\n",
}


@pytest.mark.parametrize("sent", SLOW_HEADS)
def test_a_slow_request_head_is_closed_at_the_head_timeout(serve: Callable[..., Serve], sent: str) -> None:
    server = serve("--head-timeout", "1", "--keep-alive-timeout", "30")
    sock = server.connect(SLOW_HEADS[sent])
    data, waited = read_until_closed(sock, timeout=10)
    assert 0.8 < waited < 5, waited
    answers = data.count(b"HTTP/1.1 ")
    assert answers == (1 if sent.startswith("a second") else 0), data  # only the complete first request
    assert server.metric('connections_closed_total{reason="head_timeout"}') == 1


@pytest.mark.parametrize("pieces", [1, 20])
def test_a_request_head_over_16_kib_is_answered_400_and_its_connection_closed(serve: Callable[..., Serve],
                                                                              pieces: int) -> None:
    server = serve("--head-timeout", "30")
    body = b'{"userId": "u1", "event": "E"}'
    padded = post_head("/v1/track", len(body)).replace(b"Host: t\r\n", b"Host: t\r\nX-Pad: " + b"p" * 8000 + b"\r\n")
    with server.connect(padded + body) as sock:  # under the cap: answered as usual
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    too_large = padded.replace(b"X-Pad: ", b"X-Pad-2: " + b"q" * 9000 + b"\r\nX-Pad: ")
    sock = server.connect()
    step = len(too_large) // pieces + 1
    for start in range(0, len(too_large), step):  # in one piece, or dribbled (each its own read)
        sock.sendall(too_large[start:start + step])
        time.sleep(0.05 if pieces > 1 else 0)
    data, waited = read_until_closed(sock, timeout=10)
    assert data.startswith(b"HTTP/1.1 400 ") and data.endswith(b"Invalid HTTP request received."), data
    assert waited < 5
    assert server.metric('connections_closed_total{reason="head_too_large"}') == 1
    events = httpx.get(server.url + "/health", timeout=5).json()["events"]
    assert events["pending"] + events["delivered"] + events["dead"] == 1  # only the first request's message


def test_a_request_head_that_keeps_coming_is_cut_off_past_16_kib(serve: Callable[..., Serve]) -> None:
    server = serve("--head-timeout", "30")
    sock = server.connect(b"POST /v1/track HTTP/1.1\r\nHost: t\r\nX-Endless: ")
    sent = 0
    try:
        for _ in range(200):  # one header value, never ended: the parser would keep it all
            time.sleep(0.02)
            sock.sendall(b"e" * 1000)
            sent += 1000
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert 16_000 < sent < 200_000, sent  # closed on the way
    assert server.metric('connections_closed_total{reason="head_too_large"}') == 1


def test_a_slow_body_is_answered_408_and_its_connection_closed(serve: Callable[..., Serve]) -> None:
    server = serve("--body-timeout", "1", "--head-timeout", "30")
    sock = server.connect(post_head("/v1/track", 100) + b'{"userId": "u1"')
    data, waited = read_until_closed(sock, timeout=10)
    head, _, body = data.partition(b"\r\n\r\n")
    assert 0.8 < waited < 5, waited
    assert head.startswith(b"HTTP/1.1 408 ") and b"\r\nconnection: close" in head.lower()
    assert json.loads(body) == {
        "success": False, "code": "request_timeout",
        "message": "the body did not arrive within 1 s (15 bytes came); nothing was stored",
        "reason": "the body did not arrive within 1 s (15 bytes came); nothing was stored"}
    assert httpx.get(server.url + "/health", timeout=5).json()["events"]["pending"] == 0


def test_clients_gone_mid_body_cost_one_short_log_line_each(serve: Callable[..., Serve]) -> None:
    server = serve("--max-connections", "100")
    for _ in range(50):
        with server.connect(post_head("/v1/batch", 1000) + b'{"batch": [') as sock:
            sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 20
    while server.metric('http_requests_total{endpoint="batch",status="499"}') < 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = server.output().splitlines()
    gone = [line for line in lines if "went away" in line]
    assert len(gone) == 50 and all(LOG_LINE.match(line) for line in gone), gone[:3]
    assert len(lines) == 51, lines  # and the "listening" line: no traceback, no other noise
    assert server.metric('http_requests_total{endpoint="batch",status="499"}') == 50
    assert httpx.get(server.url + "/health", timeout=5).json()["events"]["pending"] == 0


def test_the_oldest_idle_connection_makes_room_and_health_answers(serve: Callable[..., Serve]) -> None:
    server = serve("--max-connections", "5", "--head-timeout", "30", "--keep-alive-timeout", "30")
    idle = [server.connect() for _ in range(5)]
    time.sleep(0.7)  # older than the grace that protects new connections
    health = server.connect(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data, _ = read_until_closed(health, timeout=10)
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert [is_closed(sock) for sock in idle] == [True, False, False, False, False]
    assert server.metric('connections_closed_total{reason="evicted_idle"}') == 1


def test_when_every_connection_is_busy_requests_get_503_but_health_and_metrics_answer(
        serve: Callable[..., Serve]) -> None:
    server = serve("--max-connections", "5", "--body-timeout", "30")
    busy = [server.connect(post_head("/v1/track", 100) + b"{") for _ in range(5)]
    time.sleep(0.7)
    answers = {}
    for request in (b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n",
                    post_head("/v1/track", 2) + b"{}"):
        data, _ = read_until_closed(server.connect(request), timeout=10)
        head, _, body = data.partition(b"\r\n\r\n")
        answers[request.split(b" ")[1].decode()] = (head.split(b" ")[1].decode(), body)
    assert answers["/health"][0] == "200" and answers["/metrics"][0] == "200"
    reason = "the server has too many open connections; send again shortly"
    assert answers["/v1/track"] == ("503", json.dumps({"success": False, "code": "busy", "message": reason,
                                                       "reason": reason}).encode())
    assert not any(is_closed(sock) for sock in busy)  # requests in progress are never cut off
    assert server.output().count("WARNING 5 connections open (the --max-connections cap)") == 1


# -- write keys ---------------------------------------------------------------------------------------------

def track(url: str, key: str) -> int:
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    return httpx.post(url + "/v1/track", json={"userId": "u1", "event": "E"}, headers={"Authorization": auth},
                      timeout=5).status_code


def test_write_keys_from_a_file_and_the_environment(tmp_path: Path) -> None:
    keys = tmp_path / "write-keys"
    keys.write_text("# Segment sources\nwk_from_file_1\n\n  wk_from_file_2  \n")
    server = Serve(tmp_path, "--write-key-file", str(keys), env={"SEGMENT_KLAVIYO_WRITE_KEYS": "wk_env_1, wk_env_2"})
    try:
        statuses = {key: track(server.url, key) for key in ("wk_from_file_1", "wk_from_file_2", "wk_env_1",
                                                             "wk_env_2", "# Segment sources", "wk_unknown")}
        assert statuses == {"wk_from_file_1": 200, "wk_from_file_2": 200, "wk_env_1": 200, "wk_env_2": 200,
                            "# Segment sources": 401, "wk_unknown": 401}
    finally:
        server.stop()
    assert not re.search(r"wk_(from|env)|pk_hostile_SECRET", server.output())


NO_KEY = ("segment-klaviyo: give at least one write key (--write-key-file FILE, SEGMENT_KLAVIYO_WRITE_KEYS or "
          "--write-key): the key Segment's libraries are configured with\n")


@pytest.mark.parametrize("file_text,env,expected", [
    (None, "", NO_KEY),
    (None, " , ", NO_KEY),
    ("# only a comment\n\n", "wk_env_key", "segment-klaviyo: --write-key-file {file}: no key in it (one a line)\n"),
    (b"\xff\xfe not text", None, "segment-klaviyo: --write-key-file {file}: not UTF-8 text\n"),
    ("missing", None, "segment-klaviyo: --write-key-file {file}: No such file or directory\n"),
])
def test_bad_write_key_sources_exit_2_with_one_line(tmp_path: Path, file_text: str | bytes | None, env: str | None,
                                                    expected: str) -> None:
    options: list[str] = []
    path = tmp_path / "keys"
    if file_text is not None:
        if isinstance(file_text, bytes):
            path.write_bytes(file_text)
        elif file_text != "missing":
            path.write_text(file_text)
        options = ["--write-key-file", str(path)]
    environment = {k: v for k, v in os.environ.items() if k != "SEGMENT_KLAVIYO_WRITE_KEYS"}
    if env is not None:
        environment["SEGMENT_KLAVIYO_WRITE_KEYS"] = env
    done = subprocess.run([sys.executable, "-m", "engine", "serve", "--port", "0", "--state", str(tmp_path / "s"),
                           "--set", "privateKey=pk_x", "--set", "listId=L", *options], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env=environment)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", expected.format(file=path))


# -- a client that sends again ------------------------------------------------------------------------------

def test_a_message_sent_again_is_recorded_as_a_duplicate_and_delivered_once(serve: Callable[..., Serve],
                                                                             fake_klaviyo: Any, tmp_path: Path) -> None:
    fake = fake_klaviyo(time_scale=20)
    server = serve("--time-scale", "20", "--linger", "0.05", base_url=fake.url)
    message = {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m-retried",
               "timestamp": "2026-11-01T12:00:00Z"}
    for body in ({"batch": [message]}, {"batch": [message, message]}):  # a retry after a lost answer, and worse
        assert httpx.post(server.url + "/v1/batch", json=body, headers={"Authorization": BASIC},
                          timeout=5).json() == {"success": True}
    deadline = time.monotonic() + 20
    while httpx.get(server.url + "/health", timeout=5).json()["outbox_depth"] and time.monotonic() < deadline:
        time.sleep(0.1)
    events = fake.store.snapshot()["records"]["events"]
    assert [record["key"][2] for record in events] == ["m-retried"]
    assert server.metric("events_duplicate_total") == 2
    listed = subprocess.run([sys.executable, "-m", "engine", "outbox", "rejected", "--skipped", "--state",
                             str(server.state)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    reasons = [(line["event"], line["messageId"], line["reason"]) for line in lines]
    duplicate = "duplicate: event 0 of this source has the same messageId (duplicates are skipped for 86400 s)"
    assert reasons == [(1, "m-retried", duplicate), (2, "m-retried", duplicate)]


def test_a_dedupe_window_of_0_keeps_every_copy(serve: Callable[..., Serve]) -> None:
    server = serve("--dedupe-window", "0")
    message = {"type": "track", "userId": "u1", "event": "E", "messageId": "m-twice"}
    for _ in range(2):
        assert httpx.post(server.url + "/v1/batch", json={"batch": [message]}, headers={"Authorization": BASIC},
                          timeout=5).json() == {"success": True}
    events = httpx.get(server.url + "/health", timeout=5).json()["events"]
    assert (events["pending"] + events["delivered"] + events["dead"], events["skipped"]) == (2, 0)
    assert server.metric("events_duplicate_total") == 0


@pytest.mark.parametrize("option,value,expected", [
    ("--head-timeout", "0", "--head-timeout must be > 0 seconds"),
    ("--body-timeout", "-1", "--body-timeout must be > 0 seconds"),
    ("--keep-alive-timeout", "0", "--keep-alive-timeout must be > 0 seconds"),
    ("--max-connections", "0", "--max-connections must be ≥ 1 and --dedupe-window ≥ 0"),
    ("--dedupe-window", "-5", "--max-connections must be ≥ 1 and --dedupe-window ≥ 0"),
])
def test_bad_limits_exit_2_with_one_line(tmp_path: Path, option: str, value: str, expected: str) -> None:
    done = subprocess.run([sys.executable, "-m", "engine", "serve", "--port", "0", "--state", str(tmp_path / "s"),
                           "--write-key", KEY, "--set", "privateKey=pk_x", "--set", "listId=L", option, value],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"segment-klaviyo: {expected}\n")
    assert not (tmp_path / "s").exists()  # refused before the outbox was opened
