"""The engine's uploads against the in-memory fake, for what a real server does not
easily show: a refusal in a later command of a batch, a refusal with and without
MULTIAPPEND, UIDs the server does not tell, memory bounds of a batch. End to end
against Dovecot: test_upload_e2e.py."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fakeremote import BASIC_CAPABILITIES, FULL_CAPABILITIES, FakeRemoteStore

from mirrorsync.config import AccountConfig, LocalConfig, RemoteConfig
from mirrorsync.content import content_hash, message_id
from mirrorsync.maildir import Maildir, MaildirFolder
from mirrorsync.model import Flags
from mirrorsync.state import State
from mirrorsync.sync import transfer
from mirrorsync.sync.base import FolderReport, SyncOptions
from mirrorsync.sync.engine import AccountSync
from mirrorsync.sync.transfer import NOT_UPLOADED

SEEN: Flags = frozenset({"\\Seen"})


def message(n: int, size: int = 0) -> bytes:
    return f"Message-ID: <{n}@up.test>\nSubject: {n}\n\n{'x' * size}body {n}\n".encode()


class World:
    def __init__(
        self,
        tmp: Path,
        capabilities: frozenset[str],
        appenduid: bool = True,
        remote: FakeRemoteStore | None = None,
    ) -> None:
        self.remote = remote or FakeRemoteStore(capabilities, appenduid=appenduid)
        self.remote.create_folder("Bulk")
        self.maildir = Maildir(tmp / "Mail")
        self.maildir.root.mkdir(parents=True)
        self.folder: MaildirFolder = self.maildir.create_folder("Bulk")
        self.state = State.open(tmp / "state")
        account = AccountConfig(
            name="test",
            remote=RemoteConfig(host="localhost", username="u", port=143),
            local=LocalConfig(tmp / "Mail"),
            state_dir=tmp / "state",
        )
        self.sync = AccountSync(
            account, self.remote, self.maildir, self.state, SyncOptions(), lambda _: None
        )
        self.datas: dict[str, bytes] = {}

    def add(self, data: bytes, flags: Flags = SEEN, mtime: float = 1_600_000_000) -> str:
        key = self.folder.new_key()
        self.folder.deliver(key, data, flags, mtime)
        self.datas[key] = data
        return key

    def upload(self) -> tuple[int, FolderReport]:
        rep = FolderReport("Bulk")
        # In the order added: keys do not sort by time (the microseconds in a
        # Maildir key are not zero-padded), and the batching tests count on the order.
        order = list(self.datas)
        items = sorted(self.folder.scan().values(), key=lambda m: order.index(m.key))
        unresolved = self.sync._upload("Bulk", self.folder, items, rep)
        return unresolved, rep

    def server(self) -> dict[str, tuple[set[str], datetime]]:
        f = self.remote.folders["Bulk"]
        return {str(message_id(m.data)): (m.flags, m.internaldate) for m in f.messages.values()}


CAPS = [
    pytest.param(FULL_CAPABILITIES, id="multiappend"),
    pytest.param(BASIC_CAPABILITIES, id="one-by-one"),
]


@pytest.mark.parametrize("caps", CAPS)
def test_uploads_are_paired_with_flags_and_dates(tmp_path: Path, caps: frozenset[str]) -> None:
    w = World(tmp_path, caps)
    flags = [frozenset(), SEEN, frozenset({"\\Flagged", "\\Seen"}), frozenset({"\\Draft"})]
    keys = [w.add(message(n), flags[n % 4], 1_600_000_000 + 60 * n) for n in range(120)]
    unresolved, rep = w.upload()
    assert unresolved == 0 and rep.counts["uploaded"] == 120 and not rep.counts[NOT_UPLOADED]
    batches = -(-120 // transfer.UPLOAD_BATCH)
    assert w.remote.append_commands == (batches if "MULTIAPPEND" in caps else 120)
    assert w.remote.calls.count("append_many") == batches
    server = w.server()
    for n in range(120):
        got_flags, date = server[f"<{n}@up.test>"]
        assert got_flags == flags[n % 4]
        assert date == datetime.fromtimestamp(1_600_000_000 + 60 * n, timezone.utc)
    pairs = {p.key: p for p in w.state.pairs("Bulk")}
    assert set(pairs) == set(keys)
    f = w.remote.folders["Bulk"]
    for key, p in pairs.items():
        assert f.messages[p.uid].data == w.datas[key].replace(b"\n", b"\r\n")
        assert p.hash == content_hash(w.datas[key])


@pytest.mark.parametrize("caps", CAPS)
def test_a_refused_file_is_named_and_the_rest_go_up(
    tmp_path: Path, caps: frozenset[str], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The store splits the batch into commands of 3: [0 1 2] goes up, [3 4 5] is
    refused (5 is empty), so those three are sent again one by one, and [6 7] then
    goes up as usual."""
    w = World(tmp_path, caps)
    w.remote.append_batch_count = 3
    keys = [w.add(message(n) if n != 5 else b"") for n in range(8)]
    unresolved, rep = w.upload()
    assert unresolved == 1  # the refused one: matched by content next run
    assert rep.counts["uploaded"] == 7 and rep.counts[NOT_UPLOADED] == 1
    assert f"could not upload {w.folder.path_of(w.folder.scan()[keys[5]])}" in caplog.text
    assert "zero byte" in caplog.text
    assert {p.key for p in w.state.pairs("Bulk")} == set(keys) - {keys[5]}
    assert len(w.remote.folders["Bulk"].messages) == 7
    if "MULTIAPPEND" in caps:  # [0 1 2] [3 4 5]x 3 4 5x [6 7]
        assert w.remote.append_commands == 6
        assert w.remote.calls.count("append") == 3
    else:  # each once, the empty one too: it was refused alone
        assert w.remote.append_commands == 8
        assert w.remote.calls.count("append_many") == 2


