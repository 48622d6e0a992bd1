"""One contract for every `RemoteStore`: ImapStore on a full Dovecot, ImapStore on a
Dovecot that advertises no extensions (so the UIDPLUS/CONDSTORE fallbacks run against
a real server), and the in-memory fake, with full and with basic capabilities. Two
more run the CONDSTORE-without-QRESYNC paths (what Gmail offers): ImapStore on the
full Dovecot told not to use QRESYNC, and the fake with those capabilities.

Where behaviour differs by capability, the test says so by branching on
`Backend.qresync` / `Backend.condstore`; everything else holds for all six.

Each case may use `backend.other`, a second client acting on the same account, to do
what another mail program would. Then come ImapStore-only tests (connecting, TLS,
errors) and table tests of its pure helpers.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import imapclient
import pytest
from conftest import Account
from fakeremote import (
    BASIC_CAPABILITIES,
    CONDSTORE_CAPABILITIES,
    FULL_CAPABILITIES,
    QUOTA_CAPABILITIES,
    UIDPLUS_CAPABILITIES,
    FakeRemoteStore,
)
from imapclient.imap_utf7 import decode as utf7_decode

from mirrorsync import content
from mirrorsync.config import RemoteConfig
from mirrorsync.errors import (
    AppendRefused,
    AuthenticationFailed,
    ConnectionFailed,
    FolderNameError,
    ServerError,
)
from mirrorsync.imap.base import canonical_to_server
from mirrorsync.imap.store import ImapStore
from mirrorsync.model import RemoteFolder, RemoteMessage
from mirrorsync.names import canonical_folder, server_to_canonical
from mirrorsync.remote import RemoteStore

# -- backends -----------------------------------------------------------------------


class Other:
    """Another mail client on the same account."""

    def append(self, folder: str, data: bytes, flags: tuple[str, ...] = ()) -> int:
        raise NotImplementedError

    def add_flags(self, folder: str, uid: int, flags: tuple[str, ...]) -> None:
        raise NotImplementedError

    def flags(self, folder: str, uid: int) -> set[str]:
        raise NotImplementedError

    def expunge(self, folder: str, uids: list[int]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ImapOther(Other):
    def __init__(self, account: Account) -> None:
        self.client = account.client()

    def append(self, folder: str, data: bytes, flags: tuple[str, ...] = ()) -> int:
        self.client.select_folder(folder)
        before = set(self.client.search("ALL"))
        self.client.append(folder, data, flags)
        self.client.noop()
        (uid,) = set(self.client.search("ALL")) - before
        return int(uid)

    def add_flags(self, folder: str, uid: int, flags: tuple[str, ...]) -> None:
        self.client.select_folder(folder)
        self.client.add_flags([uid], flags, silent=True)

    def flags(self, folder: str, uid: int) -> set[str]:
        self.client.select_folder(folder, readonly=True)
        got = self.client.get_flags([uid])
        return {f.decode() for f in got[uid]}

    def expunge(self, folder: str, uids: list[int]) -> None:
        # plain EXPUNGE: the limited Dovecot has no UID EXPUNGE; the tests using this
        # have no other \Deleted messages
        self.client.select_folder(folder)
        self.client.add_flags(uids, ["\\Deleted"], silent=True)
        self.client.expunge()

    def close(self) -> None:
        self.client.logout()


class FakeOther(Other):
    def __init__(self, store: FakeRemoteStore) -> None:
        self.store = store

    def append(self, folder: str, data: bytes, flags: tuple[str, ...] = ()) -> int:
        return self.store.inject(folder, data, flags)

    def add_flags(self, folder: str, uid: int, flags: tuple[str, ...]) -> None:
        msg = self.store.message(folder, uid)
        self.store.set_flags(folder, uid, msg.flags | set(flags))

    def flags(self, folder: str, uid: int) -> set[str]:
        return set(self.store.message(folder, uid).flags)

    def expunge(self, folder: str, uids: list[int]) -> None:
        self.store.expunge_external(folder, uids)


@dataclass
class Backend:
    kind: str
    store: RemoteStore
    other: Other
    account: Account | None = None

    @property
    def uidplus(self) -> bool:
        return "UIDPLUS" in self.store.capabilities

    @property
    def condstore(self) -> bool:
        return "CONDSTORE" in self.store.capabilities

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.store.capabilities


def remote_config(account: Account, **kw: Any) -> RemoteConfig:
    settings: dict[str, Any] = {
        "host": account.host,
        "username": account.user,
        "port": account.port,
        "tls": "none",
        "timeout": 10.0,
    }
    settings.update(kw)
    return RemoteConfig(**settings)


_dovecot = pytest.mark.dovecot


_IMAP_KINDS = [
    pytest.param("dovecot", marks=_dovecot),
    pytest.param("dovecot_basic", marks=_dovecot),
    pytest.param("dovecot_condstore", marks=_dovecot),
]


@pytest.fixture(params=[*_IMAP_KINDS, "fake", "fake_basic", "fake_condstore"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from _backend(request)


@pytest.fixture(params=_IMAP_KINDS)
def imap_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The ImapStore backends alone, for what only a real connection can show."""
    yield from _backend(request)


# What the full Dovecot is told not to use, per kind.
_DISABLE = {
    "dovecot_condstore": ("QRESYNC",),
    "dovecot_no_uidplus": ("UIDPLUS",),
    "dovecot_sync_literals": ("LITERAL+",),
}


@pytest.fixture(
    params=[
        *_IMAP_KINDS,
        pytest.param("dovecot_no_uidplus", marks=_dovecot),
        pytest.param("dovecot_sync_literals", marks=_dovecot),
        "fake",
        "fake_basic",
        "fake_condstore",
        "fake_no_multiappend",
    ]
)
def append_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """`backend`, and the combinations `append_many` takes its own way through:
    MULTIAPPEND without UIDPLUS (UIDs found by Message-ID and size) and without
    LITERAL+ (a "+" awaited before each message), and the fake with UIDPLUS but
    without MULTIAPPEND."""
    yield from _backend(request)


@pytest.fixture(
    params=[*_IMAP_KINDS, pytest.param("dovecot_uidplus", marks=_dovecot), "fake", "fake_uidplus"]
)
def move_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """`backend`, and UIDPLUS without MOVE (Courier): the move is a UID COPY whose
    COPYUID comes in the tagged answer rather than in an untagged OK."""
    yield from _backend(request)


# The Dovecot each kind runs against, where it is not the full one.
_ACCOUNTS = {"dovecot_basic": "basic_account", "dovecot_uidplus": "uidplus_account"}


def _backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    kind = request.param
    if kind.startswith("fake"):
        caps = {
            "fake_basic": BASIC_CAPABILITIES,
            "fake_condstore": CONDSTORE_CAPABILITIES,
            "fake_no_multiappend": FULL_CAPABILITIES - {"MULTIAPPEND"},
            "fake_uidplus": UIDPLUS_CAPABILITIES,
        }
        fake = FakeRemoteStore(caps.get(kind, FakeRemoteStore().capabilities))
        yield Backend(kind, fake, FakeOther(fake))
        return
    account = request.getfixturevalue(_ACCOUNTS.get(kind, "account"))
    disable = _DISABLE.get(kind, ())
    store = ImapStore.connect(remote_config(account), account.password, disable=disable)
    other = ImapOther(account)
    try:
        yield Backend(kind, store, other, account)
    finally:
        store.close()
        other.close()


def msg(n: int | str, body: bytes = b"Hello.\r\n", msgid: bool = True) -> bytes:
    head = f"Message-ID: <{n}@mirrorsync.test>\r\n".encode() if msgid else b""
    return head + f"Subject: message {n}\r\nFrom: a@b.example\r\n\r\n".encode() + body


