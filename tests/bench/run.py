"""Benchmarks: the engine against a hand-written mapping, streaming memory, and delivery against Klaviyo's limits.

    python tests/bench/run.py [--events N] [--json FILE] [--stream-events N | --no-stream] [--no-delivery]

1. Builds a deterministic corpus (corpus.py) of N events, mapped in slices with several settings
   profiles, and checks that the engine (`Mapper.map` with the bundled `klaviyo` set) and the
   hand-written baseline (baseline.py) produce exactly the same requests for the WHOLE corpus,
   compared as canonical JSON. When they differ it prints the first difference and exits 1,
   before anything is timed.
2. Times both in this process, alternating, best of --rounds: events/s and the time ratio.
   The engine side is end to end: `Mapper.map` → `Request` objects → `to_output()` for each.
3. Times loading and validating the bundled set in fresh processes (median of 5, after imports).
4. Streams --stream-events events (default 1,000,000) from an NDJSON file through
   `segment-klaviyo map` in a subprocess, output to /dev/null, and reports its peak RSS
   (`wait4` rusage), whether RSS grew during the run, and the CLI's events/s.
5. Delivery: `send` against the fake Klaviyo enforcing the published limits, as a fraction of the
   bulk-event ceiling and the share of 429s (when `send` and the fake are available).
6. Identify-heavy delivery: --profile-identifies identifies only, each its own profile, through
   `send` to the same fake: profiles imported per second end to end, over the profile lane's ceiling
   (profile-import's rate plus Bulk Import Profiles jobs' rate x 10,000 profiles a job).
7. Mixed delivery: the whole corpus (tracks, identifies, orders, subscriptions) through `send` at the
   published limits: the events lane's accepted events over its ceiling while profiles flow too.
8. Lean paths (lean.py): `map` over a JSON pass-through floor, `send` CPU over `map` CPU (fake
   without limits), `serve` over a bare Starlette app (load.py, floor_app.py) with its p99 at half
   its maximum rate and its CPU per event in batches of 100 over `map`'s.
9. The shared outbox (shared.py), when SEGMENT_KLAVIYO_TEST_POSTGRES names a PostgreSQL server:
   the PostgreSQL store's cost per event over SQLite's, events/s delivered by 1, 2 and 4 `worker`
   processes (fake without limits), and 3 workers under the published limits (fraction of the
   ceiling, share of 429s). --no-shared skips it.

With --json FILE, writes one object with (at least) the keys events, engine_events_per_s,
baseline_events_per_s, engine_over_baseline, load_validate_ms, stream_1m_peak_rss_mb,
delivery_fraction_of_ceiling, delivery_429_fraction, delivery_profiles_per_s,
delivery_profile_fraction_of_ceiling, delivery_mixed_fraction_of_ceiling, map_over_json_floor,
send_cpu_over_map_cpu, serve_over_floor, serve_p99_ms_at_half_rate, serve_cpu_over_map_cpu,
shared_store_postgres_over_sqlite, shared_workers_1_events_per_s, shared_workers_2_events_per_s,
shared_workers_4_events_per_s, shared_limited_3_workers_fraction_of_ceiling,
shared_limited_3_workers_fraction_429 (null without PostgreSQL) and shared (all of shared.py's). Not
part of the test run (pytest does not collect this folder).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import baseline as baseline_module  # noqa: E402
import corpus  # noqa: E402
import delivery  # noqa: E402
import lean  # noqa: E402
import shared  # noqa: E402

import engine  # noqa: E402

SET_NAME = "klaviyo"


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Slice:
    """One settings profile and the part of the corpus it maps."""

    def __init__(self, mapping_set: engine.MappingSet, settings: dict[str, Any], events: list[Any], start: int):
        self.settings = settings
        self.mapper = engine.Mapper(mapping_set, settings)
        self.baseline = baseline_module.KlaviyoBaseline(settings)
        self.events = events
        self.start = start


def engine_requests(part: Slice) -> list[list[dict[str, Any]]]:
    return [[r.to_output() for r in part.mapper.map(event, i).requests]
            for i, event in enumerate(part.events, part.start)]


def baseline_requests(part: Slice) -> list[list[dict[str, Any]]]:
    return [part.baseline.map(event, i) for i, event in enumerate(part.events, part.start)]


def check_same(parts: list[Slice]) -> int:
    """Compare engine and baseline on every event; exit with the first difference. Returns request count."""
    count = 0
    for number, part in enumerate(parts):
        for offset, (got, want) in enumerate(zip(engine_requests(part), baseline_requests(part), strict=True)):
            count += len(got)
            a, b = canonical(got), canonical(want)
            if a != b:
                index = part.start + offset
                print(f"FAIL: engine and baseline differ on event {index} (settings profile {number}).",
                      file=sys.stderr)
                print("event:    " + canonical(part.events[offset]), file=sys.stderr)
                print("settings: " + canonical(part.settings), file=sys.stderr)
                for label, text in (("engine:  ", a), ("baseline:", b)):
                    print(f"{label} {text}", file=sys.stderr)
                at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                print(f"first difference at character {at}:", file=sys.stderr)
                print(f"  engine:   …{a[max(0, at - 80):at + 80]}…", file=sys.stderr)
                print(f"  baseline: …{b[max(0, at - 80):at + 80]}…", file=sys.stderr)
                sys.exit(1)
    return count


def run_engine(parts: list[Slice]) -> int:
    produced = 0
    for part in parts:
        mapper_map = part.mapper.map
        for i, event in enumerate(part.events, part.start):
            for request in mapper_map(event, i).requests:
                request.to_output()
                produced += 1
    return produced


def run_baseline(parts: list[Slice]) -> int:
    produced = 0
    for part in parts:
        baseline_map = part.baseline.map
        for i, event in enumerate(part.events, part.start):
            produced += len(baseline_map(event, i))
    return produced


def event_kind(event: Any) -> str:
    """The kinds the ratio is broken down by: identify, track, order, page, other."""
    kind = event.get("type") if isinstance(event, dict) else None
    if kind == "track" and str(event.get("event")) in corpus.ORDER_NAMES:
        return "order"
    return kind if kind in ("identify", "track", "page") else "other"


def by_kind(parts: list[Slice]) -> dict[str, list[Slice]]:
    """The corpus cut by event kind, each kind keeping its settings profiles (for the breakdown)."""
    kinds: dict[str, list[Slice]] = {}
    for part in parts:
        grouped: dict[str, list[Any]] = {}
        for event in part.events:
            grouped.setdefault(event_kind(event), []).append(event)
        for kind, events in grouped.items():
            piece = Slice.__new__(Slice)
            piece.settings, piece.mapper, piece.baseline = part.settings, part.mapper, part.baseline
            piece.events, piece.start = events, 0
            kinds.setdefault(kind, []).append(piece)
    return dict(sorted(kinds.items()))


def timed(function: Any, parts: list[Slice]) -> float:
    gc.collect()
    started = time.perf_counter()
    function(parts)
    return time.perf_counter() - started


def measure_load(runs: int = 5) -> tuple[float, float]:
    """Median ms to load+validate+compile the bundled set in a fresh process (after imports), and warm."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import engine; "
            "t = time.perf_counter(); engine.Mapper(engine.load_mapping_set(sys.argv[2])); "
            "print((time.perf_counter() - t) * 1000)")
    cold = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code, str(ROOT), SET_NAME], capture_output=True, text=True,
                             check=True)
        cold.append(float(out.stdout.strip()))
    warm = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.Mapper(engine.load_mapping_set(SET_NAME))  # (a Mapper generates every rule's code)
        warm.append((time.perf_counter() - started) * 1000)
    return statistics.median(cold), statistics.median(warm)


