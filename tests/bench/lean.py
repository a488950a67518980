"""What `map`, `send` and `serve` cost around the engine, each against a floor measured in the same run.

- `map` end to end (a process reading NDJSON and writing request lines) against a JSON pass-through
  floor: a process that only parses and re-serialises each line with the standard library. CPU
  seconds of each whole process (start-up included) on the same file; best of `rounds`.
- `send` against `map` on the same file, the fake Klaviyo's limits off (and both clocks fast, so
  `send` never waits on its own rate limiter): CPU per event of each, its start-up (the same command
  on an empty file) taken off, so the ratio is about the work per event.
- `serve` against a bare Starlette app on the same server and parser (floor_app.py): single-event
  requests/s from 16 keep-alive connections (load.py, a separate process), with delivery running to
  the fake at the published limits, and the CPU per request of each server process (steadier than
  requests/s on a shared machine); then p99 latency at half the maximum rate measured; then batches
  of 100, whose CPU per ingested event (the serve process's, from /proc) is set against `map`'s CPU
  per event on those same events (written as NDJSON, `map` start-up taken off); the CPU of serve's
  deliverer process meanwhile is reported beside it (`deliverer_cpu_us_per_event`).
CPU times are read from rusage (wait4) or /proc, so the other engineers' work on the same two cores
changes the wall times, not these.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import corpus

HERE = Path(__file__).resolve().parent
FLOOR = """
import json, sys
write = sys.stdout.buffer.write
for line in open(sys.argv[1], "rb"):
    if line.strip():
        write(json.dumps(json.loads(line)).encode("utf-8") + b"\\n")
"""
WRITE_KEY = "bench-write-key"


def _env(root: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def process_times(command: list[str], root: Path) -> tuple[float, float, float]:
    """(user CPU seconds, system CPU seconds, wall seconds) of one process, its output discarded."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(root),
                             cwd=str(root))
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: some events rejected or dead-lettered
        raise SystemExit(f"{' '.join(command[:4])} … exited {os.waitstatus_to_exitcode(status)}")
    return usage.ru_utime, usage.ru_stime, time.perf_counter() - started