def add(
    store: RemoteStore,
    folder: str,
    data: bytes,
    flags: frozenset[str] = frozenset(),
    date: datetime | None = None,
) -> int:
    """APPEND that must tell the new UID: every backend here can (the limited Dovecot
    through the Message-ID fallback)."""
    uid = store.append(folder, data, flags, date)
    assert uid is not None
    return uid


def names(store: RemoteStore) -> dict[str, RemoteFolder]:
    return {f.name: f for f in store.list_folders()}


def visible(flags: frozenset[str]) -> set[str]:
    """\\Recent is per session and only the server sets it: not part of the contract."""
    return {f for f in flags if f.lower() != "\\recent"}


def plain(listing: dict[int, RemoteMessage]) -> dict[int, tuple[set[str], int]]:
    """A listing without \\Recent (a later SELECT no longer sees it)."""
    return {uid: (visible(m.flags), m.size) for uid, m in listing.items()}


# -- folders ------------------------------------------------------------------------


def test_capabilities_are_upper_case_strings(backend: Backend) -> None:
    caps = backend.store.capabilities
    assert "IMAP4REV1" in caps
    assert all(c == c.upper() for c in caps)
    basic = backend.kind.endswith("basic")
    assert ("UIDPLUS" in caps) is not basic
    assert ("CONDSTORE" in caps) is not basic
    assert ("QRESYNC" in caps) is (not basic and not backend.kind.endswith("condstore"))


def test_fresh_account_lists_a_selectable_inbox(backend: Backend) -> None:
    folders = names(backend.store)
    assert "INBOX" in folders
    assert folders["INBOX"].selectable


def test_folder_naming(backend: Backend) -> None:
    """What the engine asks before it creates anything (see `naming`): the delimiter,
    the personal namespace prefix, and whether a canonical name can be held."""
    store = backend.store
    assert store.delimiter() == "/"
    assert store.personal_prefix() == ""
    store.use_namespace_prefix("")
    for name in ("INBOX", "Work", "Work/Sub", "a.b", "Mr. Smith/2024"):
        assert store.unrepresentable(name) is None


def test_create_nested_and_delete(backend: Backend) -> None:
    store = backend.store
    store.create_folder("Work/Projects/2024")
    folders = names(store)
    assert folders["Work/Projects/2024"].selectable
    # the parents are listed (Dovecot: as \Noselect) but need not be selectable
    assert "Work" in folders and "Work/Projects" in folders

    store.create_folder("Work")  # a parent can become a real folder
    assert names(store)["Work"].selectable
    store.create_folder("Work/Projects/2024")  # already there: not an error

    store.delete_folder("Work/Projects/2024")
    assert "Work/Projects/2024" not in names(store)
    store.delete_folder("Work")
    assert not any(n.startswith("Work") for n in names(store) if names(store)[n].selectable)


def test_non_ascii_names_round_trip(backend: Backend) -> None:
    store = backend.store
    for name in ("Entwürfe/Ünïcödé", "日本語", "Sent & Drafts"):
        store.create_folder(name)
        assert names(store)[name].selectable
        store.select(name)
        uid = add(store, name, msg(name))
        assert set(store.list_messages()) == {uid}
    if backend.account is not None:
        # on the wire the names are modified UTF-7 (RFC 3501 5.1.3)
        raw = imapclient.IMAPClient(backend.account.host, backend.account.port, ssl=False)
        raw.folder_encode = False
        raw.login(backend.account.user, backend.account.password)
        wire = {n for _flags, _delim, n in raw.list_folders()}
        raw.logout()
        assert b"&ZeVnLIqe-" in wire
        assert b"Sent &- Drafts" in wire
        assert all(n.isascii() for n in wire)
        assert {utf7_decode(n) for n in wire} >= {"Entwürfe/Ünïcödé", "日本語"}


def test_folder_errors(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(ServerError) as err:
        store.select("Nope")
    assert "Nope" in str(err.value)
    with pytest.raises(ServerError):
        store.append("Nope", msg(1), frozenset())
    with pytest.raises(ServerError):
        store.delete_folder("Nope")
    with pytest.raises(FolderNameError):
        store.create_folder("a//b")


def test_message_operations_need_a_selected_folder(backend: Backend) -> None:
    with pytest.raises(ServerError):
        backend.store.list_messages()
    with pytest.raises(ServerError):
        backend.store.select("Nope")
    with pytest.raises(ServerError):  # a failed select leaves nothing selected
        backend.store.list_messages()


def test_delete_selected_folder_keeps_the_store_usable(backend: Backend) -> None:
    store = backend.store
    store.create_folder("Gone")
    store.select("Gone")
    store.delete_folder("Gone")
    assert "Gone" not in names(store)
    store.select("INBOX")
    assert store.list_messages() == {}


# -- status, select, append -----------------------------------------------------------


def test_status_and_select_numbers(backend: Backend) -> None:
    store = backend.store
    store.create_folder("Box")
    empty = store.statuses()["Box"]
    assert empty.messages == 0 and empty.uidvalidity > 0 and empty.uidnext >= 1
    uids = [add(store, "Box", msg(i)) for i in range(3)]
    st = store.statuses()["Box"]
    assert st.messages == 3
    assert st.uidvalidity == empty.uidvalidity
    assert st.uidnext > max(uids)
    sel = store.select("Box")
    assert (sel.uidvalidity, sel.uidnext, sel.messages) == (
        st.uidvalidity,
        st.uidnext,
        st.messages,
    )
    if "CONDSTORE" in store.capabilities:
        assert sel.highestmodseq > 0 and st.highestmodseq > 0
    else:
        assert sel.highestmodseq == 0 and st.highestmodseq == 0


def test_append_returns_uid_listed_with_flags_and_size(backend: Backend) -> None:
    store = backend.store
    data = msg("a", body=b"x" * 1000 + b"\r\n")
    flags = frozenset({"\\Seen", "$Forwarded", "Junk", "\\Recent"})
    uid = store.append("INBOX", data, flags)
    assert uid is not None
    store.select("INBOX")
    listed = store.list_messages()
    assert set(listed) == {uid}
    assert listed[uid].uid == uid
    assert visible(listed[uid].flags) == {"\\Seen", "$Forwarded", "Junk"}
    assert listed[uid].size == len(data)


def test_append_while_another_folder_is_selected(backend: Backend) -> None:
    """The no-UIDPLUS fallback has to look into the target folder; the selection the
    engine made must survive that."""
    store = backend.store
    store.create_folder("Other")
    mine = add(store, "INBOX", msg("in-inbox"))
    store.select("INBOX")
    uid = add(store, "Other", msg("elsewhere"), frozenset({"\\Flagged"}))
    assert set(store.list_messages()) == {mine}  # still INBOX
    uid2 = add(store, "INBOX", msg("selected"))
    assert set(store.list_messages()) == {mine, uid2}
    store.select("Other")
    assert visible(store.list_messages()[uid].flags) == {"\\Flagged"}


def test_append_without_message_id(backend: Backend) -> None:
    store = backend.store
    data = msg("anon", msgid=False)
    uid = add(store, "INBOX", data)
    store.select("INBOX")
    assert store.identities([uid])[uid].message_id is None


def test_uids_strictly_increase(backend: Backend) -> None:
    store = backend.store
    first = add(store, "INBOX", msg(1))
    store.select("INBOX")
    store.expunge([first])
    second = add(store, "INBOX", msg(1))
    assert second > first
    assert store.statuses()["INBOX"].uidnext > second


def test_empty_folder_lists_no_messages(backend: Backend) -> None:
    backend.store.create_folder("Empty")
    backend.store.select("Empty")
    assert backend.store.list_messages() == {}
    assert backend.store.identities([1, 2]) == {}
    assert list(backend.store.fetch([1, 2])) == []


# -- append_many ----------------------------------------------------------------------


def append_commands(backend: Backend) -> Callable[[], int]:
    """How many APPEND commands the store has sent so far: counted on the wire for
    ImapStore (imaplib's and `_send_append`'s writes both start with the tag)."""
    store = backend.store
    if isinstance(store, FakeRemoteStore):
        start = store.append_commands
        return lambda: store.append_commands - start
    assert isinstance(store, ImapStore)
    imap = store._client._imap
    real = imap.send
    sent: list[bytes] = []

    def spy(data: bytes) -> None:
        if re.match(rb"[A-Z]+\d+ APPEND ", data):
            sent.append(data)
        real(data)

    imap.send = spy
    return lambda: len(sent)


def multiappend(backend: Backend) -> bool:
    return "MULTIAPPEND" in backend.store.capabilities


def test_append_many_returns_uids_in_order_with_flags_sizes_and_dates(
    append_backend: Backend,
) -> None:
    store = append_backend.store
    store.create_folder("Bulk")
    day = datetime(2022, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-5)))
    same = msg("twice")  # the same message twice: the UIDs still follow the order
    items = [
        (msg("m0"), frozenset({"\\Seen"}), day),
        (msg("m1", body=b"z" * 3000 + b"\r\n"), frozenset(), day + timedelta(days=1)),
        (msg("m2", msgid=False), frozenset({"\\Flagged", "$Label1", "\\Recent"}), None),
        (same, frozenset({"\\Answered"}), day + timedelta(days=2)),
        (same, frozenset({"\\Draft"}), day + timedelta(days=3)),
        (msg("m5", body="Grüße\r\n".encode()), frozenset({"\\Seen", "Junk"}), day),
    ]
    count = append_commands(append_backend)
    uids = store.append_many("Bulk", items)
    assert count() == (1 if multiappend(append_backend) else len(items))
    assert all(uid is not None for uid in uids)
    assert uids == sorted(uids) and len(set(uids)) == len(items)
    store.select("Bulk")
    listed = store.list_messages()
    assert set(listed) == set(uids)
    fetched = {uid: (data, when) for uid, data, _flags, when in store.fetch(uids)}
    for uid, (data, flags, date) in zip(uids, items, strict=True):
        assert uid is not None
        assert visible(listed[uid].flags) == visible(flags)
        assert listed[uid].size == len(data)
        assert fetched[uid][0] == data
        if date is not None:
            assert fetched[uid][1] == date
    # and the next ones follow
    more = store.append_many("Bulk", [(msg("m6"), frozenset(), None)])
    assert more[0] is not None and more[0] > max(u for u in uids if u is not None)


