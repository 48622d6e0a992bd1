"""An in-memory `RemoteStore` for fast engine tests.

It passes the same contract suite as `ImapStore` against Dovecot, so engine tests that
use it mean something. It behaves like Dovecot where servers differ: implied parents
are listed as ``\\Noselect``, creating an existing folder is a no-op, a re-created
folder gets a new UIDVALIDITY, unknown UIDs in STORE/EXPUNGE are ignored. Without
"UIDPLUS" in `capabilities` it expunges the way `ImapStore`'s fallback does.

The fast paths follow the capabilities as `ImapStore`'s do: every change gives the
message the folder's next modseq and every expunge is remembered with its modseq, so
`select_changes` answers as a QRESYNC server (VANISHED from that history), as a
CONDSTORE-only one (vanished = known UIDs no longer there) or with the full listing;
`store_flags` honours UNCHANGEDSINCE only with CONDSTORE. HIGHESTMODSEQ reads 0
without CONDSTORE, as a server without it has none. With "MULTIAPPEND" `append_many`
stores each command's messages (bounded as `ImapStore` bounds them) all or none;
without it, it is `append` per message. `append_commands` counts the APPEND commands a
server would have seen. APPEND refuses what Dovecot refuses: an empty message and a
keyword longer than 50 characters.

The `inject`, `set_flags`, `expunge_external`, `set_uidvalidity` and `fail` helpers let
a test act as another client, or as a failing network, between the engine's calls.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from mirrorsync.content import message_id
from mirrorsync.errors import (
    ConnectionFailed,
    FolderNameError,
    MirrorsyncError,
    ServerError,
)
from mirrorsync.model import (
    SEP,
    Flags,
    FolderChanges,
    FolderStatus,
    QuotaResource,
    RemoteFolder,
    RemoteIdentity,
    RemoteMessage,
    canonical_folder,
)
from mirrorsync.remote import FETCH_CHUNK, ByteSink, append_each, append_refused, batches

FULL_CAPABILITIES = frozenset(
    {
        "IMAP4REV1",
        "ENABLE",
        "UIDPLUS",
        "CONDSTORE",
        "QRESYNC",
        "MOVE",
        "MULTIAPPEND",
        "UNSELECT",
        "LITERAL+",
        "LIST-STATUS",
        "ESEARCH",
        "STATUS=SIZE",
    }
)
# a Dovecot with the quota plugin: FULL_CAPABILITIES and QUOTA
QUOTA_CAPABILITIES = FULL_CAPABILITIES | {"QUOTA"}
# what Gmail offers of the fast paths: CONDSTORE but no QRESYNC
CONDSTORE_CAPABILITIES = FULL_CAPABILITIES - {"QRESYNC"}
BASIC_CAPABILITIES = frozenset({"IMAP4REV1", "LITERAL+", "SASL-IR", "LOGIN-REFERRALS", "IDLE"})
# what Courier offers: UIDPLUS (so COPYUID) but no MOVE, CONDSTORE or QRESYNC
UIDPLUS_CAPABILITIES = frozenset(
    {
        "IMAP4REV1",
        "LITERAL+",
        "ID",
        "ENABLE",
        "IDLE",
        "NAMESPACE",
        "CHILDREN",
        "UNSELECT",
        "UIDPLUS",
    }
)

_SYSTEM_FLAGS = {
    f.lower(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
}
_FLAG_RE = re.compile(r'^\\?[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+$')
_MAX_KEYWORD = 50  # Dovecot's mail_max_keyword_length
_uidvalidities = itertools.count(1_000_000)


def _canon_flag(flag: str) -> str:
    return _SYSTEM_FLAGS.get(flag.lower(), flag)


@dataclass
class FakeMessage:
    data: bytes
    flags: set[str]
    internaldate: datetime
    modseq: int


@dataclass
class FakeFolder:
    uidvalidity: int
    uidnext: int = 1
    highestmodseq: int = 1
    messages: dict[int, FakeMessage] = field(default_factory=dict)
    # UID -> the modseq of its expunge: what a QRESYNC server's VANISHED is made of
    expunged: dict[int, int] = field(default_factory=dict)

    def expunge(self, uid: int) -> None:
        if self.messages.pop(uid, None) is not None:
            self.expunged[uid] = self.bump()

    def bump(self) -> int:
        self.highestmodseq += 1
        return self.highestmodseq


class FakeRemoteStore:
    # one MULTIAPPEND command's bounds, as ImapStore's
    append_batch_count = 50
    append_batch_bytes = 8 * 1024 * 1024

    def __init__(
        self,
        capabilities: Iterable[str] = FULL_CAPABILITIES,
        appenduid: bool = True,
        quota_limit: int = 1024 * 1024,
        munge8bit: bool = False,
    ) -> None:
        """`appenduid=False` makes `append` and `append_many` return None, as
        `ImapStore` does when it cannot tell the new UID, so the engine's handling of
        that can be tested.
        `quota_limit` is the STORAGE limit in KiB (with "QUOTA" in `capabilities`).
        `munge8bit` stores every raw 8-bit byte of a message's header as "X", as
        Cyrus does by default: the stored message differs from the one sent, with
        the same size."""
        self._capabilities = frozenset(c.upper() for c in capabilities)
        self.appenduid = appenduid
        self.munge8bit = munge8bit
        self.quota_limit = quota_limit
        self.folders: dict[str, FakeFolder] = {"INBOX": FakeFolder(next(_uidvalidities))}
        self.selected: str | None = None
        self.closed = False
        # folders whose STATUS the fake refuses, as a server with [SERVERBUG] would
        self.refuse_status: set[str] = set()
        # canonical name -> special-use attribute ("\\Junk"), for special_use()
        self.special: dict[str, str] = {}
        self.calls: list[str] = []  # protocol method names, in call order
        self.append_commands = 0
        self._failures: dict[str, list[MirrorsyncError]] = {}

    # -- helpers for tests: another client, a failing network ------------------------

    def inject(
        self,
        folder: str,
        data: bytes,
        flags: Iterable[str] = (),
        date: datetime | None = None,
        create: bool = False,
    ) -> int:
        """Deliver a message as another client or the MTA would; returns its UID."""
        name = canonical_folder(folder)
        if create and name not in self.folders:
            self.folders[name] = FakeFolder(next(_uidvalidities))
        return self._add(self._folder(name, "inject into"), data, flags, date)

    def set_flags(self, folder: str, uid: int, flags: Iterable[str]) -> None:
        """Replace a message's flags as another client would."""
        f = self._folder(canonical_folder(folder), "set flags in")
        msg = f.messages[uid]
        msg.flags = {_canon_flag(x) for x in flags}
        msg.modseq = f.bump()

    def expunge_external(self, folder: str, uids: Iterable[int]) -> None:
        f = self._folder(canonical_folder(folder), "expunge in")
        for uid in uids:
            f.expunge(uid)

    def set_uidvalidity(self, folder: str, uidvalidity: int, renumber: bool = True) -> None:
        """What a server does after losing its UID database: a new UIDVALIDITY and,
        with `renumber`, the same messages under new UIDs counted from 1."""
        f = self._folder(canonical_folder(folder), "reset")
        f.uidvalidity = uidvalidity
        if renumber:
            msgs = [f.messages[u] for u in sorted(f.messages)]
            f.messages = {i: m for i, m in enumerate(msgs, start=1)}
            f.uidnext = len(msgs) + 1
        f.expunged.clear()  # history of the old UIDs: meaningless now
        f.bump()

    def message(self, folder: str, uid: int) -> FakeMessage:
        return self._folder(canonical_folder(folder), "read").messages[uid]

    def fail(self, method: str, error: MirrorsyncError | None = None, times: int = 1) -> None:
        """Make the next `times` calls of `method` raise `error` (a dropped connection
        by default) before doing anything."""
        err = error or ConnectionFailed("fake connection dropped (injected)")
        self._failures.setdefault(method, []).extend([err] * times)

    def oracle_reader(self) -> FakeRemoteStore:
        """A second connection to the same data, for the plan oracle (mirrorsync.sync.oracle):
        its reads leave this store's selection, call log and injected failures alone."""
        twin = copy.copy(self)
        twin.selected = None
        twin.closed = False
        twin.calls = []
        twin._failures = {}
        return twin

    # -- the protocol ---------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        return self._capabilities

    def list_folders(self) -> list[RemoteFolder]:
        self._enter("list_folders")
        names = set(self.folders)
        parents = {SEP.join(n.split(SEP)[:i]) for n in names for i in range(1, n.count(SEP) + 1)}
        out = []
        for name in sorted(names | parents):
            has_children = any(n.startswith(name + SEP) for n in names | parents)
            attrs = {"\\HasChildren" if has_children else "\\HasNoChildren"}
            if name not in names:
                attrs.add("\\Noselect")
            out.append(RemoteFolder(name, frozenset(attrs)))
        return out

    def personal_prefix(self) -> str:
        return ""  # the fake has one namespace, without a prefix

    def use_namespace_prefix(self, prefix: str) -> None:
        if prefix:
            raise NotImplementedError("the fake has no namespace prefix")

    def delimiter(self) -> str | None:
        return SEP

    def unrepresentable(self, name: str) -> str | None:
        return None  # the fake's separator is "/", which no canonical component holds

    def create_folder(self, name: str) -> None:
        self._enter("create_folder")
        name = _checked(name)
        if name not in self.folders:
            self.folders[name] = FakeFolder(next(_uidvalidities))

    def delete_folder(self, name: str) -> None:
        self._enter("delete_folder")
        name = canonical_folder(name)
        if name == "INBOX":
            raise ServerError("delete folder 'INBOX' failed: INBOX can't be deleted")
        self._folder(name, "delete folder")
        if self.selected == name:
            self.selected = None
        del self.folders[name]

    def select(self, name: str) -> FolderStatus:
        self._enter("select")
        self.selected = None
        name = canonical_folder(name)
        result = self._status(self._folder(name, "select"))
        self.selected = name
        return result

    def list_messages(self) -> dict[int, RemoteMessage]:
        self._enter("list_messages")
        return _listing(self._current("list messages"))

    def identities(self, uids: Sequence[int]) -> dict[int, RemoteIdentity]:
        self._enter("identities")
        f = self._current("read message identities")
        return {
            uid: RemoteIdentity(uid, len(f.messages[uid].data), message_id(f.messages[uid].data))
            for uid in set(uids)
            if uid in f.messages
        }

    def fetch(self, uids: Sequence[int]) -> Iterator[tuple[int, bytes, Flags, datetime | None]]:
        self._enter("fetch")
        name = self.selected
        f = self._current("fetch")
        for uid in sorted(set(uids)):
            if self.selected != name:
                raise ServerError("fetch was interrupted by selecting another folder")
            msg = f.messages.get(uid)
            if msg is not None:  # looked up lazily: vanishing mid-iteration is skipped too
                yield uid, msg.data, frozenset(msg.flags), msg.internaldate

    def append(
        self, name: str, data: bytes, flags: Flags, date: datetime | None = None
    ) -> int | None:
        self._enter("append")
        _check_flags(flags)  # ImapStore checks names before sending
        self.append_commands += 1
        f = self._folder(canonical_folder(name), "append to")
        _check_append(name, data, flags)
        uid = self._add(f, data, flags, date)
        return uid if self.appenduid else None

    def append_many(
        self, name: str, items: Sequence[tuple[bytes, Flags, datetime | None]]
    ) -> list[int | None]:
        self._enter("append_many")
        out: list[int | None] = []
        if not items:
            return out
        if "MULTIAPPEND" not in self._capabilities:
            return append_each(self.append, name, items)
        for _data, flags, _date in items:  # ImapStore checks names before sending
            _check_flags(flags)
        sizes = {i: len(data) for i, (data, _flags, _date) in enumerate(items)}
        cut = batches(list(sizes), sizes, self.append_batch_count, self.append_batch_bytes)
        for batch in ([items[i] for i in indexes] for indexes in cut):
            self.append_commands += 1
            try:
                f = self._folder(canonical_folder(name), "append to")
                for data, flags, _date in batch:  # all or nothing, as RFC 3502 says
                    _check_append(name, data, flags)
            except ServerError as exc:
                raise append_refused(exc, out, len(batch)) from exc
            for data, flags, when in batch:
                uid = self._add(f, data, flags, when)
                out.append(uid if self.appenduid else None)
        return out

    def move(self, uids: Sequence[int], name: str) -> dict[int, int]:
        self._enter("move")
        src = self._current("move messages from")
        dst = self._folder(canonical_folder(name), "move messages to")
        found: dict[int, int] = {}
        for uid in sorted(set(uids)):
            m = src.messages.get(uid)
            if m is None:
                continue
            found[uid] = self._add(dst, m.data, set(m.flags), m.internaldate)
            src.expunge(uid)
        return found  # with UIDPLUS from COPYUID; without, ImapStore finds them too

    def expunge(self, uids: Iterable[int]) -> None:
        self._enter("expunge")
        wanted = set(uids)
        if not wanted:
            return
        self._store(wanted, frozenset({"\\Deleted"}), add=True)
        f = self._current("expunge")
        if "UIDPLUS" not in self._capabilities:
            deleted = {u for u, m in f.messages.items() if "\\Deleted" in m.flags}
            if deleted - wanted:
                return  # as ImapStore: a bare EXPUNGE would take others' messages too
        for uid in wanted:
            f.expunge(uid)

    # -- the fast paths -------------------------------------------------------------

    def statuses(self) -> dict[str, FolderStatus]:
        self._enter("statuses")
        return {
            name: self._status(f)
            for name, f in sorted(self.folders.items())
            if name not in self.refuse_status
        }

    def status_failures(self) -> dict[str, str]:
        """As ImapStore: the folders whose STATUS `refuse_status` makes fail."""
        return {
            name: f"status {name!r} failed: [SERVERBUG] refused by the test"
            for name in sorted(self.refuse_status & set(self.folders))
        }

    def special_use(self) -> dict[str, str]:
        """As ImapStore; `special` names the fake's special-use folders."""
        return {n: a for n, a in self.special.items() if n in self.folders}

    def select_changes(
        self,
        name: str,
        uidvalidity: int,
        modseq: int,
        known_uids: Sequence[int] | None = None,
    ) -> FolderChanges:
        self._enter("select_changes")
        self.selected = None
        name = canonical_folder(name)
        f = self._folder(name, "select")
        status = self._status(f)
        self.selected = name
        known = None if known_uids is None else set(known_uids)
        same = f.uidvalidity == uidvalidity
        if "CONDSTORE" in self._capabilities and same and 0 < modseq <= f.highestmodseq:
            changed = {
                uid: RemoteMessage(uid, frozenset(m.flags))
                for uid, m in sorted(f.messages.items())
                if m.modseq > modseq
            }
            if "QRESYNC" in self._capabilities:
                vanished = {uid for uid, when in f.expunged.items() if when > modseq}
                if known is not None:
                    vanished &= known
            else:
                vanished = known - f.messages.keys() if known is not None else set()
            return FolderChanges(status, changed, frozenset(vanished), full=False)
        listing = _listing(f)
        vanished = known - listing.keys() if known is not None and same else set()
        return FolderChanges(status, listing, frozenset(vanished), full=True)

    def store_flags(
        self, uids: Iterable[int], add: Flags, remove: Flags, unchanged_since: int = 0
    ) -> set[int]:
        self._enter("store_flags")
        wanted = set(uids)
        if not wanted:
            return set()
        f = self._current("store flags")
        _check_flags(add)
        _check_flags(remove)
        modified: set[int] = set()
        if unchanged_since > 0 and "CONDSTORE" in self._capabilities:
            modified = {
                u for u in wanted if u in f.messages and f.messages[u].modseq > unchanged_since
            }
        self._store(wanted - modified, add, add=True)
        self._store(wanted - modified, remove, add=False)
        return modified

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        self._enter("sizes")
        f = self._current("read message sizes")
        return {uid: len(f.messages[uid].data) for uid in set(uids) if uid in f.messages}

    def fetch_to_file(self, uid: int, size: int, out: ByteSink, chunk: int = FETCH_CHUNK) -> bool:
        self._enter("fetch_to_file")
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        msg = self._current("fetch").messages.get(uid)
        if msg is None:
            return False
        for offset in range(0, len(msg.data), chunk):
            out.write(msg.data[offset : offset + chunk])
        return True

    # -- server space -----------------------------------------------------------------

    def search(self, criteria: Sequence[str]) -> list[int]:
        self._enter("search")
        f = self._current("search")
        test = _search_test(list(criteria))
        return sorted(uid for uid, m in f.messages.items() if test(uid, m))

    def quota(self) -> list[QuotaResource]:
        """As Dovecot's "User quota" root: STORAGE in KiB, rounded up."""
        self._enter("quota")
        if "QUOTA" not in self._capabilities:
            return []
        used = sum(len(m.data) for f in self.folders.values() for m in f.messages.values())
        return [QuotaResource("User quota", "STORAGE", math.ceil(used / 1024), self.quota_limit)]

    def folder_sizes(self) -> dict[str, tuple[int, int]]:
        self._enter("folder_sizes")
        self.selected = None  # as ImapStore without STATUS=SIZE: select again after
        return {
            name: (len(f.messages), sum(len(m.data) for m in f.messages.values()))
            for name, f in sorted(self.folders.items())
        }

    def close(self) -> None:
        self.calls.append("close")
        self.closed = True
        self.selected = None

    # -- internals ------------------------------------------------------------------

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)
        if self.closed:
            raise ConnectionFailed("fake store is closed")

    def _folder(self, name: str, operation: str) -> FakeFolder:
        f = self.folders.get(name)
        if f is None:
            raise ServerError(
                f"{operation} {name!r} failed: [NONEXISTENT] Mailbox doesn't exist",
                hint="the folder does not exist on the server",
            )
        return f

    def _current(self, operation: str) -> FakeFolder:
        if self.selected is None or self.selected not in self.folders:
            raise ServerError(f"cannot {operation}: no folder is selected")
        return self.folders[self.selected]

    def _status(self, f: FakeFolder) -> FolderStatus:
        return FolderStatus(
            uidvalidity=f.uidvalidity,
            uidnext=f.uidnext,
            messages=len(f.messages),
            highestmodseq=f.highestmodseq if "CONDSTORE" in self._capabilities else 0,
        )

    def _add(self, f: FakeFolder, data: bytes, flags: Iterable[str], date: datetime | None) -> int:
        uid = f.uidnext
        f.uidnext += 1
        when = (date or datetime.now(timezone.utc)).replace(microsecond=0)
        if when.tzinfo is None:
            when = when.astimezone()  # naive means local time, as in IMAP APPEND
        kept = {_canon_flag(x) for x in flags if x.lower() != "\\recent"}
        stored = _munge8bit(bytes(data)) if self.munge8bit else bytes(data)
        f.messages[uid] = FakeMessage(stored, kept, when, f.bump())
        return uid

    def _store(self, uids: Iterable[int], flags: Flags, add: bool) -> None:
        wanted = set(uids)
        if not wanted:
            return
        f = self._current("store flags")
        _check_flags(flags)
        changes = {_canon_flag(x) for x in flags if x.lower() != "\\recent"}
        if not changes:
            return
        lowered = {c.lower() for c in changes}
        for uid in wanted:
            msg = f.messages.get(uid)
            if msg is None:
                continue
            if add:
                new = msg.flags | {c for c in changes if c.lower() not in _lower(msg.flags)}
            else:
                new = {x for x in msg.flags if x.lower() not in lowered}
            if new != msg.flags:
                msg.flags = new
                msg.modseq = f.bump()


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_FLAG_KEYS = {
    "SEEN": "\\Seen",
    "FLAGGED": "\\Flagged",
    "DELETED": "\\Deleted",
    "ANSWERED": "\\Answered",
    "DRAFT": "\\Draft",
}
SearchTest = Callable[[int, FakeMessage], bool]