def test_a_batch_refused_whole_is_sent_one_by_one(tmp_path: Path) -> None:
    w = World(tmp_path, FULL_CAPABILITIES)
    keys = [w.add(message(n)) for n in range(4)]
    w.add(b"", frozenset({"k" * 80}))  # refused twice over
    w.add(message(9))
    _unresolved, rep = w.upload()
    assert rep.counts["uploaded"] == 5 and rep.counts[NOT_UPLOADED] == 1
    assert len(w.state.pairs("Bulk")) == 5
    assert w.remote.append_commands == 1 + 6
    assert set(keys) < {p.key for p in w.state.pairs("Bulk")}


def test_uids_not_told_are_left_for_matching(tmp_path: Path) -> None:
    w = World(tmp_path, FULL_CAPABILITIES, appenduid=False)
    for n in range(5):
        w.add(message(n))
    unresolved, rep = w.upload()
    assert unresolved == 5 and rep.counts["uploaded"] == 0
    assert w.state.pairs("Bulk") == [] and len(w.remote.folders["Bulk"].messages) == 5


def test_batches_are_bounded_by_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch holds at most UPLOAD_BATCH_BYTES of messages (a bigger one alone), and
    each batch is committed before the next is read."""
    monkeypatch.setattr(transfer, "UPLOAD_BATCH_BYTES", 3000)
    w = World(tmp_path, FULL_CAPABILITIES)
    sizes = [900, 900, 900, 900, 5000, 900, 100]
    for n, size in enumerate(sizes):
        w.add(message(n, size))
    sent: list[list[int]] = []
    real = w.remote.append_many

    def spy(name: str, items: Any) -> Any:
        sent.append([len(data) for data, _f, _d in items])
        assert len(w.state.pairs("Bulk")) == sum(len(s) for s in sent[:-1])
        return real(name, items)

    monkeypatch.setattr(w.remote, "append_many", spy)
    _unresolved, rep = w.upload()
    assert rep.counts["uploaded"] == len(sizes)
    assert [len(s) for s in sent] == [3, 1, 1, 2]
    assert all(sum(s) <= 3000 or len(s) == 1 for s in sent)


def test_a_file_gone_before_it_is_read_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World(tmp_path, FULL_CAPABILITIES)
    keys = [w.add(message(n)) for n in range(3)]
    # in the order added (keys do not sort by time), so the second one added goes
    items = sorted(w.folder.scan().values(), key=lambda m: keys.index(m.key))
    w.folder.path_of(items[1]).unlink()
    rep = FolderReport("Bulk")
    assert w.sync._upload("Bulk", w.folder, items, rep) == 0
    assert rep.counts["uploaded"] == 2 and not rep.counts[NOT_UPLOADED]
    assert {p.key for p in w.state.pairs("Bulk")} == {keys[0], keys[2]}


def test_an_error_after_the_server_stored_a_message_leaves_it_for_matching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without UIDPLUS the UID is looked for after the APPEND; if that look fails,
    the message is on the server though the upload reports an error. The folder must
    then be matched by content on the next run (never uploaded twice)."""
    from mirrorsync.errors import ServerError

    w = World(tmp_path, BASIC_CAPABILITIES, appenduid=False)
    real = FakeRemoteStore.append

    def stored_then_failed(self: Any, *args: Any, **kw: Any) -> Any:
        real(self, *args, **kw)
        raise ServerError("Bulk: the server closed the folder while we looked")

    monkeypatch.setattr(FakeRemoteStore, "append", stored_then_failed)
    w.add(message(1))
    unresolved, rep = w.upload()
    assert rep.counts[NOT_UPLOADED] == 1 and unresolved == 1
    assert len(w.remote.folders["Bulk"].messages) == 1 and w.state.pairs("Bulk") == []