def test_append_many_of_nothing(append_backend: Backend) -> None:
    count = append_commands(append_backend)
    assert append_backend.store.append_many("INBOX", []) == []
    assert count() == 0


def test_append_many_splits_commands_by_count_and_bytes(append_backend: Backend) -> None:
    store = append_backend.store
    assert isinstance(store, (ImapStore, FakeRemoteStore))
    store.append_batch_count = 4
    store.append_batch_bytes = 3000
    small = [msg(f"s{i}", body=b"s" * (900 - len(msg(f"s{i}", b""))) + b"\r\n") for i in range(9)]
    assert {len(d) for d in small} == {902}
    big = msg("big", body=b"b" * 5000 + b"\r\n")  # over the byte bound: alone
    datas = [*small[:5], big, *small[5:]]
    count = append_commands(append_backend)
    uids = store.append_many("INBOX", [(d, frozenset(), None) for d in datas])
    # [s0 s1 s2] (a fourth would pass 3000 bytes) [s3 s4] [big] [s5 s6 s7] [s8]
    assert count() == (5 if multiappend(append_backend) else len(datas))
    assert None not in uids and uids == sorted(uids)
    store.select("INBOX")
    got = {uid: data for uid, data, _flags, _when in store.fetch([u for u in uids if u])}
    assert [got[u] for u in uids if u] == datas
    # the count bound
    store.append_batch_bytes = 10**9
    count = append_commands(append_backend)
    store.append_many("INBOX", [(d, frozenset(), None) for d in small])
    assert count() == (3 if multiappend(append_backend) else len(small))


# What Dovecot refuses in a well-formed APPEND (and the fake with it): an empty
# message, and a keyword longer than its mail_max_keyword_length (50).
REFUSED = [
    pytest.param((b"", frozenset()), id="empty"),
    pytest.param((msg("kw"), frozenset({"k" * 80})), id="long-keyword"),
]


@pytest.mark.parametrize("bad", REFUSED)
def test_append_many_refused_message(
    append_backend: Backend, bad: tuple[bytes, frozenset[str]]
) -> None:
    """RFC 3502: a refused MULTIAPPEND stores none of its messages, so the error says
    that the whole command was refused and the caller can send its messages again
    one by one. Without MULTIAPPEND the ones before the bad one are stored, and the
    error says which went up and that the bad one was refused alone."""
    store = append_backend.store
    assert isinstance(store, (ImapStore, FakeRemoteStore))
    store.create_folder("Bulk")
    good = [(msg(f"g{i}"), frozenset({"\\Seen"}), None) for i in range(5)]
    items = [*good[:3], (bad[0], bad[1], None), *good[3:]]
    with pytest.raises(AppendRefused) as err:
        store.append_many("Bulk", items)
    assert "Bulk" in str(err.value)
    store.select("Bulk")
    stored = store.list_messages()
    if multiappend(append_backend):
        assert (err.value.uids, err.value.refused) == ([], 6)
        assert stored == {}
    else:
        assert (len(err.value.uids), err.value.refused) == (3, 1)
        assert set(err.value.uids) == set(stored)
    # what the engine does next: the refused ones one by one (only the bad one is
    # refused again), then the rest
    done = len(err.value.uids)
    for i, (data, flags, date) in enumerate(items[done:], start=done):
        if i == 3:
            with pytest.raises(ServerError):
                store.append("Bulk", data, flags, date)
        else:
            assert store.append("Bulk", data, flags, date) is not None
    assert len(store.list_messages()) == 5


def test_append_many_refused_in_a_later_command(append_backend: Backend) -> None:
    """The commands before the refused one are stored, and the error has their UIDs;
    the ones after it are not sent."""
    store = append_backend.store
    assert isinstance(store, (ImapStore, FakeRemoteStore))
    store.append_batch_count = 2
    items = [(msg(f"c{i}"), frozenset(), None) for i in range(6)]
    items[3] = (b"", frozenset(), None)
    with pytest.raises(AppendRefused) as err:
        store.append_many("INBOX", items)
    store.select("INBOX")
    stored = store.list_messages()
    if multiappend(append_backend):
        assert (len(err.value.uids), err.value.refused) == (2, 2)
    else:
        assert (len(err.value.uids), err.value.refused) == (3, 1)
    assert set(err.value.uids) == set(stored)
    got = {uid: data for uid, data, _f, _d in store.fetch(list(stored))}
    assert [got[u] for u in err.value.uids if u] == [d for d, _f, _t in items[: len(stored)]]


def test_append_many_checks_flag_names_before_sending(append_backend: Backend) -> None:
    count = append_commands(append_backend)
    items = [(msg(1), frozenset(), None), (msg(2), frozenset({"bad flag"}), None)]
    with pytest.raises(ServerError, match="not a valid IMAP flag") as err:
        append_backend.store.append_many("INBOX", items)
    if multiappend(append_backend):  # nothing sent
        assert count() == 0 and not isinstance(err.value, AppendRefused)
    else:  # the first one went up
        assert count() == 1 and isinstance(err.value, AppendRefused)
        assert (len(err.value.uids), err.value.refused) == (1, 1)