def _search_test(tokens: list[str]) -> SearchTest:
    """The search keys mirrorsync sends, as one predicate (all ANDed, as in IMAP);
    an unknown key is the server's BAD."""
    tests: list[SearchTest] = []
    while tokens:
        tests.append(_search_key(tokens))
    return lambda uid, m: all(t(uid, m) for t in tests)


def _search_key(tokens: list[str]) -> SearchTest:
    key = tokens.pop(0).upper()

    def arg() -> str:
        if not tokens:
            raise ServerError(f"search failed: BAD {key} needs an argument")
        return tokens.pop(0)

    if key == "ALL":
        return lambda uid, m: True
    if key in _FLAG_KEYS:
        flag = _FLAG_KEYS[key]
        return lambda uid, m: flag in m.flags
    if key.startswith("UN") and key[2:] in _FLAG_KEYS:
        flag = _FLAG_KEYS[key[2:]]
        return lambda uid, m: flag not in m.flags
    if key == "NOT":
        inner = _search_key(tokens)
        return lambda uid, m: not inner(uid, m)
    if key == "OR":
        a, b = _search_key(tokens), _search_key(tokens)
        return lambda uid, m: a(uid, m) or b(uid, m)
    if key in ("LARGER", "SMALLER"):
        n = int(arg())
        if key == "LARGER":
            return lambda uid, m: len(m.data) > n
        return lambda uid, m: len(m.data) < n
    if key in ("BEFORE", "SINCE", "ON"):
        day = _search_date(arg())
        # RFC 3501: the date of INTERNALDATE, disregarding time and time zone
        if key == "BEFORE":
            return lambda uid, m: m.internaldate.date() < day
        if key == "SINCE":
            return lambda uid, m: m.internaldate.date() >= day
        return lambda uid, m: m.internaldate.date() == day
    if key == "UID":
        text = arg()
        return lambda uid, m: _in_set(uid, text)
    if key in ("KEYWORD", "UNKEYWORD"):
        word = arg().lower()
        has = key == "KEYWORD"
        return lambda uid, m: (word in _lower(m.flags)) is has
    raise ServerError(f"search failed: BAD unknown search key {key}")


