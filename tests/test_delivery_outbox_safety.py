"""A damaged outbox, a read-only state folder, and who may read the outbox's files.

Every damage is done to a real outbox on disk; every refusal must name the file and what to do, and
change nothing (the damaged file is byte for byte what it was, so it can still be recovered).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from delivery_helpers import PROJECT_ROOT, run_cli

from engine.delivery.outbox import NewEvent, NewUnit, open_private
from engine.delivery.sqlite_outbox import (
    DELIVER_LOCK_FILE,
    LOCK_FILE,
    OUTBOX_FILE,
    RECORDED_FILE,
    WRITE_TURN_FILE,
    OutboxDamaged,
    SQLiteOutbox,
)

UNIT = NewUnit(0, "r", "POST", "/x", "{}", "json", '{"text": "' + "x" * 300 + '"}')
HINT = ("Nothing was changed; stop whatever uses the folder, move it aside (mv {folder} {folder}.damaged) and start "
        "again with an empty --state; README's \"A damaged outbox\" says how to recover what the file still holds")


def make_outbox(folder: Path, events: int = 200) -> None:
    outbox = SQLiteOutbox(folder)
    try:
        for start in range(0, events, 100):
            outbox.append_events("s", [NewEvent(f"m{start + i}", "pending", units=[UNIT]) for i in range(100)])
    finally:
        outbox.close()


def truncate_to(size: int | Callable[[int], int]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with open(path, "r+b") as file:
            file.truncate(size(path.stat().st_size) if callable(size) else size)
    return damage


def overwrite_with_random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


# what is done to outbox.sqlite3 (after a clean close) → what the error says it is
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated in the header": (truncate_to(50), "SQLite says: database disk image is malformed"),
    "truncated in the first page": (truncate_to(3000), "SQLite says: database disk image is malformed"),
    "truncated in the middle": (truncate_to(lambda size: size // 2), "SQLite says: database disk image is malformed"),
    "overwritten with random bytes": (overwrite_with_random_bytes, "SQLite says: file is not a database"),
    "emptied (0 bytes)": (truncate_to(0), f"it is empty (0 bytes), but {RECORDED_FILE} beside it says events were "
                                          "recorded in it"),
    "deleted": (Path.unlink, f"it is missing, but {RECORDED_FILE} beside it says events were recorded in it"),
}


def damaged_message(folder: Path, what: str) -> str:
    return f"{folder / OUTBOX_FILE} is damaged: {what}. " + HINT.format(folder=folder)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_outbox_is_refused_with_its_name_and_what_to_do(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "state"
    make_outbox(folder)
    do, what = DAMAGES[damage]
    path = folder / OUTBOX_FILE
    do(path)
    before = path.read_bytes() if path.exists() else None
    for writer in (True, False):  # send/serve, and the readers (outbox status)
        with pytest.raises(OutboxDamaged) as refused:
            SQLiteOutbox(folder, exclusive=writer, create=writer, read_only=not writer)
        assert str(refused.value) == damaged_message(folder, what)
    assert (path.read_bytes() if path.exists() else None) == before  # nothing changed: still recoverable


# every command that opens an outbox: its arguments besides --state
COMMANDS = {
    "outbox status": ["outbox", "status"],
    "outbox rejected": ["outbox", "rejected"],
    "outbox replay": ["outbox", "replay"],
    "send": ["send", "--set", "privateKey=pk_x", "--set", "listId=L", os.devnull],
    "serve": ["serve", "--port", "0", "--write-key", "wk", "--set", "privateKey=pk_x", "--set", "listId=L"],
}


@pytest.mark.parametrize("damage", ["truncated in the middle", "emptied (0 bytes)"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_exits_2_with_one_line(tmp_path: Path, command: str, damage: str) -> None:
    folder = tmp_path / "state"
    make_outbox(folder)
    do, what = DAMAGES[damage]
    do(folder / OUTBOX_FILE)
    done = run_cli(*COMMANDS[command], "--state", folder, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"segment-klaviyo: {damaged_message(folder, what)}\n"


def test_an_empty_file_where_nothing_was_recorded_is_a_new_outbox(tmp_path: Path) -> None:
    # The limit README states: with no event ever recorded there is no sidecar, and an empty file
    # is what SQLite itself calls an empty database. Nothing can have been lost.
    folder = tmp_path / "state"
    SQLiteOutbox(folder).close()
    assert not (folder / RECORDED_FILE).exists()
    (folder / OUTBOX_FILE).write_bytes(b"")
    done = run_cli("outbox", "status", "--state", folder)
    assert (done.returncode, done.stderr) == (2, f"segment-klaviyo: no outbox in {folder} ({OUTBOX_FILE} is empty)\n")
    with SQLiteOutbox(folder) as outbox:
        assert outbox.counts().total_events == 0
        outbox.append_events("s", [NewEvent("m", "pending", units=[UNIT])])
    assert (folder / RECORDED_FILE).is_file()


def test_an_outbox_from_before_the_sidecar_gets_one_when_opened(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    make_outbox(folder, 100)
    (folder / RECORDED_FILE).unlink()
    SQLiteOutbox(folder, exclusive=False, create=False, read_only=True).close()
    assert not (folder / RECORDED_FILE).exists()  # a reader writes nothing
    SQLiteOutbox(folder).close()
    assert (folder / RECORDED_FILE).is_file()
    (folder / OUTBOX_FILE).write_bytes(b"")
    with pytest.raises(OutboxDamaged):
        SQLiteOutbox(folder)


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_outbox_folder_and_files_are_private(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "state"
    outbox = SQLiteOutbox(folder)
    try:
        outbox.append_events("s", [NewEvent("m", "pending", units=[UNIT])])
        names = sorted(p.name for p in folder.iterdir())
        # the WAL and its index exist while the outbox is open: SQLite gives them the file's mode
        assert names == [DELIVER_LOCK_FILE, LOCK_FILE, RECORDED_FILE, OUTBOX_FILE, OUTBOX_FILE + "-shm",
                         OUTBOX_FILE + "-wal"]
        assert {name: mode(folder / name) for name in names} == {name: "0o600" for name in names}
        assert mode(folder) == "0o700"
    finally:
        outbox.close()
    recorder = SQLiteOutbox(folder, role="recorder")  # the roles split (serve and its deliverer): a third lock
    try:
        assert mode(folder / WRITE_TURN_FILE) == "0o600"
    finally:
        recorder.close()


def test_an_older_outbox_with_readable_files_is_made_private(tmp_path: Path) -> None:
    make_outbox(tmp_path, 100)
    for name in (OUTBOX_FILE, LOCK_FILE, RECORDED_FILE):
        (tmp_path / name).chmod(0o644)
    SQLiteOutbox(tmp_path).close()
    assert {name: mode(tmp_path / name) for name in (OUTBOX_FILE, LOCK_FILE, RECORDED_FILE)} == {
        OUTBOX_FILE: "0o600", LOCK_FILE: "0o600", RECORDED_FILE: "0o600"}


def test_open_private_truncates_and_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "dead.ndjson"
    path.write_text("old content that is longer\n")
    with open_private(path) as out:
        out.write("new\n")
    assert (path.read_text(), mode(path)) == ("new\n", "0o600")


def test_open_private_leaves_devices_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # `send --errors /dev/null`: narrowing /dev/null (as root) would break it for every other user.
    # fchmod is recorded, not done, so that a failure here cannot do that damage.
    narrowed: list[int] = []
    monkeypatch.setattr(os, "fchmod", lambda descriptor, mode: narrowed.append(mode))
    with open_private(os.devnull) as out:
        out.write("dropped\n")
    assert narrowed == []
    with open_private(tmp_path / "regular") as out:
        out.write("kept\n")
    assert narrowed == [0o600]


def test_send_writes_dead_letters_and_errors_owner_only(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text('{"type": "track", "event": "E", "messageId": "no-user"}\n')
    done = run_cli("send", "--fake", "--set", "privateKey=pk_x", "--set", "listId=L", "--state", tmp_path / "state",
                   "--dead-letter", tmp_path / "dead.ndjson", "--errors", tmp_path / "errors.ndjson", events)
    assert done.returncode == 0, done.stderr
    assert '"messageId": "no-user"' in (tmp_path / "errors.ndjson").read_text()
    assert {name: mode(tmp_path / name) for name in ("dead.ndjson", "errors.ndjson", "state")} == {
        "dead.ndjson": "0o600", "errors.ndjson": "0o600", "state": "0o700"}


@pytest.fixture
def read_only_state() -> Iterator[tuple[Path, list[str]]]:
    """An outbox in a folder its reader cannot write: as root, the reader is `nobody` (root writes anywhere)."""
    folder = Path(tempfile.mkdtemp(prefix="outbox-ro-"))
    state = folder / "state"
    make_outbox(state, 100)
    with SQLiteOutbox(state) as outbox:
        outbox.append_events("s", [NewEvent("r", "rejected", "no userId", raw='{"type": "track"}')])
    run_as: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot run as a user that a read-only folder binds")
        run_as = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        folder.chmod(0o755)
        for path in (state, *state.iterdir()):
            os.chown(path, 65534, 65534)
    for path in state.iterdir():
        path.chmod(0o400)
    state.chmod(0o500)
    try:
        yield state, run_as
    finally:
        state.chmod(0o700)
        shutil.rmtree(folder)


@pytest.mark.parametrize("action,expected", [
    ("status", '{"total": true, "events": {"pending": 100, "delivered": 0, "rejected": 1, "skipped": 0, "dead": 0}'),
    ("rejected", '"messageId": "r", "status": "rejected", "reason": "no userId"'),
    ("dead-letters", ""),
])
def test_outbox_readers_work_on_a_read_only_folder(read_only_state: tuple[Path, list[str]], action: str,
                                                   expected: str) -> None:
    state, run_as = read_only_state
    before = sorted(p.name for p in state.iterdir())
    done = subprocess.run([*run_as, sys.executable, "-m", "engine", "outbox", action, "--state", str(state)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr) == (0, "")
    assert expected in done.stdout if expected else done.stdout == ""
    assert sorted(p.name for p in state.iterdir()) == before