def test_append_many_to_a_missing_folder(append_backend: Backend) -> None:
    with pytest.raises(AppendRefused) as err:
        append_backend.store.append_many("Nope", [(msg(1), frozenset(), None)] * 2)
    assert "Nope" in str(err.value)
    assert err.value.uids == [] and err.value.refused == (2 if multiappend(append_backend) else 1)


def test_append_many_while_the_folder_is_selected(append_backend: Backend) -> None:
    """The target selected (its new messages announced meanwhile) and another one
    selected: the selection the engine made survives, as with `append`."""
    store = append_backend.store
    store.create_folder("Other")
    store.select("INBOX")
    mine = store.append_many("INBOX", [(msg(i), frozenset(), None) for i in range(3)])
    assert set(store.list_messages()) == set(mine) and None not in mine
    there = store.append_many("Other", [(msg(f"o{i}"), frozenset(), None) for i in range(3)])
    assert set(store.list_messages()) == set(mine)  # still INBOX
    store.select("Other")
    assert set(store.list_messages()) == set(there)


# -- fetch, identities ----------------------------------------------------------------


def test_fetch_exact_bytes_and_internaldate(backend: Backend) -> None:
    store = backend.store
    body = "Grüße, \tspaces  \r\n\r\n.\r\nend without newline".encode()
    data = msg("bytes", body=body)
    date = datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    uid = add(store, "INBOX", data, frozenset({"\\Answered"}), date)
    store.select("INBOX")
    ((got_uid, got, flags, when),) = list(store.fetch([uid]))
    assert got_uid == uid
    assert got == data
    assert visible(flags) == {"\\Answered"}
    assert when == date and when is not None and when.utcoffset() is not None


def test_fetch_does_not_set_seen(backend: Backend) -> None:
    store = backend.store
    uid = add(store, "INBOX", msg(1))
    store.select("INBOX")
    list(store.fetch([uid]))
    assert "\\Seen" not in store.list_messages()[uid].flags
    assert "\\Seen" not in backend.other.flags("INBOX", uid)


def test_fetch_in_batches_skips_vanished(backend: Backend) -> None:
    store = backend.store
    if isinstance(store, ImapStore):
        store.fetch_batch_count = 3
        store.fetch_batch_bytes = 400
    big = msg("big", body=b"y" * 600 + b"\r\n")  # more than a batch alone
    datas = [msg(i) for i in range(7)] + [big]
    uids = [add(store, "INBOX", d) for d in datas]
    store.select("INBOX")
    store.expunge([uids[2]])
    asked = [*uids, 99999]
    got = [(uid, data) for uid, data, _flags, _date in store.fetch(asked)]
    assert got == [(u, d) for u, d in zip(uids, datas, strict=True) if u != uids[2]]


def test_identities(backend: Backend) -> None:
    store = backend.store
    a = add(store, "INBOX", msg("ida"))
    b = add(store, "INBOX", msg("idb", msgid=False))
    store.select("INBOX")
    got = store.identities([a, b, 4242])
    assert set(got) == {a, b}
    assert got[a].message_id == "<ida@mirrorsync.test>"
    assert got[a].size == len(msg("ida"))
    assert got[b].message_id is None and got[b].size == len(msg("idb", msgid=False))


# -- flags, expunge -------------------------------------------------------------------


def test_store_flags_adds_and_removes(backend: Backend) -> None:
    store = backend.store
    uids = [add(store, "INBOX", msg(i), frozenset({"\\Seen"})) for i in range(6)]
    store.select("INBOX")
    chosen = uids[::2]  # non-contiguous: a compact set
    store.store_flags(chosen, frozenset({"\\Flagged", "$Forwarded", "Junk"}), frozenset())
    listed = store.list_messages()
    for uid in uids:
        expected = {"\\Seen"} | ({"\\Flagged", "$Forwarded", "Junk"} if uid in chosen else set())
        assert visible(listed[uid].flags) == expected
    store.store_flags(chosen, frozenset(), frozenset({"\\Seen", "Junk", "\\Recent"}))
    listed = store.list_messages()
    assert visible(listed[chosen[0]].flags) == {"\\Flagged", "$Forwarded"}
    assert backend.other.flags("INBOX", chosen[0]) - {"\\Recent"} == {"\\Flagged", "$Forwarded"}
    store.store_flags([], frozenset({"\\Seen"}), frozenset())  # no-ops
    store.store_flags(chosen, frozenset(), frozenset())
    store.store_flags([99999], frozenset({"\\Seen"}), frozenset())  # unknown UIDs are ignored


def test_many_uids_in_one_store(backend: Backend) -> None:
    store = backend.store
    uids = [add(store, "INBOX", msg(i)) for i in range(30)]
    store.select("INBOX")
    chosen = [u for u in uids if u % 3]
    store.store_flags(chosen, frozenset({"\\Seen"}), frozenset())
    seen = {u for u, m in store.list_messages().items() if "\\Seen" in m.flags}
    assert seen == set(chosen)


def test_expunge_removes_exactly_the_given_uids(backend: Backend) -> None:
    store = backend.store
    uids = [add(store, "INBOX", msg(i)) for i in range(5)]
    store.select("INBOX")
    store.expunge([uids[1], uids[3], 99999])
    assert set(store.list_messages()) == {uids[0], uids[2], uids[4]}
    assert store.statuses()["INBOX"].messages == 3
    store.expunge([])