def process_cpu(command: list[str], root: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one process, its output discarded."""
    user, system, wall = process_times(command, root)
    return user + system, wall


def _corpus_file(workdir: Path, count: int, seed: int) -> Path:
    path = workdir / f"lean-{count}-{seed}.ndjson"
    if not path.exists():
        corpus.write_ndjson(str(path), count, seed)
    return path


def _settings_file(workdir: Path) -> Path:
    path = workdir / "lean-settings.json"
    path.write_text(json.dumps(corpus.PROFILES[0]), encoding="utf-8")
    return path


def map_command(source: Path, settings: Path) -> list[str]:
    return [sys.executable, "-m", "engine", "map", str(source), "--settings", str(settings), "--errors", os.devnull]


def measure_map_floor(root: Path, workdir: Path, count: int, seed: int, rounds: int = 2) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    source, settings = _corpus_file(workdir, count, seed), _settings_file(workdir)
    print(f"  `map` and the JSON pass-through floor on {count:,} events …", file=sys.stderr, flush=True)
    maps, floors = [], []
    for _ in range(rounds):
        maps.append(process_cpu(map_command(source, settings), root))
        floors.append(process_cpu([sys.executable, "-c", FLOOR, str(source)], root))
    map_cpu, floor_cpu = min(c for c, _ in maps), min(c for c, _ in floors)
    return {"events": count, "map_cpu_s": round(map_cpu, 3), "floor_cpu_s": round(floor_cpu, 3),
            "map_events_per_cpu_s": round(count / map_cpu), "floor_events_per_cpu_s": round(count / floor_cpu),
            "map_over_json_floor": round(map_cpu / floor_cpu, 2)}


def measure_send_cpu(root: Path, workdir: Path, count: int, seed: int, rounds: int = 2) -> dict[str, Any]:
    """CPU per event of `send` (to the fake, limits off) and of `map`, start-up taken off."""
    from engine.delivery.config import DeliveryPlan
    from engine.fake.server import FakeOptions, FakeServer
    from engine.mapping_set import load_mapping_set

    source, settings = _corpus_file(workdir, count, seed), _settings_file(workdir)
    empty = workdir / "lean-empty.ndjson"
    empty.write_text("", encoding="utf-8")
    scale = 1000.0
    fake = FakeServer(DeliveryPlan.for_set(load_mapping_set("klaviyo")),
                      FakeOptions(api_keys=[corpus.PROFILES[0]["privateKey"]], time_scale=scale,
                                  enforce_rate_limits=False)).start()

    def send(path: Path) -> list[str]:
        return [sys.executable, "-m", "engine", "send", str(path), "--settings", str(settings), "--base-url", fake.url,
                "--time-scale", str(scale), "--errors", os.devnull, "--progress", "never"]

    print(f"  `send` (fake, limits off) and `map` CPU on {count:,} events …", file=sys.stderr, flush=True)
    try:
        send_start = min(process_cpu(send(empty), root)[0] for _ in range(rounds))
        map_start = min(process_cpu(map_command(empty, settings), root)[0] for _ in range(rounds))
        # (user, system) of the best run: system time is SQLite's writes and reads, threads, sockets
        send_user, send_system = min((process_times(send(source), root)[:2] for _ in range(rounds)), key=sum)
        map_cpu = min(process_cpu(map_command(source, settings), root)[0] for _ in range(rounds))
    finally:
        fake.stop()
    send_us = (send_user + send_system - send_start) / count * 1e6
    map_us = (map_cpu - map_start) / count * 1e6
    return {"events": count, "send_cpu_us_per_event": round(send_us, 1), "map_cpu_us_per_event": round(map_us, 1),
            "send_startup_cpu_s": round(send_start, 3), "map_startup_cpu_s": round(map_start, 3),
            "send_user_cpu_s": round(send_user, 3), "send_system_cpu_s": round(send_system, 3),
            "send_cpu_over_map_cpu": round(send_us / map_us, 2)}


def _track_bodies(path: Path, count: int, seed: int, batch: int) -> Path:
    """Request bodies, one a line: single track messages, or batches of `batch` messages; every
    messageId new (a repeated one would be skipped as a duplicate)."""
    events = [e for e in corpus.generate(max(4000, 4 * batch), seed) if e["type"] == "track" and "userId" in e]
    with path.open("w", encoding="utf-8") as out:
        number = 0
        for line in range(count):
            group = []
            for _ in range(batch):
                message = dict(events[number % len(events)])
                message["messageId"] = f"bench-{seed}-{number}"
                group.append(message)
                number += 1
            body = group[0] if batch == 1 else {"batch": group}
            out.write(json.dumps(body, separators=(",", ":")) + "\n")
            del line
    return path


def _start_listening(command: list[str], root: Path, marker: str) -> tuple[subprocess.Popen[str], int]:
    """Start a server process; return it and the port it says it listens on."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(root),
                               cwd=str(root))
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if marker in line:
            port = int(line.split(marker, 1)[1].split()[0].split(":")[-1].strip("/"))
            # (what it prints later is read and dropped, so a full pipe never stops it)
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, port
    process.kill()
    raise SystemExit(f"{' '.join(command[:4])} did not start listening")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _load(root: Path, port: int, bodies: Path, seconds: float, path: str = "/v1/track", rate: float = 0.0,
          connections: int = 16, offset: int = 0) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "load.py"), "--port", str(port), "--key", WRITE_KEY, "--bodies",
               str(bodies), "--seconds", str(seconds), "--path", path, "--rate", str(rate),
               "--connections", str(connections), "--offset", str(offset)]
    out = subprocess.run(command, capture_output=True, text=True, env=_env(root), cwd=str(root), timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"load.py failed: {out.stderr[-800:]}")
    return dict(json.loads(out.stdout))