def _rss_kb(pid: int) -> tuple[int | None, int | None]:
    """A process's current and peak resident set size in kB (/proc), or None when it is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line[:5]] = int(line.split()[1])
    except (OSError, ValueError):
        return None, None
    return found.get("VmRSS"), found.get("VmHWM")


LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}), flush=True)
"""


def cli_command() -> list[str]:
    return [sys.executable, "-m", "engine"]


def measure_stream(count: int, seed: int, workdir: Path) -> dict[str, Any]:
    """Map `count` events from an NDJSON file with `segment-klaviyo map` in a subprocess; peak RSS."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"corpus-{count}-{seed}.ndjson"
    if not source.exists():
        print(f"  writing {count:,} events to {source} …", file=sys.stderr, flush=True)
        partial = source.with_suffix(".partial")
        corpus.write_ndjson(str(partial), count, seed)
        partial.rename(source)
    settings = workdir / "settings-profile-0.json"
    settings.write_text(json.dumps(corpus.PROFILES[0]), encoding="utf-8")
    command = cli_command() + ["map", str(source), "--settings", str(settings), "--errors", os.devnull]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"  streaming {count:,} events through `{' '.join(command[1:3])} map` …", file=sys.stderr, flush=True)
    # `map` is started by a small launcher process, not by this one: a child's peak RSS (rusage) starts
    # from its parent's RSS at fork, and this process holds the in-process corpus. The launcher
    # reports the child's pid, then its rusage; meanwhile this process samples the child's RSS.
    started = time.perf_counter()
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, *command], stdout=subprocess.PIPE, env=env,
                                cwd=str(ROOT), text=True)
    assert launcher.stdout is not None
    pid = int(launcher.stdout.readline())
    samples: list[tuple[float, int]] = []
    high_water = 0
    while launcher.poll() is None:
        rss, hwm = _rss_kb(pid)
        if rss is not None:
            samples.append((time.perf_counter() - started, rss))
            high_water = max(high_water, hwm or 0)
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    report = json.loads(launcher.stdout.read())
    if report["exit"] not in (0, 1):  # 1: some events were rejected by the mapping, as expected
        raise SystemExit(f"`map` failed with exit code {report['exit']}")
    peak_mb = max(report["maxrss_kb"], high_water) / 1024
    # Growth: RSS in the last fifth of the run against the first fifth (after start-up).
    growth_mb = None
    if len(samples) >= 10:
        fifth = len(samples) // 5
        early = max(rss for _, rss in samples[fifth:2 * fifth])
        late = max(rss for _, rss in samples[-fifth:])
        growth_mb = (late - early) / 1024
    return {"events": count, "peak_rss_mb": peak_mb, "seconds": elapsed, "events_per_s": count / elapsed,
            "rss_growth_mb": growth_mb, "file_mb": source.stat().st_size / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="corpus size for the in-process timing")
    parser.add_argument("--json", metavar="FILE", help="write the figures as one JSON object")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds; the best of each side counts")
    parser.add_argument("--stream-events", type=int, default=1_000_000)
    parser.add_argument("--no-stream", action="store_true", help="skip the 1M-event streaming run")
    parser.add_argument("--no-delivery", action="store_true", help="skip the delivery run")
    parser.add_argument("--delivery-windows", type=int, default=2,
                        help="full steady rate-limit windows (minutes of API time) the delivery run must fill")
    parser.add_argument("--delivery-time-scale", type=float, default=1.0,
                        help="the fake's (and send's) clock runs this much faster (1: real time)")
    parser.add_argument("--profile-identifies", type=int, default=100_000,
                        help="identifies in the identify-heavy delivery run (0: skip it)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "segment-klaviyo-bench"),
                        help="where the streaming corpus is written (and kept for the next run)")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-corpus delivery run")
    parser.add_argument("--no-lean", action="store_true", help="skip map/send/serve against their floors")
    parser.add_argument("--lean-events", type=int, default=200_000,
                        help="events for map against the JSON floor (send against map: a quarter of them)")
    parser.add_argument("--serve-seconds", type=float, default=5.0, help="seconds of each serve load run")
    parser.add_argument("--no-shared", action="store_true", help="skip the shared-outbox (PostgreSQL) figures")
    parser.add_argument("--profile", metavar="FILE", help="also profile the engine (cProfile) into FILE")
    args = parser.parse_args(argv)

    print(f"corpus: {args.events:,} events, seed {args.seed}, {len(corpus.PROFILES)} settings profiles",
          file=sys.stderr, flush=True)
    events = list(corpus.generate(args.events, args.seed))
    mapping_set = engine.load_mapping_set(SET_NAME)
    parts = [Slice(mapping_set, settings, events[start:stop], start)
             for settings, (start, stop) in zip(corpus.PROFILES, corpus.slices(args.events), strict=True)]

    requests = check_same(parts)
    print(f"  engine and baseline agree on all {args.events:,} events ({requests:,} requests)",
          file=sys.stderr, flush=True)

    engine_times, baseline_times = [], []
    for round_number in range(args.rounds):
        order = [(run_engine, engine_times), (run_baseline, baseline_times)]
        for function, times in order if round_number % 2 == 0 else reversed(order):
            times.append(timed(function, parts))
    engine_s, baseline_s = min(engine_times), min(baseline_times)
    by_type: dict[str, float] = {}
    for kind, pieces in by_kind(parts).items():  # where the engine's extra time is, per event kind
        kind_engine = min(timed(run_engine, pieces) for _ in range(args.rounds))
        kind_baseline = min(timed(run_baseline, pieces) for _ in range(args.rounds))
        by_type[kind] = round(kind_engine / kind_baseline, 2)

    if args.profile:
        import cProfile

        cProfile.runctx("run_engine(parts)", globals(), {"parts": parts}, args.profile)

    load_cold_ms, load_warm_ms = measure_load()
    stream = None if args.no_stream else measure_stream(args.stream_events, args.seed, Path(args.workdir))
    delivered = None if args.no_delivery else delivery.measure(ROOT, Path(args.workdir), args.seed,
                                                                 args.delivery_windows, args.delivery_time_scale)
    profiles = None if args.no_delivery or not args.profile_identifies else delivery.measure_profiles(
        ROOT, Path(args.workdir), args.seed, args.profile_identifies, args.delivery_time_scale)
    mixed = None if args.no_delivery or args.no_mixed else delivery.measure(
        ROOT, Path(args.workdir), args.seed, args.delivery_windows, args.delivery_time_scale, mixed=True)
    lean_figures: dict[str, Any] = {}
    if not args.no_lean:
        workdir = Path(args.workdir)
        lean_figures["map"] = lean.measure_map_floor(ROOT, workdir, args.lean_events, args.seed)
        lean_figures["send"] = lean.measure_send_cpu(ROOT, workdir, args.lean_events // 4, args.seed)
        lean_figures["serve"] = lean.measure_serve(ROOT, workdir, args.seed, args.serve_seconds)
    dsn = os.environ.get("SEGMENT_KLAVIYO_TEST_POSTGRES")
    shared_figures = shared.measure(dsn) if dsn and not args.no_shared else None

    def from_shared(key: str) -> Any:
        return shared_figures.get(key) if shared_figures else None

    figures: dict[str, Any] = {
        "events": args.events,
        "requests": requests,
        "engine_events_per_s": round(args.events / engine_s),
        "baseline_events_per_s": round(args.events / baseline_s),
        "engine_over_baseline": round(engine_s / baseline_s, 3),
        "engine_over_baseline_by_type": by_type,
        "engine_requests_per_s": round(requests / engine_s),
        "load_validate_ms": round(load_cold_ms, 1),
        "load_validate_warm_ms": round(load_warm_ms, 1),
        "stream_events": stream["events"] if stream else None,
        "stream_1m_peak_rss_mb": round(stream["peak_rss_mb"], 1) if stream else None,
        "stream_rss_growth_mb": (round(stream["rss_growth_mb"], 1)
                                 if stream and stream["rss_growth_mb"] is not None else None),
        "cli_events_per_s": round(stream["events_per_s"]) if stream else None,
        "delivery_fraction_of_ceiling": delivered.get("fraction_of_ceiling") if delivered else None,
        "delivery_429_fraction": delivered.get("fraction_429") if delivered else None,
        "delivery": delivered,
        "delivery_profiles_per_s": profiles.get("profiles_per_s") if profiles else None,
        "delivery_profile_fraction_of_ceiling": profiles.get("fraction_of_ceiling") if profiles else None,
        "delivery_profiles": profiles,
        "delivery_mixed_fraction_of_ceiling": mixed.get("fraction_of_ceiling") if mixed else None,
        "delivery_mixed_429_fraction": mixed.get("fraction_429") if mixed else None,
        "delivery_mixed": mixed,
        "map_over_json_floor": lean_figures["map"]["map_over_json_floor"] if lean_figures else None,
        "send_cpu_over_map_cpu": lean_figures["send"]["send_cpu_over_map_cpu"] if lean_figures else None,
        "serve_over_floor": lean_figures["serve"]["serve_over_floor"] if lean_figures else None,
        "serve_p99_ms_at_half_rate": lean_figures["serve"]["serve_p99_ms_at_half_rate"] if lean_figures else None,
        "serve_cpu_over_map_cpu": lean_figures["serve"]["serve_cpu_over_map_cpu"] if lean_figures else None,
        "lean": lean_figures or None,
        "shared_store_postgres_over_sqlite": from_shared("store_postgres_over_sqlite"),
        **{f"shared_workers_{n}_events_per_s": from_shared(f"workers_{n}_events_per_s") for n in (1, 2, 4)},
        "shared_limited_3_workers_fraction_of_ceiling": from_shared("limited_3_workers_fraction_of_ceiling"),
        "shared_limited_3_workers_fraction_429": from_shared("limited_3_workers_fraction_429"),
        "shared": shared_figures,
        "rounds": args.rounds,
        "seed": args.seed,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "command": "python tests/bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print_table(figures, stream)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def print_table(f: dict[str, Any], stream: dict[str, Any] | None) -> None:
    def row(name: str, value: str, target: str = "") -> None:
        print(f"| {name:<44} | {value:>16} | {target:<22} |")

    print(f"| {'figure':<44} | {'value':>16} | {'target':<22} |")
    print(f"|{'-' * 46}|{'-' * 18}|{'-' * 24}|")
    row(f"engine, events/s ({f['events']:,} events, 1 core)", f"{f['engine_events_per_s']:,}", "≥ 7,800 (aim 15,600)")
    row("hand-written baseline, events/s", f"{f['baseline_events_per_s']:,}")
    row("engine time / baseline time", f"{f['engine_over_baseline']:.2f}", "≤ 1.5")
    for kind, ratio in f["engine_over_baseline_by_type"].items():
        row(f"… {kind} events alone", f"{ratio:.2f}")
    row("engine, requests/s", f"{f['engine_requests_per_s']:,}")
    row("load + validate bundled set, ms (cold)", f"{f['load_validate_ms']:.1f}", "≤ 300")
    row("load + validate bundled set, ms (warm)", f"{f['load_validate_warm_ms']:.1f}")
    if stream:
        row(f"`map` {stream['events']:,} events: peak RSS, MB", f"{f['stream_1m_peak_rss_mb']:.1f}", "≤ 150")
        growth = f["stream_rss_growth_mb"]
        row("`map` RSS growth, last vs first fifth, MB", "n/a" if growth is None else f"{growth:+.1f}", "≈ 0")
        row("`map` CLI events/s (parse+map+serialise)", f"{f['cli_events_per_s']:,}")
    else:
        row("`map` 1M events: peak RSS, MB", "skipped", "≤ 150")
    d = f["delivery"]
    if d and d.get("fraction_of_ceiling") is not None:
        row(f"delivery, fraction of ceiling ({d['ceiling_events_per_s']:,.0f}/s)", f"{d['fraction_of_ceiling']:.1%}",
            "≥ 90%")
        row("delivery, requests answered 429", f"{d['fraction_429']:.2%}", "< 1%")
        row("delivery, full steady windows measured", f"{d['full_windows']}")
    else:
        reason = (d or {}).get("message", "skipped (--no-delivery)")
        row("delivery, fraction of bulk-event ceiling", "null", "≥ 90%")
        row("delivery, requests answered 429", "null", "< 1%")
        print(f"\ndelivery: {reason}")
    p = f["delivery_profiles"]
    if p and p.get("profiles_per_s") is not None:
        row("identifies only: profiles imported/s", f"{p['profiles_per_s']:,.0f}")
        row(f"… fraction of profile ceiling ({p['ceiling_profiles_per_s']:,.0f}/s)", f"{p['fraction_of_ceiling']:.1%}",
            "≥ 90%")
        row("… requests answered 429", f"{p['fraction_429']:.2%}", "< 1%")
        row("… every profile imported", "yes" if p["every_profile_imported"] else "NO", "yes")
    else:
        row("identifies only: profiles imported/s", "null")
        if p:
            print(f"\nprofile delivery: {p['message']}")
    m = f["delivery_mixed"]
    if m and m.get("fraction_of_ceiling") is not None:
        row("mixed: events lane, fraction of ceiling", f"{m['fraction_of_ceiling']:.1%}", "≥ 90%")
        row("… requests answered 429", f"{m['fraction_429']:.2%}", "< 1%")
    else:
        row("mixed: events lane, fraction of ceiling", "null", "≥ 90%")
    lean_figures = f["lean"]
    if lean_figures:
        lm, ls, sv = lean_figures["map"], lean_figures["send"], lean_figures["serve"]
        row(f"`map` CPU / JSON floor CPU ({lm['events']:,} events)", f"{lm['map_over_json_floor']:.2f}", "≤ 3")
        row("… `map`, floor: events per CPU second",
            f"{lm['map_events_per_cpu_s']:,} / {lm['floor_events_per_cpu_s']:,}")
        row("`send` CPU/event / `map` CPU/event", f"{ls['send_cpu_over_map_cpu']:.2f}", "≤ 2")
        row("… µs per event: send, map", f"{ls['send_cpu_us_per_event']:.0f}, {ls['map_cpu_us_per_event']:.0f}")
        row("`serve` single-event requests/s / floor's", f"{sv['serve_over_floor']:.2f}", "≥ 0.5")
        row("… requests/s: serve, floor app",
            f"{sv['serve']['requests_per_s']:,.0f} / {sv['floor']['requests_per_s']:,.0f}")
        row("… CPU µs per request: serve, floor app",
            f"{sv['serve']['cpu_us_per_request']} / {sv['floor']['cpu_us_per_request']}")
        row("… p99 ms at half serve's rate", f"{sv['serve_p99_ms_at_half_rate']:.1f}", "≤ 50")
        row("`serve` CPU/event (batches of 100) / `map`'s",
            "null" if sv["serve_cpu_over_map_cpu"] is None else f"{sv['serve_cpu_over_map_cpu']:.2f}", "≤ 2")
        batches = sv["serve_batches"]
        row("… µs per event: serve, its deliverer process, `map` on the same events; events/s",
            f"{batches['cpu_us_per_event']}, {batches.get('deliverer_cpu_us_per_event')}, "
            f"{sv.get('map_cpu_us_per_event')}; {batches['events_per_s']:,}")
    sh = f["shared"]
    if sh:
        row("PostgreSQL store / SQLite store, µs per event", f"{sh['store_postgres_over_sqlite']:.2f}")
        row(f"workers 1, 2, 4: events/s ({sh['cores']} cores)", ", ".join(
            f"{sh[f'workers_{n}_events_per_s']:,.0f}" for n in (1, 2, 4)))
        fraction = sh.get("limited_3_workers_fraction_of_ceiling")
        row("3 workers at the limits: fraction of ceiling", "null" if fraction is None else f"{fraction:.1%}", "≥ 90%")
        share = sh.get("limited_3_workers_fraction_429")
        row("… requests answered 429", "null" if share is None else f"{share:.2%}", "< 1%")


if __name__ == "__main__":
    sys.exit(main())