def test_expunge_leaves_another_clients_deleted_message(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    store = backend.store
    mine = [add(store, "INBOX", msg(i)) for i in range(3)]
    theirs = backend.other.append("INBOX", msg("theirs"))
    backend.other.add_flags("INBOX", theirs, ("\\Deleted",))
    store.select("INBOX")
    with caplog.at_level(logging.WARNING):
        store.expunge([mine[0], mine[1]])
    listed = store.list_messages()
    assert theirs in listed and "\\Deleted" in listed[theirs].flags
    assert mine[2] in listed and "\\Deleted" not in listed[mine[2]].flags
    if backend.uidplus:
        assert mine[0] not in listed and mine[1] not in listed
    else:
        # without UID EXPUNGE ours stay, flagged, rather than taking theirs along
        assert "\\Deleted" in listed[mine[0]].flags
        assert "\\Deleted" in listed[mine[1]].flags
        if isinstance(store, ImapStore):
            assert "flagged \\Deleted by another client" in caplog.text


# -- fast paths: statuses, select_changes, store_flags, big messages -------------------


def test_statuses_match_select_and_follow_changes(backend: Backend) -> None:
    store, other = backend.store, backend.other
    for name in ("Work/Projects", "Sent & Drafts", "日本語"):
        store.create_folder(name)
    uids = [add(store, "INBOX", msg(i)) for i in range(3)]
    got = store.statuses()
    listed = store.list_folders()  # may answer from statuses' listing
    assert set(got) == {f.name for f in listed if f.selectable}
    assert {"INBOX", "Work/Projects", "Sent & Drafts", "日本語"} <= set(got)
    assert "Work" not in got  # an implied parent: listed, not selectable
    assert {(f.name, f.selectable) for f in listed} == {
        (f.name, f.selectable) for f in store.list_folders()
    }
    before = got["INBOX"]
    assert before.messages == 3 and before.uidnext > max(uids)
    assert (before.highestmodseq > 0) is backend.condstore

    new = other.append("INBOX", msg("theirs"))
    after_append = store.statuses()["INBOX"]
    assert after_append.messages == 4 and after_append.uidnext > new
    assert after_append.uidvalidity == before.uidvalidity

    other.add_flags("INBOX", uids[0], ("\\Flagged",))
    after_flag = store.statuses()["INBOX"]
    assert after_flag.messages == 4
    if backend.condstore:  # a flag change shows only in HIGHESTMODSEQ
        assert after_flag.highestmodseq > after_append.highestmodseq > before.highestmodseq
    store.select("INBOX")
    store.expunge([uids[1]])
    after_expunge = store.statuses()["INBOX"]
    assert after_expunge.messages == 3 and after_expunge.uidnext == after_flag.uidnext
    assert after_expunge == store.select("INBOX")

    store.create_folder("Brand new")  # the kept listing must not hide it
    assert "Brand new" in names(store)
    # the numbers of every folder as SELECT gives them (last: a selected folder's
    # STATUS may show the session's view of it, not another client's changes)
    for name, st in store.statuses().items():
        assert st == store.select(name)


def test_select_changes_on_unchanged_folder(backend: Backend) -> None:
    store = backend.store
    uids = [add(store, "INBOX", msg(i), frozenset({"\\Seen"})) for i in range(3)]
    st = store.select("INBOX")
    store.create_folder("Elsewhere")
    store.select("Elsewhere")  # select_changes also has to leave another folder
    ch = store.select_changes("INBOX", st.uidvalidity, st.highestmodseq, uids)
    assert ch.status == st
    if backend.condstore:
        assert not ch.full and ch.changed == {} and ch.vanished == frozenset()
    else:  # nothing to go by: the full listing, as list_messages gives it
        assert ch.full and ch.vanished == frozenset()
        assert plain(ch.changed) == plain(store.list_messages())
        assert all(m.size == len(msg(0)) for m in ch.changed.values())
    # the folder is selected read-write, as select() leaves it
    store.store_flags([uids[0]], frozenset({"\\Flagged"}), frozenset())
    assert "\\Flagged" in store.list_messages()[uids[0]].flags


def test_select_changes_reports_another_clients_changes(backend: Backend) -> None:
    store, other = backend.store, backend.other
    uids = [add(store, "INBOX", msg(i)) for i in range(4)]
    st = store.select("INBOX")
    store.select("INBOX")

    other.add_flags("INBOX", uids[0], ("\\Flagged",))
    other.expunge("INBOX", [uids[1]])
    new = other.append("INBOX", msg("new"), ("\\Seen",))

    ch = store.select_changes("INBOX", st.uidvalidity, st.highestmodseq, uids)
    assert (ch.status.uidvalidity, ch.status.messages) == (st.uidvalidity, 4)
    assert ch.status.uidnext > new
    assert ch.vanished == {uids[1]}
    assert visible(ch.changed[uids[0]].flags) == {"\\Flagged"}
    assert visible(ch.changed[new].flags) == {"\\Seen"}
    if backend.condstore:
        assert not ch.full
        assert set(ch.changed) == {uids[0], new}
        assert ch.status.highestmodseq > st.highestmodseq
    else:
        assert ch.full and set(ch.changed) == {uids[0], uids[2], uids[3], new}

    # without known UIDs only QRESYNC (and the full listing) can tell what vanished
    again = store.select_changes("INBOX", st.uidvalidity, st.highestmodseq)
    assert set(again.changed) == set(ch.changed)
    if backend.qresync:
        assert uids[1] in again.vanished  # and maybe UIDs this caller never knew
    else:
        assert again.vanished == frozenset()  # documented: nothing to subtract from

    # asking from the newest modseq on: nothing more
    if backend.condstore:
        latest = store.select_changes("INBOX", st.uidvalidity, ch.status.highestmodseq, uids)
        assert not latest.full and latest.changed == {}
        assert latest.vanished <= {uids[1]}


def test_select_changes_falls_back_to_full_listing(backend: Backend) -> None:
    store = backend.store
    uids = [add(store, "INBOX", msg(i)) for i in range(2)]
    st = store.select("INBOX")
    listing = plain(store.list_messages())
    # another UIDVALIDITY: the caller's UIDs mean nothing, nothing vanished "since"
    ch = store.select_changes("INBOX", st.uidvalidity + 1, st.highestmodseq, uids)
    assert ch.full and plain(ch.changed) == listing and ch.vanished == frozenset()
    assert ch.status.uidvalidity == st.uidvalidity
    # modseq 0: nothing known yet; vanished still follows from known UIDs
    ch = store.select_changes("INBOX", st.uidvalidity, 0, [*uids, 77777])
    assert ch.full and plain(ch.changed) == listing and ch.vanished == {77777}
    # a modseq above the server's: it lost state (a restored backup), trust nothing
    ch = store.select_changes("INBOX", st.uidvalidity, st.highestmodseq + 1000, uids)
    assert ch.full and plain(ch.changed) == listing
    with pytest.raises(ServerError):
        store.select_changes("Nope", st.uidvalidity, st.highestmodseq, uids)
    with pytest.raises(ServerError):  # a failed select leaves nothing selected
        store.list_messages()


def test_select_changes_after_uidvalidity_reset() -> None:
    """The fake can do what a server does after losing its UID database."""
    fake = FakeRemoteStore()
    uids = [fake.inject("INBOX", msg(i)) for i in range(3)]
    st = fake.select("INBOX")
    fake.set_uidvalidity("INBOX", st.uidvalidity + 5)
    ch = fake.select_changes("INBOX", st.uidvalidity, st.highestmodseq, uids)
    assert ch.full and ch.status.uidvalidity == st.uidvalidity + 5
    assert set(ch.changed) == {1, 2, 3} and ch.vanished == frozenset()


def test_operations_after_select_changes(backend: Backend) -> None:
    """After ENABLE QRESYNC expunges arrive as VANISHED, and select_changes selects
    by a raw command: every other operation must still work afterwards."""
    store, other = backend.store, backend.other
    uids = [add(store, "INBOX", msg(i)) for i in range(5)]
    st = store.select("INBOX")
    other.add_flags("INBOX", uids[4], ("\\Answered",))
    store.select_changes("INBOX", st.uidvalidity, st.highestmodseq, uids)
    store.expunge([uids[0]])
    other.expunge("INBOX", [uids[1]])  # announced to us while selected
    other.add_flags("INBOX", uids[2], ("\\Seen",))
    got = [uid for uid, _data, _flags, _date in store.fetch(uids)]
    assert got == uids[2:]
    assert set(store.list_messages()) == set(uids[2:])
    assert store.sizes(uids) == {u: len(msg(i)) for i, u in enumerate(uids) if i >= 2}
    store.store_flags([uids[3]], frozenset({"\\Flagged"}), frozenset())
    listed = store.list_messages()
    assert "\\Seen" in listed[uids[2]].flags and "\\Flagged" in listed[uids[3]].flags
    mine = add(store, "INBOX", msg("later"))
    assert mine in store.list_messages()
    assert store.identities([uids[0], mine]).keys() == {mine}


def test_store_flags_unconditional(backend: Backend) -> None:
    store = backend.store
    uids = [add(store, "INBOX", msg(i), frozenset({"\\Seen", "Junk"})) for i in range(4)]
    store.select("INBOX")
    chosen = [uids[0], uids[2], 99999]
    assert store.store_flags(chosen, frozenset({"\\Flagged"}), frozenset({"\\Seen"})) == set()
    assert store.store_flags([uids[1]], frozenset({"$Forwarded"}), frozenset()) == set()
    assert store.store_flags([uids[3]], frozenset(), frozenset({"Junk", "\\Recent"})) == set()
    assert store.store_flags([], frozenset({"\\Seen"}), frozenset()) == set()
    listed = {u: visible(m.flags) for u, m in store.list_messages().items()}
    assert listed == {
        uids[0]: {"\\Flagged", "Junk"},
        uids[1]: {"\\Seen", "Junk", "$Forwarded"},
        uids[2]: {"\\Flagged", "Junk"},
        uids[3]: {"\\Seen"},
    }
    with pytest.raises(ServerError, match="not a valid IMAP flag"):
        store.store_flags([uids[0]], frozenset({"bad flag"}), frozenset(), 5)


def test_store_flags_unchanged_since(backend: Backend) -> None:
    store, other = backend.store, backend.other
    uids = [add(store, "INBOX", msg(i), frozenset({"\\Seen"})) for i in range(4)]
    store.select("INBOX")
    store.store_flags([uids[1]], frozenset({"Junk"}), frozenset())  # a keyword we keep
    st = store.select("INBOX")
    other.add_flags("INBOX", uids[0], ("$Other",))  # after the modseq we saw
    add_, remove = frozenset({"\\Flagged", "$Mine"}), frozenset({"\\Seen"})
    modified = store.store_flags(uids[:3], add_, remove, st.highestmodseq)
    listed = {u: visible(m.flags) for u, m in store.list_messages().items()}
    # adding and removing at once neither refuses our own messages nor loses a flag
    assert listed[uids[1]] == {"\\Flagged", "$Mine", "Junk"}
    assert listed[uids[2]] == {"\\Flagged", "$Mine"}
    assert listed[uids[3]] == {"\\Seen"}
    if backend.condstore:
        assert modified == {uids[0]}
        assert listed[uids[0]] == {"\\Seen", "$Other"}  # as the other client left it
        # the caller re-reads, merges and stores again from the new modseq
        now = store.select("INBOX").highestmodseq
        assert store.store_flags([uids[0]], add_, remove, now) == set()
        assert visible(store.list_messages()[uids[0]].flags) == {"\\Flagged", "$Mine", "$Other"}
    else:  # nothing to compare against: plain stores
        assert modified == set()
        assert listed[uids[0]] == {"\\Flagged", "$Mine", "$Other"}


def test_fetch_to_file_in_chunks(backend: Backend) -> None:
    store = backend.store
    line = b"".join(bytes([65 + i % 26]) * 76 + b"\r\n" for i in range(26))
    data = msg("big", body=line * (5 * 1024 * 1024 // len(line)))  # about 5 MB
    small = msg("small", body=b"x" * 97 + b"\r\n")
    small += b"y" * (-len(small) % 4)  # a multiple of the chunk below
    big_uid = add(store, "INBOX", data)
    small_uid = add(store, "INBOX", small)
    store.select("INBOX")
    assert store.sizes([big_uid, small_uid, 99999]) == {big_uid: len(data), small_uid: len(small)}

    class Sink:
        def __init__(self) -> None:
            self.pieces: list[bytes] = []

        def write(self, piece: bytes) -> int:
            self.pieces.append(piece)
            return len(piece)

    sink = Sink()
    assert store.fetch_to_file(big_uid, len(data), sink, chunk=1024 * 1024)
    assert b"".join(sink.pieces) == data
    assert len(sink.pieces) == -(-len(data) // (1024 * 1024))
    assert all(len(p) <= 1024 * 1024 for p in sink.pieces)

    sink = Sink()  # a size that is a multiple of the chunk: no empty piece at the end
    assert store.fetch_to_file(small_uid, len(small), sink, chunk=len(small) // 4)
    assert sink.pieces and b"".join(sink.pieces) == small and all(sink.pieces)

    sink = Sink()
    assert not store.fetch_to_file(99999, 100, sink)
    assert sink.pieces == []
    # fetch() still yields big messages whole, when the caller sends them there
    ((uid, got, _flags, _date),) = list(store.fetch([big_uid]))
    assert (uid, got) == (big_uid, data)


# -- ImapStore only ---------------------------------------------------------------------


def test_fast_paths_cost_few_commands(imap_backend: Backend) -> None:
    """What the fast paths are for: a fixed, small number of commands whatever the
    account's size, with the fallbacks where the server lacks the extension."""
    store = imap_backend.store
    assert isinstance(store, ImapStore)
    for name in ("A", "B", "C/D"):
        store.create_folder(name)
    uids = [add(store, "INBOX", msg(i)) for i in range(3)]
    sent: list[str] = []
    imap = store._client._imap
    real = imap._command

    def spy(name: str, *args: Any) -> Any:
        conditional = any(str(a).startswith("(UNCHANGEDSINCE") for a in args)
        sent.append(f"UID {args[0]}" + (" UNCHANGEDSINCE" * conditional) if name == "UID" else name)
        return real(name, *args)

    imap._command = spy
    numbers = store.statuses()
    folders = store.list_folders()
    assert {f.name for f in folders if f.selectable} == set(numbers) == {"INBOX", "A", "B", "C/D"}
    if "LIST-STATUS" in store.capabilities:
        assert sent == ["LIST"]  # and list_folders() reused its listing
    else:
        assert sent == ["LIST"] + ["STATUS"] * 4

    sent.clear()
    st = numbers["INBOX"]
    ch = store.select_changes("INBOX", st.uidvalidity, st.highestmodseq, uids)
    if imap_backend.qresync:
        assert sent == ["SELECT"] and not ch.full
    elif imap_backend.condstore:
        assert sent == ["SELECT", "UID FETCH", "UID SEARCH"] and not ch.full
    else:
        assert sent == ["SELECT", "UID FETCH"] and ch.full

    sent.clear()
    store.store_flags(uids, frozenset({"\\Seen"}), frozenset({"\\Flagged"}), st.highestmodseq)
    if imap_backend.condstore:  # each message stored once, with its whole new list
        assert sent == ["UID FETCH", "UID STORE UNCHANGEDSINCE"]
    else:
        assert sent == ["UID STORE"] * 2


@pytest.mark.dovecot
def test_limited_fixture_really_advertises_the_limited_set(basic_account: Account) -> None:
    raw = basic_account.client()
    caps = set(raw.capabilities())
    raw.logout()
    assert caps == {b"IMAP4REV1", b"LITERAL+", b"SASL-IR", b"LOGIN-REFERRALS", b"IDLE"}
    store = ImapStore.connect(remote_config(basic_account), basic_account.password)
    try:
        assert store.capabilities == {"IMAP4REV1", "LITERAL+", "SASL-IR", "LOGIN-REFERRALS", "IDLE"}
    finally:
        store.close()


@pytest.mark.dovecot
def test_wrong_password(account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    # Dovecot delays every later login from an IP that failed one (anvil's auth
    # penalty, 2 s and up). Failing from 127.0.0.2 keeps that off the other tests.
    real = socket.create_connection

    def from_other_ip(address: Any, timeout: Any = None, *args: Any, **kw: Any) -> Any:
        return real(address, timeout, source_address=("127.0.0.2", 0))

    monkeypatch.setattr(socket, "create_connection", from_other_ip)
    with pytest.raises(AuthenticationFailed) as err:
        ImapStore.connect(remote_config(account), "wrong")
    address = f"{account.host}:{account.port}"
    assert str(err.value) == (
        f"login refused for {account.user} at {address}; check username and password"
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_closed_port_fails_quickly() -> None:
    port = _closed_port()
    remote = RemoteConfig(host="127.0.0.1", username="u", port=port, tls="none", timeout=5)
    start = time.monotonic()
    with pytest.raises(ConnectionFailed) as err:
        ImapStore.connect(remote, "pw")
    assert time.monotonic() - start < 2
    assert f"127.0.0.1:{port}" in str(err.value) and "refused" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_host() -> None:
    remote = RemoteConfig(host="no-such-host.invalid", username="u", port=143, tls="none")
    with pytest.raises(ConnectionFailed, match=r"cannot resolve host no-such-host\.invalid"):
        ImapStore.connect(remote, "pw")


@pytest.mark.dovecot
def test_imaps_with_ca_file(account: Account) -> None:
    server = account.server
    remote = remote_config(account, tls="imaps", port=server.imaps_port, ca_file=server.cert)
    store = ImapStore.connect(remote, account.password)
    try:
        assert isinstance(store._client.socket(), ssl.SSLSocket)
        assert "INBOX" in names(store)
    finally:
        store.close()


@pytest.mark.dovecot
def test_imaps_without_ca_file_is_refused(account: Account) -> None:
    remote = remote_config(account, tls="imaps", port=account.server.imaps_port)
    with pytest.raises(ConnectionFailed) as err:
        ImapStore.connect(remote, account.password)
    assert not isinstance(err.value, AuthenticationFailed)
    assert "certificate" in str(err.value) and "ca_file" in str(err.value)
    assert f"{account.host}:{account.server.imaps_port}" in str(err.value)


@pytest.mark.dovecot
def test_starttls(account: Account) -> None:
    remote = remote_config(account, tls="starttls", ca_file=account.server.cert)
    store = ImapStore.connect(remote, account.password)
    try:
        assert isinstance(store._client.socket(), ssl.SSLSocket)
        assert "UIDPLUS" in store.capabilities  # the post-TLS, post-login list
        store.select("INBOX")
        assert store.list_messages() == {}
    finally:
        store.close()


@pytest.mark.dovecot
def test_starttls_without_ca_file_is_refused(account: Account) -> None:
    remote = remote_config(account, tls="starttls")
    with pytest.raises(ConnectionFailed, match="certificate"):
        ImapStore.connect(remote, account.password)


@pytest.mark.dovecot
def test_tls_setting_mismatches(account: Account) -> None:
    server = account.server
    # implicit TLS against the plain port: the handshake meets "* OK"
    remote = remote_config(account, tls="imaps", ca_file=server.cert)
    with pytest.raises(ConnectionFailed, match="TLS handshake"):
        ImapStore.connect(remote, account.password)
    # plain text against the imaps port: no greeting ever comes
    remote = remote_config(account, tls="none", port=server.imaps_port, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(ConnectionFailed, match="no answer"):
        ImapStore.connect(remote, account.password)
    assert time.monotonic() - start < 3


def test_missing_ca_file(tmp_path: Any) -> None:
    remote = RemoteConfig(
        host="127.0.0.1", username="u", port=1, tls="imaps", ca_file=tmp_path / "nope.pem"
    )
    with pytest.raises(ConnectionFailed, match="ca_file"):
        ImapStore.connect(remote, "pw")


@pytest.mark.dovecot
def test_dropped_connection_is_connection_failed(account: Account) -> None:
    store = ImapStore.connect(remote_config(account), account.password)
    store.select("INBOX")
    store._client.socket().shutdown(socket.SHUT_RDWR)
    with pytest.raises(ConnectionFailed) as err:
        store.list_messages()
    assert f"{account.host}:{account.port}" in str(err.value)
    assert "list messages 'INBOX'" in str(err.value)
    store.close()  # never raises
    store.close()


@pytest.mark.dovecot
def test_server_errors_name_operation_and_folder(account: Account) -> None:
    store = ImapStore.connect(remote_config(account), account.password)
    try:
        with pytest.raises(ServerError) as err:
            store.select("Missing/Folder")
        text = str(err.value)
        assert "select 'Missing/Folder' failed on" in text
        assert f"{account.host}:{account.port}" in text
        assert "\n" not in text and "secs)" not in text
        with pytest.raises(ServerError, match="not a valid IMAP flag"):
            store.select("INBOX")
            store.store_flags([1], frozenset({"bad flag"}), frozenset())
    finally:
        store.close()


# -- the fake's own helpers -----------------------------------------------------------


def test_fake_uidvalidity_reset_and_failures() -> None:
    fake = FakeRemoteStore()
    a = fake.inject("INBOX", msg(1))
    b = fake.inject("INBOX", msg(2))
    fake.expunge_external("INBOX", [a])
    fake.set_uidvalidity("INBOX", 7)
    st = fake.select("INBOX")
    assert st.uidvalidity == 7 and st.uidnext == 2
    assert fake.list_messages().keys() == {1}
    assert b == 2
    fake.fail("list_messages")
    with pytest.raises(ConnectionFailed):
        fake.list_messages()
    assert fake.list_messages().keys() == {1}
    fake.create_folder("X")
    uv = fake.statuses()["X"].uidvalidity
    fake.delete_folder("X")
    fake.create_folder("X")
    assert fake.statuses()["X"].uidvalidity != uv
    fake.close()
    with pytest.raises(ConnectionFailed):
        fake.statuses()


# -- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canonical", "delimiter", "server"),
    [
        ("INBOX", "/", "INBOX"),
        ("inbox", ".", "INBOX"),
        ("A/B/C", ".", "A.B.C"),
        ("A/B", "/", "A/B"),
        ("INBOX/Sub", ".", "INBOX.Sub"),
        ("Entwürfe/Ünïcödé", ".", "Entwürfe.Ünïcödé"),
        ("flat", None, "flat"),
    ],
)
def test_folder_name_mapping(canonical: str, delimiter: str | None, server: str) -> None:
    assert canonical_to_server(canonical, delimiter) == server
    assert server_to_canonical(server, delimiter) == canonical_to_server(canonical, "/")


@pytest.mark.parametrize(
    ("canonical", "delimiter", "prefix", "server"),
    [
        ("Work", ".", "INBOX.", "INBOX.Work"),  # Courier's personal namespace
        ("Work/Sub", ".", "INBOX.", "INBOX.Work.Sub"),
        ("INBOX", ".", "INBOX.", "INBOX"),  # INBOX stays INBOX
        ("inbox", ".", "INBOX.", "INBOX"),
        ("INBOX/Sub", ".", "INBOX.", "INBOX.INBOX.Sub"),
        ("a.b", "/", "", "a.b"),
        ("Work", "/", "Mail/", "Mail/Work"),
    ],
)
def test_folder_name_mapping_with_prefix(
    canonical: str, delimiter: str, prefix: str, server: str
) -> None:
    assert canonical_to_server(canonical, delimiter, prefix) == server
    assert server_to_canonical(server, delimiter, prefix) == canonical_folder(canonical)


@pytest.mark.parametrize(
    ("canonical", "delimiter", "prefix"),
    [
        ("a.b/c", ".", ""),
        ("Release.1", ".", ""),  # a top-level name holding the separator, too
        ("Release.1", ".", "INBOX."),
        ("A/B", None, ""),
        ("a//b", "/", ""),
        ("/a", ".", ""),
        ("a/", "/", ""),
    ],
)
def test_unrepresentable_canonical_names(
    canonical: str, delimiter: str | None, prefix: str
) -> None:
    with pytest.raises(FolderNameError, match="local_only"):
        canonical_to_server(canonical, delimiter, prefix)


@pytest.mark.parametrize(
    ("server", "delimiter", "prefix"),
    [
        ("a/b.c", ".", ""),
        ("a..b", ".", ""),
        ("x/y", None, ""),
        ("a.", ".", ""),
        ("Shared.x", ".", "INBOX."),  # outside the personal namespace
        ("INBOX.", ".", "INBOX."),  # the namespace itself
        ("INBOX.INBOX", ".", "INBOX."),  # would be INBOX, which is INBOX
        ("INBOX.inbox.x", ".", "INBOX."),  # would be INBOX/x, spelled INBOX.INBOX.x
    ],
)
def test_server_names_without_canonical_form(
    server: str, delimiter: str | None, prefix: str
) -> None:
    assert server_to_canonical(server, delimiter, prefix) is None


def test_inbox_children_in_any_case() -> None:
    """RFC 3501 5.1: a server may list "inbox.Sub" for what is "INBOX.Sub"."""
    assert server_to_canonical("inbox.Sub", ".") == "INBOX/Sub"


def test_list_folders_skips_unrepresentable_names(caplog: pytest.LogCaptureFixture) -> None:
    class Client:
        def list_folders(self) -> list[tuple[tuple[bytes, ...], bytes, str]]:
            return [
                ((b"\\HasNoChildren",), b".", "INBOX"),
                ((b"\\HasNoChildren",), b".", "INBOX.a/b"),
                ((b"\\Noselect",), b".", "Lists"),
                ((b"\\HasNoChildren",), b".", "Lists.Python"),
            ]

    store = ImapStore(Client(), "mail.example:993", frozenset(), 10)
    with caplog.at_level(logging.WARNING):
        got = store.list_folders()
    assert [f.name for f in got] == ["INBOX", "Lists", "Lists/Python"]
    assert got[1].attributes == {"\\Noselect"} and not got[1].selectable
    assert "INBOX.a/b" in caplog.text


def test_move_keeps_flags_and_date_and_tells_the_new_uid(move_backend: Backend) -> None:
    store = move_backend.store
    store.create_folder("Archive")
    date = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    uids = [
        add(store, "INBOX", msg(f"mv{i}"), frozenset({"\\Seen", "\\Flagged"}), date)
        for i in range(3)
    ]
    store.select("INBOX")
    moved = store.move([uids[0], uids[2]], "Archive")
    assert set(store.list_messages()) == {uids[1]}
    store.select("Archive")
    there = store.list_messages()
    assert len(there) == 2
    # From COPYUID (of the MOVE's untagged OK or the COPY's tagged OK), or (without
    # UIDPLUS) found by Message-ID and size; each old UID paired with its own message.
    assert set(moved) == {uids[0], uids[2]} and set(moved.values()) == set(there)
    got = {uid: (data, flags, when) for uid, data, flags, when in store.fetch(sorted(there))}
    for i in (0, 2):
        data, flags, when = got[moved[uids[i]]]
        assert {"\\Seen", "\\Flagged"} <= set(flags)
        assert when == date
        assert content.message_id(data) == f"<mv{i}@mirrorsync.test>"
    assert store.move([], "Archive") == {}


# -- server space: search, quota, folder sizes ------------------------------------------


def _space_fixture(store: RemoteStore) -> dict[str, int]:
    """Messages of every kind an archive rule tells apart, by name -> UID."""
    old = datetime(2020, 1, 15, 12, 0, tzinfo=timezone.utc)
    new = datetime(2030, 1, 15, 12, 0, tzinfo=timezone.utc)
    big = b"x" * 5000 + b"\r\n"
    seen, flagged = frozenset({"\\Seen"}), frozenset({"\\Seen", "\\Flagged"})
    plan = {
        "old": (msg("old"), seen, old),
        "old_big": (msg("old_big", body=big), seen, old),
        "old_flagged": (msg("old_flagged"), flagged, old),
        "old_unread": (msg("old_unread"), frozenset(), old),
        "old_deleted": (msg("old_deleted"), frozenset({"\\Seen", "\\Deleted"}), old),
        "new_big": (msg("new_big", body=big), seen, new),
        "new_fwd": (msg("new_fwd"), frozenset({"$Forwarded"}), new),
    }
    return {name: add(store, "INBOX", d, f, when) for name, (d, f, when) in plan.items()}


SEARCHES: list[tuple[list[str], set[str]]] = [
    (["ALL"], {"old", "old_big", "old_flagged", "old_unread", "old_deleted", "new_big", "new_fwd"}),
    (["BEFORE", "1-Jan-2021"], {"old", "old_big", "old_flagged", "old_unread", "old_deleted"}),
    (["BEFORE", "15-Jan-2020"], set()),  # the date only: not before its own day
    (["BEFORE", "16-Jan-2020", "SEEN", "UNFLAGGED", "NOT", "DELETED"], {"old", "old_big"}),
    (["LARGER", "4000"], {"old_big", "new_big"}),
    (["LARGER", "4000", "BEFORE", "1-Jan-2021"], {"old_big"}),
    (["UNSEEN"], {"new_fwd", "old_unread"}),
    (["KEYWORD", "$Forwarded"], {"new_fwd"}),
    (["DELETED"], {"old_deleted"}),
]


@pytest.mark.parametrize(("criteria", "expected"), SEARCHES, ids=[" ".join(c) for c, _ in SEARCHES])
def test_search(backend: Backend, criteria: list[str], expected: set[str]) -> None:
    store = backend.store
    uids = _space_fixture(store)
    store.select("INBOX")
    got = store.search(criteria)
    assert got == sorted(uids[n] for n in expected)


def test_search_by_uid_set_and_in_windows(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ImapStore searches in UID windows (so no answer line outgrows imaplib's
    limit); with tiny windows every window and the open-ended last one are used."""
    monkeypatch.setattr("mirrorsync.imap.selection.SEARCH_WINDOW", 3)
    store = backend.store
    uids = [
        add(store, "INBOX", msg(i), frozenset({"\\Seen"} if i % 2 else set())) for i in range(8)
    ]
    store.select("INBOX")
    late = backend.other.append("INBOX", msg("late"), ("\\Seen",))  # after the SELECT
    assert store.search(["SEEN"]) == [*uids[1::2], late]
    assert store.search(["UID", f"{uids[0]}:{uids[3]}", "UNSEEN"]) == [uids[0], uids[2]]
    assert store.search(["UID", "99999"]) == []


def test_search_errors(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(ServerError):
        store.search(["ALL"])  # nothing selected
    store.select("INBOX")
    with pytest.raises(ServerError):
        store.search(["NOSUCHKEY"])
    with pytest.raises(ServerError):
        store.search(["BEFORE 1-Jan-2020"])  # one key per item
    assert store.search(["ALL"]) == []  # the store stays usable


def test_folder_sizes_count_messages_and_rfc822_sizes(backend: Backend) -> None:
    store = backend.store
    store.create_folder("Big/Sub")
    store.create_folder("Empty")
    add(store, "INBOX", msg(1))
    for i in range(3):
        add(store, "Big/Sub", msg(f"b{i}", body=b"z" * (1000 * (i + 1)) + b"\r\n"))
    got = store.folder_sizes()
    assert "Big" not in got  # implied parent, not selectable
    for name in ("INBOX", "Big/Sub", "Empty"):
        store.select(name)
        sizes = store.sizes(list(store.list_messages()))
        assert got[name] == (len(sizes), sum(sizes.values())), name
    assert got["Big/Sub"][0] == 3 and got["Empty"] == (0, 0)
    store.select("INBOX")  # usable after
    assert len(store.list_messages()) == 1


def test_quota_is_empty_without_the_extension(backend: Backend) -> None:
    assert "QUOTA" not in backend.store.capabilities
    assert backend.store.quota() == []


@pytest.fixture(params=[pytest.param("dovecot_quota", marks=_dovecot), "fake_quota"])
def quota_backend(request: pytest.FixtureRequest) -> Iterator[RemoteStore]:
    """A store on a server with QUOTA: Dovecot's quota plugin, or the fake with it."""
    if request.param == "fake_quota":
        yield FakeRemoteStore(QUOTA_CAPABILITIES)
        return
    account = request.getfixturevalue("quota_account")
    store = ImapStore.connect(remote_config(account), account.password)
    try:
        yield store
    finally:
        store.close()


def test_quota_reports_storage_use_and_limit(quota_backend: RemoteStore) -> None:
    store = quota_backend
    assert "QUOTA" in store.capabilities
    (before,) = [q for q in store.quota() if q.name == "STORAGE"]
    assert before.limit == 1024 * 1024  # 1 GiB, in KiB
    assert before.limit_bytes == 1024**3
    add(store, "INBOX", msg("q", body=b"q" * 200_000 + b"\r\n"))
    (after,) = [q for q in store.quota() if q.name == "STORAGE"]
    assert after.usage - before.usage >= 195  # KiB
    assert after.usage_bytes == after.usage * 1024
    assert after.root == before.root
