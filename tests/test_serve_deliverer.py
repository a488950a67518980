"""`serve` on a state folder delivers from a second process: the role locks, and the deliverer's life.

The folder has two roles, each one process at a time: the recorder (`serve`) and the deliverer
(the child `serve` starts, engine/serve/deliverer.py); `send` and the `outbox` command's changes take
both. These tests hold the locks' rules and what the supervision promises: a second server is
refused, a killed deliverer is started again and nothing acknowledged is lost or sent twice, and
SIGTERM lets the call in flight finish and be marked before the server exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from test_serve_e2e import ROOT, SETTINGS, TIME_SCALE, WRITE_KEY, Server, all_delivered, auth, event_keys

from engine.delivery.outbox import NewEvent, NewUnit
from engine.delivery.sqlite_outbox import MARK_CHUNK, OutboxLocked, SQLiteOutbox
from engine.fake.server import FakeServer


# -- the locks ------------------------------------------------------------------------------------------------
def test_a_recorders_commits_wait_for_the_disk_and_the_others_do_not(tmp_path: Path) -> None:
    # serve answers 200 after its commit: that commit must survive a power loss (FULL = 2); send and the
    # deliverer can redo what a lost commit held (NORMAL = 1).
    expected = {"recorder": 2, "deliverer": 1, None: 1}
    for role, level in expected.items():
        folder = tmp_path / str(role)
        outbox = SQLiteOutbox(folder, role=role)
        try:
            assert outbox._db().execute("PRAGMA synchronous").fetchone()[0] == level, role
        finally:
            outbox.close()


def test_a_recorder_and_a_deliverer_share_a_folder_and_each_role_is_taken_once(tmp_path: Path) -> None:
    recorder = SQLiteOutbox(tmp_path, role="recorder")
    deliverer = SQLiteOutbox(tmp_path, role="deliverer", create=False)
    try:
        with pytest.raises(OutboxLocked) as second_recorder:
            SQLiteOutbox(tmp_path, role="recorder")
        assert str(second_recorder.value) == (
            f"{tmp_path} is in use by another process that records into it (a running `serve`, `send`, or an "
            "`outbox` command changing it); it holds outbox.lock")
        with pytest.raises(OutboxLocked) as second_deliverer:
            SQLiteOutbox(tmp_path, role="deliverer")
        assert str(second_deliverer.value) == (
            f"{tmp_path} is in use by another process that delivers from it (a running `serve`'s deliverer, a "
            "`worker` or `send`); it holds outbox.deliver.lock")
        with pytest.raises(OutboxLocked, match="outbox.lock"):
            SQLiteOutbox(tmp_path)  # both roles (send): refused while either is held

        # what one records, the other sees and marks; the recorder sees the marks
        recorder.append_events("serve", [NewEvent("m-1", "pending", units=[]),
                                         NewEvent("m-2", "rejected", reason="no userId")])
        assert deliverer.counts().events == {"pending": 0, "delivered": 0, "rejected": 1, "skipped": 1, "dead": 0}
    finally:
        deliverer.close()
    with pytest.raises(OutboxLocked, match="outbox.lock"):
        SQLiteOutbox(tmp_path)  # the recorder still holds its role
    recorder.close()
    SQLiteOutbox(tmp_path).close()  # both free: the whole folder can be taken
    with pytest.raises(ValueError, match="role 'sender'"):
        SQLiteOutbox(tmp_path, role="sender")


def test_a_whole_folder_refuses_each_role(tmp_path: Path) -> None:
    whole = SQLiteOutbox(tmp_path)
    try:
        for role in ("recorder", "deliverer"):
            with pytest.raises(OutboxLocked):
                SQLiteOutbox(tmp_path, role=role)
    finally:
        whole.close()


def test_a_deliverer_marks_a_large_call_in_turns_and_counts_each_event_once(tmp_path: Path) -> None:
    """While another process may record, marks go in transactions of MARK_CHUNK units; an event whose
    units straddle two of them is finished (and counted) once, by the second."""
    recorder = SQLiteOutbox(tmp_path, role="recorder")
    deliverer = SQLiteOutbox(tmp_path, role="deliverer", create=False)
    try:
        def unit(position: int, n: int) -> NewUnit:
            return NewUnit(position, "rule", "POST", "/api/x", "{}", "json", json.dumps({"n": n}))
        events = [NewEvent(f"m-{i}", "pending", units=[unit(0, i)]) for i in range(MARK_CHUNK - 1)]
        events.append(NewEvent("straddles", "pending", units=[unit(0, -1), unit(1, -2)]))  # units 100 and 101
        events += [NewEvent(f"n-{i}", "pending", units=[unit(0, i)]) for i in range(150)]
        recorder.append_events("serve", events)
        units = deliverer.pending_units(0, 1000)
        assert len(units) == 251 and units[MARK_CHUNK - 1].event_id == units[MARK_CHUNK].event_id
        finished = deliverer.mark_delivered([u.id for u in units])
        assert finished.delivered == 250 and len(finished.latencies) == 250 and finished.dead == 0
        assert recorder.counts().events["delivered"] == 250
    finally:
        deliverer.close()
        recorder.close()


WRITER = """
import sys
from engine.delivery.outbox import NewEvent, NewUnit
from engine.delivery.sqlite_outbox import SQLiteOutbox
outbox = SQLiteOutbox(sys.argv[1], role="recorder")
for i in range(int(sys.argv[2])):
    unit = NewUnit(0, "rule", "POST", "/api/x", "{}", "json", '{"n": %d}' % i)
    outbox.append_events("serve", [NewEvent(f"m-{i}", "pending", units=[unit])])