# -- a server that stores something else than was sent ----------------------------------

EIGHT_BIT = "Message-ID: <8bit@up.test>\nSubject: caf\u00e9 cr\u00e8me\n\nbody caf\u00e9\n".encode()


@pytest.mark.parametrize("caps", CAPS)
def test_a_message_the_server_munges_takes_the_servers_bytes(
    tmp_path: Path, caps: frozenset[str], caplog: Any
) -> None:
    """Cyrus's munge8bit turns raw 8-bit header bytes into "X", keeping the size. The
    file then holds the server's bytes (same name, date), the state the server's hash,
    and one warning names the message; a plain message is neither fetched nor touched."""
    w = World(tmp_path, caps, remote=FakeRemoteStore(caps, munge8bit=True))
    changed = w.add(EIGHT_BIT, SEEN, 1_600_000_000)
    plain = w.add(message(1))
    before = {k: w.folder.path_of(m) for k, m in w.folder.scan().items()}
    fetched: list[int] = []
    real = w.remote.fetch
    w.remote.fetch = lambda uids: (fetched.extend(uids), real(uids))[1]  # type: ignore[method-assign]
    unresolved, rep = w.upload()
    assert unresolved == 0 and rep.counts["uploaded"] == 2
    pairs = {p.key: p for p in w.state.pairs("Bulk")}
    served = w.remote.folders["Bulk"].messages[pairs[changed].uid].data
    assert (
        served == b"Message-ID: <8bit@up.test>\r\nSubject: cafXX crXXme\r\n\r\nbody caf\xc3\xa9\r\n"
    )
    after = {k: w.folder.path_of(m) for k, m in w.folder.scan().items()}
    assert after == before  # same keys, flags and subdirectories
    assert after[changed].read_bytes() == served.replace(b"\r\n", b"\n")
    assert after[changed].stat().st_mtime == 1_600_000_000
    assert pairs[changed].hash == content_hash(served.replace(b"\r\n", b"\n"))
    assert after[plain].read_bytes() == w.datas[plain]
    assert pairs[plain].hash == content_hash(w.datas[plain])
    assert fetched == [pairs[changed].uid]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "Bulk" in warnings[0] and "<8bit@up.test>" in warnings[0]
    assert not list((w.folder.path / "tmp").iterdir())


class AddsHeader(FakeRemoteStore):
    """A server that adds a header to what it is sent: the stored size differs."""

    def _add(self, f: Any, data: bytes, flags: Any, date: Any) -> int:
        return super()._add(f, b"X-Stored: yes\r\n" + data, flags, date)


def test_a_message_the_server_grows_is_found_by_its_size(tmp_path: Path, caplog: Any) -> None:
    w = World(tmp_path, FULL_CAPABILITIES, remote=AddsHeader(FULL_CAPABILITIES))
    key = w.add(b"Subject: no id\n\nbody\n")
    w.upload()
    (msg,) = w.folder.scan().values()
    assert w.folder.read(msg) == b"X-Stored: yes\nSubject: no id\n\nbody\n"
    (pair,) = w.state.pairs("Bulk")
    assert pair.key == key and pair.hash == content_hash(w.folder.read(msg))
    assert "subject 'no id'" in caplog.text


def test_a_failed_check_still_records_the_uploads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The messages are on the server: left to a match by content, a changed copy
    would be missed and uploaded again, so they are recorded as sent."""
    from mirrorsync.errors import ServerError

    w = World(tmp_path, FULL_CAPABILITIES, remote=FakeRemoteStore(munge8bit=True))
    w.add(EIGHT_BIT)

    def fails(uids: Any) -> Any:
        raise ServerError("Bulk: connection lost")

    monkeypatch.setattr(w.remote, "sizes", fails)
    with pytest.raises(ServerError):
        w.upload()
    (pair,) = w.state.pairs("Bulk")
    assert pair.hash == content_hash(EIGHT_BIT)


def test_a_folder_whose_status_is_refused_is_not_taken_for_deleted(tmp_path: Path) -> None:
    """Taken for deleted on the server, a synced folder whose files are all still
    here would be reset and uploaded again (a second copy of every message once the
    server answers again). Its STATUS refused, it is skipped and reported instead."""
    w = World(tmp_path, FULL_CAPABILITIES)
    for n in range(3):
        w.add(message(n))
    assert not w.sync.run().failed
    w.remote.refuse_status.add("Bulk")
    report = w.sync.run()
    assert [(f.name, "SERVERBUG" in (f.error or "")) for f in report.failed] == [("Bulk", True)]
    assert len(w.remote.folders["Bulk"].messages) == 3
    assert len(w.state.pairs("Bulk")) == 3
    w.remote.refuse_status.clear()
    assert not w.sync.run().failed
    assert len(w.remote.folders["Bulk"].messages) == 3