def _search_date(text: str) -> date:
    try:
        day, month, year = text.split("-")
        return date(int(year), _MONTHS[month.lower()], int(day))
    except (ValueError, KeyError):
        raise ServerError(f"search failed: BAD invalid date {text!r}") from None


def _in_set(uid: int, text: str) -> bool:
    for piece in text.split(","):
        low, _, high = piece.partition(":")
        a = 2**32 if low == "*" else int(low)
        b = a if not high else 2**32 if high == "*" else int(high)
        if min(a, b) <= uid <= max(a, b):
            return True
    return False


def _listing(f: FakeFolder) -> dict[int, RemoteMessage]:
    return {
        uid: RemoteMessage(uid, frozenset(m.flags), len(m.data))
        for uid, m in sorted(f.messages.items())
    }


def _lower(flags: Iterable[str]) -> set[str]:
    return {f.lower() for f in flags}


def _check_flags(flags: Iterable[str]) -> None:
    for flag in flags:
        if not _FLAG_RE.match(flag):
            raise ServerError(f"{flag!r} is not a valid IMAP flag name")


def _check_append(folder: str, data: bytes, flags: Iterable[str]) -> None:
    """What Dovecot refuses in an APPEND although the command is well-formed."""
    if not data:
        raise ServerError(f"append to {folder!r} failed: Can't save a zero byte message")
    if any(len(f) > _MAX_KEYWORD for f in flags if not f.startswith("\\")):
        raise ServerError(f"append to {folder!r} failed: [CANNOT] Keyword length too long")


def _checked(name: str) -> str:
    name = canonical_folder(name)
    if any(not part for part in name.split(SEP)):
        raise FolderNameError(f"folder name {name!r} has an empty component")
    return name


def _munge8bit(data: bytes) -> bytes:
    """Cyrus's `munge8bit` (message_copy_strict): each byte >= 0x80 in the header
    section, up to the first empty line, becomes "X"."""
    end = data.find(b"\r\n\r\n")
    head_end = len(data) if end < 0 else end
    head = bytes(b if b < 0x80 else ord("X") for b in data[:head_end])
    return head + data[head_end:]