outbox.close()
"""


def test_two_processes_write_one_file_in_turns_and_nothing_is_lost(tmp_path: Path) -> None:
    """A recorder process appends 400 events (one transaction each) while this process, the
    deliverer, marks them as they come: every event ends delivered, none twice, no 'database is locked'."""
    SQLiteOutbox(tmp_path).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "400"], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    deliverer = SQLiteOutbox(tmp_path, role="deliverer")
    try:
        marked: list[int] = []
        deadline = time.monotonic() + 60
        while len(marked) < 400:
            assert time.monotonic() < deadline, f"{len(marked)} of 400 marked"
            units = deliverer.pending_units(marked[-1] if marked else 0, 50)
            if units:
                assert deliverer.mark_delivered([u.id for u in units]).delivered == len(units)
                marked += [u.id for u in units]
            elif writer.poll() is not None:
                break
        assert writer.wait(60) == 0, writer.stderr.read() if writer.stderr else ""
        assert len(marked) == len(set(marked)) == 400
        assert deliverer.counts().events["delivered"] == 400
    finally:
        deliverer.close()
        if writer.poll() is None:
            writer.kill()


# -- the server and its deliverer ------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(SETTINGS), encoding="utf-8")
    started: list[Server] = []

    def start(base_url: str) -> Server:
        one = Server(tmp_path / "state", base_url, settings_file, tmp_path / "serve.log")
        started.append(one)
        return one

    yield start
    for one in started:
        one.stop(signal.SIGKILL)


def deliverer_pids(pid: int) -> list[int]:
    """The live children of a process (serve's deliverer)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def holds(pid: int, name: str) -> bool:
    """Whether a process has a file of that name open (a lock it took)."""
    try:
        return any(os.readlink(fd).endswith("/" + name) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # it ended, or an fd closed meanwhile
        return False


def wait_for_deliverer(pid: int, not_this: int | None = None, timeout: float = 30) -> int:
    """The server's deliverer, once it holds the deliverer's lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [child for child in deliverer_pids(pid) if child != not_this and holds(child, "outbox.deliver.lock")]
        if children:
            return children[0]
        time.sleep(0.05)
    raise AssertionError("serve started no deliverer")


def listening_url(process: subprocess.Popen[bytes], log: Path) -> str:
    """The URL a `serve` process says it listens on (in its log), once it does."""
    deadline = time.monotonic() + 60
    while "listening on http://" not in log.read_text():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.05)
    return log.read_text().split("listening on ", 1)[1].split()[0]


def post_tracks(url: str, prefix: str, count: int) -> list[tuple[str, str]]:
    batch = [{"type": "track", "event": "Item Added", "userId": f"u{i % 5}", "messageId": f"{prefix}-{i}",
              "timestamp": "2026-11-01T12:00:00Z"} for i in range(count)]
    assert httpx.post(url + "/v1/batch", json={"batch": batch}, headers=auth()).json() == {"success": True}
    return [("Item Added", f"{prefix}-{i}") for i in range(count)]


def test_a_second_server_on_the_folder_is_refused(fake_klaviyo: Callable[..., FakeServer],
                                                  server: Callable[..., Server], tmp_path: Path) -> None:
    fake = fake_klaviyo(time_scale=TIME_SCALE)
    first = server(fake.url)
    wait_for_deliverer(first.process.pid)  # the server and its deliverer share the folder
    second = subprocess.run([sys.executable, "-m", "engine", "serve", "--port", "0", "--state", str(first.state),
                             "--write-key", WRITE_KEY, "--base-url", fake.url, "--set", "privateKey=pk_x"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"segment-klaviyo: {first.state} is in use by another process that records into it (a running `serve`, "
        "`send`, or an `outbox` command changing it); it holds outbox.lock")
    send = subprocess.run([sys.executable, "-m", "engine", "send", "--state", str(first.state), "--resume",
                           "--base-url", fake.url, "--set", "privateKey=pk_x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert send.returncode == 2 and "it holds outbox.lock" in send.stderr, send.stderr
    assert first.health()["ok"] is True


def test_a_killed_deliverer_is_started_again_and_nothing_is_lost_or_doubled(
        fake_klaviyo: Callable[..., FakeServer], server: Callable[..., Server]) -> None:
    # Every answer takes 1 s, so the kill comes while a call is in flight.
    fake = fake_klaviyo(time_scale=TIME_SCALE, api_keys=[SETTINGS["privateKey"]], slow_rate=1.0, slow_seconds=1.0)
    serve = server(fake.url)
    first = wait_for_deliverer(serve.process.pid)
    # its settings came through a pipe: no secret on its command line or in its environment
    command_line = Path(f"/proc/{first}/cmdline").read_bytes()
    assert command_line.split(b"\0")[1:3] == [b"-m", b"engine.serve.deliverer"]
    assert SETTINGS["privateKey"].encode() not in command_line + Path(f"/proc/{first}/environ").read_bytes()
    sent = post_tracks(serve.url, "before-kill", 30)
    deadline = time.monotonic() + 20
    while not fake.store.snapshot()["counters"].get("slow"):
        assert time.monotonic() < deadline, "no call went out"
        time.sleep(0.02)
    os.kill(first, signal.SIGKILL)
    second = wait_for_deliverer(serve.process.pid, not_this=first)
    assert second != first
    sent += post_tracks(serve.url, "after-kill", 20)
    fake.options.slow_rate = 0.0
    health = serve.wait_until(all_delivered(50))
    assert health["events"]["delivered"] == 50 and health["ok"] is True and health["delivery"] == "running"
    assert event_keys(fake) == set(sent)  # each once: the fake keeps one record per unique_id
    metrics = httpx.get(serve.url + "/metrics").text
    assert "segment_klaviyo_deliverer_restarts_total 1" in metrics
    assert "restarting: the deliverer exited (killed by signal 9); restart 1" in serve.output()
    assert serve.stop() == 0
    assert "stopped; 0 event(s) pending" in serve.output()


def test_sigterm_lets_the_call_in_flight_finish_and_be_marked(fake_klaviyo: Callable[..., FakeServer],
                                                              server: Callable[..., Server]) -> None:
    fake = fake_klaviyo(time_scale=TIME_SCALE, api_keys=[SETTINGS["privateKey"]], slow_rate=1.0, slow_seconds=2.0)
    serve = server(fake.url)
    child = wait_for_deliverer(serve.process.pid)
    sent = post_tracks(serve.url, "drain", 10)
    deadline = time.monotonic() + 20
    while not fake.store.snapshot()["counters"].get("slow"):  # the call is in flight (the fake sleeps on it)
        assert time.monotonic() < deadline, "no call went out"
        time.sleep(0.02)
    assert event_keys(fake) == set()
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(30) == 0
    assert not Path(f"/proc/{child}").exists()  # the deliverer exited before the server did
    assert event_keys(fake) == set(sent)  # the call finished …
    assert "stopped; 0 event(s) pending" in serve.output()  # … and was marked, not left to send again
    outbox = SQLiteOutbox(serve.state)  # both roles free again
    try:
        assert outbox.counts().events["delivered"] == 10
    finally:
        outbox.close()


def test_serve_no_worker_on_a_folder_records_and_a_folder_worker_delivers(
        fake_klaviyo: Callable[..., FakeServer], tmp_path: Path) -> None:
    fake = fake_klaviyo(time_scale=TIME_SCALE, api_keys=[SETTINGS["privateKey"]])
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(SETTINGS), encoding="utf-8")
    log = tmp_path / "serve.log"
    state = tmp_path / "state"
    command = [sys.executable, "-m", "engine", "serve", "--port", "0", "--no-worker", "--state", str(state),
               "--write-key", WRITE_KEY, "--settings", str(settings_file), "--base-url", fake.url]
    with log.open("wb") as out:
        recorder = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    worker_command = [sys.executable, "-m", "engine", "worker", "--state", str(state), "--settings",
                      str(settings_file), "--base-url", fake.url, "--time-scale", str(TIME_SCALE), "--linger", "0.05"]
    try:
        url = listening_url(recorder, log)
        assert deliverer_pids(recorder.pid) == []  # no deliverer of its own
        sent = post_tracks(url, "folder", 12)
        health = httpx.get(url + "/health").json()
        assert health["ok"] is True and health["outbox_depth"] == 12
        assert health["delivery"] == "off: this server only records (serve --no-worker); worker processes deliver"

        worker = subprocess.run([*worker_command, "--until-empty"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert worker.returncode == 0, worker.stderr
        assert "stopped · 12 event(s) delivered and 0 dead-lettered by this worker" in worker.stderr
        assert event_keys(fake) == set(sent)
        assert httpx.get(url + "/health").json()["outbox_depth"] == 0

        # a worker that waits is woken by nothing: it looks every 0.1 s
        waiting = subprocess.Popen(worker_command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            sent += post_tracks(url, "later", 5)
            deadline = time.monotonic() + 30
            while httpx.get(url + "/health").json()["outbox_depth"]:
                assert time.monotonic() < deadline and waiting.poll() is None
                time.sleep(0.1)
            second = subprocess.run(worker_command, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2
            assert "delivers from it" in second.stderr and "outbox.deliver.lock" in second.stderr
        finally:
            waiting.send_signal(signal.SIGTERM)
            assert waiting.wait(30) == 0
        assert event_keys(fake) == set(sent)
    finally:
        recorder.send_signal(signal.SIGTERM)
        assert recorder.wait(30) == 0
    assert SETTINGS["privateKey"] not in log.read_text()


def test_a_folder_worker_is_refused_beside_a_server_that_delivers(fake_klaviyo: Callable[..., FakeServer],
                                                                  server: Callable[..., Server],
                                                                  tmp_path: Path) -> None:
    fake = fake_klaviyo(time_scale=TIME_SCALE)
    serve = server(fake.url)
    wait_for_deliverer(serve.process.pid)
    worker = subprocess.run([sys.executable, "-m", "engine", "worker", "--state", str(serve.state), "--set",
                             "privateKey=pk_x", "--base-url", fake.url], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert worker.returncode == 2
    assert worker.stderr.strip() == (
        f"segment-klaviyo: {serve.state} is in use by another process that delivers from it (a running `serve`'s "
        "deliverer, a `worker` or `send`); it holds outbox.deliver.lock")
    for refused in (["--tenants", "t.yaml"], ["--metrics-port", "0"]):
        done = subprocess.run([sys.executable, "-m", "engine", "worker", "--state", str(serve.state), *refused],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "--tenants and --metrics-port need a shared outbox (a postgresql:// URL)" in done.stderr


def test_ctrl_c_stops_the_server_and_its_deliverer_once(fake_klaviyo: Callable[..., FakeServer],
                                                        tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole process group: the deliverer leaves it to the server,
    which stops it after its requests (no restart of a deliverer taken for dead)."""
    fake = fake_klaviyo(time_scale=TIME_SCALE, api_keys=[SETTINGS["privateKey"]])
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(SETTINGS), encoding="utf-8")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", "0", "--state",
                                    str(tmp_path / "state"), "--write-key", WRITE_KEY, "--settings",
                                    str(settings_file), "--base-url", fake.url, "--time-scale", str(TIME_SCALE),
                                    "--linger", "0.05"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # (its own group: the signal reaches it alone)
    try:
        url = listening_url(process, log)
        child = wait_for_deliverer(process.pid)
        sent = post_tracks(url, "ctrl-c", 8)
        deadline = time.monotonic() + 30
        while httpx.get(url + "/health").json()["outbox_depth"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert not Path(f"/proc/{child}").exists()
    assert "restarting" not in log.read_text()
    assert "stopped; 0 event(s) pending" in log.read_text()
    assert event_keys(fake) == set(sent)