def _cpu_ticks(pid: int) -> float:
    """A process's CPU seconds so far (/proc/PID/stat: utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu(pid: int) -> dict[int, float]:
    """The CPU seconds so far of each live child of a process (`serve`'s deliverer on a state folder)."""
    found: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                found[int(child)] = _cpu_ticks(int(child))
            except OSError:  # it ended meanwhile
                pass
    return found


def _map_cpu_us_per_event(root: Path, workdir: Path, bodies: Path, requests: int, settings: Path,
                          rounds: int = 2) -> float | None:
    """`map`'s CPU per event on the messages of the first `requests` bodies (those a load run sent),
    its start-up (the same command on an empty file) taken off."""
    events = workdir / "lean-serve-events.ndjson"
    count = 0
    with bodies.open(encoding="utf-8") as source, events.open("w", encoding="utf-8") as out:
        for line in itertools.islice(source, requests):
            body = json.loads(line)
            for message in body.get("batch", [body]):
                out.write(json.dumps(message, separators=(",", ":")) + "\n")
                count += 1
    if not count:
        return None
    empty = workdir / "lean-empty.ndjson"
    empty.write_text("", encoding="utf-8")
    start = min(process_cpu(map_command(empty, settings), root)[0] for _ in range(rounds))
    cpu = min(process_cpu(map_command(events, settings), root)[0] for _ in range(rounds))
    return (cpu - start) / count * 1e6


def _load_measuring_cpu(root: Path, pid: int, port: int, bodies: Path, seconds: float,
                        **options: Any) -> dict[str, Any]:
    """A load run (`_load`), with the CPU of the server process `pid` and of its children meanwhile."""
    before, children_before = _cpu_ticks(pid), _children_cpu(pid)
    run = _load(root, port, bodies, seconds, **options)
    run["cpu_s"] = _cpu_ticks(pid) - before
    # (serve's deliverer: a process of its own since serve delivers from a second one)
    run["children_cpu_s"] = sum(t - children_before.get(child, 0.0) for child, t in _children_cpu(pid).items())
    answered = run["requests"] - run["errors"]
    run["cpu_us_per_request"] = round(run["cpu_s"] / answered * 1e6, 1) if answered else None
    return run


def measure_serve(root: Path, workdir: Path, seed: int, seconds: float = 5.0) -> dict[str, Any]:
    from engine.delivery.config import DeliveryPlan
    from engine.fake.server import FakeOptions, FakeServer
    from engine.mapping_set import load_mapping_set

    settings = _settings_file(workdir)
    capacity = int(seconds * 20_000)  # more bodies than any run here can send
    singles = _track_bodies(workdir / "lean-singles.ndjson", capacity, seed, 1)
    batches = _track_bodies(workdir / "lean-batches.ndjson", max(200, capacity // 100), seed + 1, 100)
    results: dict[str, Any] = {}

    print("  floor app: single-event requests …", file=sys.stderr, flush=True)
    floor, floor_port = _start_listening([sys.executable, str(HERE / "floor_app.py")], root, "listening on ")
    try:
        results["floor"] = _load_measuring_cpu(root, floor.pid, floor_port, singles, seconds)
    finally:
        _stop(floor)

    fake = FakeServer(DeliveryPlan.for_set(load_mapping_set("klaviyo")),
                      FakeOptions(api_keys=[corpus.PROFILES[0]["privateKey"]])).start()
    state = tempfile.mkdtemp(prefix="lean-serve-")
    print("  `serve` (delivering to the fake at the published limits): single-event requests, the p99 at half "
          "that rate, batches of 100 …", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "engine", "serve", "--port", "0", "--state", state, "--write-key", WRITE_KEY,
               "--settings", str(settings), "--base-url", fake.url, "--log-level", "warning"]
    serve, port = _start_listening(command, root, "listening on http://")
    try:
        results["serve"] = _load_measuring_cpu(root, serve.pid, port, singles, seconds)
        half = results["serve"]["requests_per_s"] / 2
        results["serve_at_half_rate"] = _load(root, port, singles, seconds, rate=half,
                                              offset=results["serve"]["requests"])
        batch_run = _load_measuring_cpu(root, serve.pid, port, batches, seconds, path="/v1/batch", connections=4)
        cpu, delivering = batch_run["cpu_s"], batch_run["children_cpu_s"]
        events = (batch_run["requests"] - batch_run["errors"]) * 100
        batch_run.update(events=events, events_per_s=round(events / batch_run["seconds"]), cpu_s=round(cpu, 2),
                         cpu_us_per_event=round(cpu / events * 1e6, 1) if events else None,
                         deliverer_cpu_s=round(delivering, 2),
                         deliverer_cpu_us_per_event=round(delivering / events * 1e6, 1) if events else None)
        results["serve_batches"] = batch_run
    finally:
        _stop(serve)
        fake.stop()
    print("  `map` on the events serve ingested in batches …", file=sys.stderr, flush=True)
    map_us = _map_cpu_us_per_event(root, workdir, batches, batch_run["requests"], settings)
    floor_rps, serve_rps = results["floor"]["requests_per_s"], results["serve"]["requests_per_s"]
    floor_cpu, serve_cpu = results["floor"]["cpu_us_per_request"], results["serve"]["cpu_us_per_request"]
    per_event = results["serve_batches"]["cpu_us_per_event"]
    results.update(
        serve_over_floor=round(serve_rps / floor_rps, 3) if floor_rps else None,
        serve_cpu_over_floor_cpu=round(serve_cpu / floor_cpu, 2) if serve_cpu and floor_cpu else None,
        serve_p99_ms_at_half_rate=results["serve_at_half_rate"]["p99_ms"],
        map_cpu_us_per_event=round(map_us, 1) if map_us else None,
        serve_cpu_over_map_cpu=round(per_event / map_us, 2) if per_event and map_us else None)
    return results
