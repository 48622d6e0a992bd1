"""The interface the sync engine needs from a server.

`mirrorsync.imap.store.ImapStore` implements it against a real IMAP server; the tests' in-memory
fake implements it too, and both must pass `tests/test_remote_contract.py`. Operations
on messages act on the folder chosen by the last `select`, as IMAP does, so that the
engine decides how often a folder is selected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

from mirrorsync.errors import AppendRefused, ServerError
from mirrorsync.model import (
    Flags,
    FolderChanges,
    FolderStatus,
    QuotaResource,
    RemoteFolder,
    RemoteIdentity,
    RemoteMessage,
)

# The default piece size of `RemoteStore.fetch_to_file`: big enough that a round trip
# per piece costs little, small enough that a piece in memory does not matter.
FETCH_CHUNK = 4 * 1024 * 1024


class ByteSink(Protocol):
    """Where `RemoteStore.fetch_to_file` writes: a binary file, or a filter in front
    of one (say, one that turns CRLF into LF on the way to a Maildir file)."""

    def write(self, data: bytes, /) -> object: ...


class RemoteStore(Protocol):
    @property
    def capabilities(self) -> frozenset[str]:
        """Upper-case capability names after login (e.g. "UIDPLUS", "CONDSTORE")."""
        ...

    def list_folders(self) -> list[RemoteFolder]: ...

    def create_folder(self, name: str) -> None:
        """Create `name` (canonical); parents are created as the server needs."""
        ...

    def delete_folder(self, name: str) -> None: ...

    def select(self, name: str) -> FolderStatus:
        """Select `name` read-write; later message operations act on it."""
        ...

    def list_messages(self) -> dict[int, RemoteMessage]:
        """UID -> flags (mappable and not) and RFC822.SIZE of every message."""
        ...

    def identities(self, uids: Sequence[int]) -> dict[int, RemoteIdentity]:
        """Size and Message-ID, to pick candidates when matching by content."""
        ...

    def fetch(self, uids: Sequence[int]) -> Iterator[tuple[int, bytes, Flags, datetime | None]]:
        """Full bodies (CRLF, exactly as served), with flags and INTERNALDATE, in batches
        so memory stays bounded. UIDs that vanished meanwhile are skipped."""
        ...

    def append(
        self, name: str, data: bytes, flags: Flags, date: datetime | None = None
    ) -> int | None:
        """APPEND to `name`; returns the new UID (UIDPLUS APPENDUID, else found by
        Message-ID and size), or None when it cannot be told."""
        ...

    def append_many(
        self, name: str, items: Sequence[tuple[bytes, Flags, datetime | None]]
    ) -> list[int | None]:
        """APPEND each (data, flags, date) to `name`, in order; returns their new UIDs
        in the same order (None where it cannot be told), as `append` would.

        With MULTIAPPEND (RFC 3502) one command carries many messages (bounded by count
        and bytes), and the server stores all of them or, when it refuses one, none;
        without it, one APPEND each. A refused command raises `AppendRefused`, which
        says how many messages went up before it (with their UIDs) and how many it
        held; a plain ServerError means nothing was sent (a flag name that is not an
        IMAP atom)."""
        ...

    def expunge(self, uids: Iterable[int]) -> None:
        """Mark exactly these UIDs \\Deleted and expunge exactly them (UID EXPUNGE);
        never a bare EXPUNGE that would also remove other clients' deleted messages."""
        ...

    def move(self, uids: Sequence[int], name: str) -> dict[int, int]:
        """Move messages of the selected folder to `name` (UID MOVE, else COPY and an
        expunge of exactly these UIDs); old UID -> new UID where the server tells."""
        ...

    def close(self) -> None: ...

    # -- folder naming: canonical names <-> the server's ------------------------------

    def personal_prefix(self) -> str:
        """The prefix of the server's personal namespace (NAMESPACE), "" for none:
        Courier's "INBOX."."""
        ...

    def use_namespace_prefix(self, prefix: str) -> None:
        """Leave `prefix` out of canonical names from now on ("INBOX.Work" is "Work")."""
        ...

    def delimiter(self) -> str | None:
        """The server's hierarchy delimiter; None for a flat server."""
        ...

    def unrepresentable(self, name: str) -> str | None:
        """Why the server cannot hold a folder of canonical `name` (a component holds
        its separator), or None when it can."""
        ...

    # -- fast paths: a sync should cost what changed, not what exists ----------------

    def statuses(self) -> dict[str, FolderStatus]:
        """MESSAGES, UIDNEXT, UIDVALIDITY and HIGHESTMODSEQ (0 without CONDSTORE) of
        every selectable folder, keyed by canonical name as in `list_folders`. With
        LIST-STATUS this is one round trip for the whole account, so unchanged
        folders can be skipped without selecting them. A `list_folders()` right after
        may answer from the same listing instead of asking the server again.
        A folder whose STATUS the server refused (NO [SERVERBUG], no permission) is
        left out of the result and named in `status_failures()`."""
        ...

    def status_failures(self) -> dict[str, str]:
        """The folders the last `statuses()` listed but could not get the numbers of,
        each with a one-line reason. They exist on the server: a caller must not take
        them for deleted, only skip them (and say so)."""
        ...

    def special_use(self) -> dict[str, str]:
        """The special-use folders (RFC 6154: \\Junk, \\Sent, ...) seen in the
        listings so far, canonical name -> attribute as in names.SPECIAL_USES; {} on
        a server without SPECIAL-USE. For `folders:` patterns that name one."""
        ...

    def select_changes(
        self,
        name: str,
        uidvalidity: int,
        modseq: int,
        known_uids: Sequence[int] | None = None,
    ) -> FolderChanges:
        """Select `name` read-write (as `select`) and tell what changed since `modseq`
        (the HIGHESTMODSEQ the caller saw last, under `uidvalidity`).

        QRESYNC: new and changed messages and the expunged UIDs come with the SELECT
        itself. CONDSTORE only: changes come from one ``CHANGEDSINCE`` FETCH, and the
        expunged UIDs are `known_uids` minus those still there (empty when
        `known_uids` is None: the server cannot say which UIDs vanished then).
        Otherwise, with modseq 0, when the UIDVALIDITY is not `uidvalidity` any more,
        or when `modseq` is above the folder's HIGHESTMODSEQ (the server lost state):
        `full` is True, `changed` is the complete listing and `vanished` the
        `known_uids` not in it (none under another UIDVALIDITY)."""
        ...

    def store_flags(
        self, uids: Iterable[int], add: Flags, remove: Flags, unchanged_since: int = 0
    ) -> set[int]:
        """Add `add` and remove `remove` on `uids` in the selected folder. With
        CONDSTORE and `unchanged_since` > 0 a message whose flags changed on the
        server after that modseq is left alone, and its UID is returned so the caller
        can re-read and merge; otherwise the stores are plain and the result empty."""
        ...

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of these UIDs in the selected folder (vanished ones missing),
        so the caller can send big messages to `fetch_to_file` instead of `fetch`."""
        ...

    def fetch_to_file(self, uid: int, size: int, out: ByteSink, chunk: int = FETCH_CHUNK) -> bool:
        """Write the body of `uid` (CRLF, exactly as served) to `out` in pieces of
        `chunk` bytes, so a message of any size costs one piece of memory. `size` is
        its RFC822.SIZE. False if the UID vanished (then `out` may hold a part)."""
        ...

    # -- server space: what `mirrorsync archive` and `mirrorsync quota` need ----------

    def search(self, criteria: Sequence[str]) -> list[int]:
        """``UID SEARCH`` in the selected folder: the UIDs matching `criteria` (IMAP
        search keys, one atom per item, e.g. ["BEFORE", "1-Jan-2024", "UNFLAGGED"]),
        ascending. The server selects, so a rule costs what it matches, not a listing
        of the folder. A UID in the result may have been expunged meanwhile."""
        ...

    def quota(self) -> list[QuotaResource]:
        """``GETQUOTAROOT INBOX``: the resources of INBOX's quota roots (usage and
        limit); [] when the server has no QUOTA extension."""
        ...

    def folder_sizes(self) -> dict[str, tuple[int, int]]:
        """(messages, octets) of every selectable folder: ``STATUS (MESSAGES SIZE)``
        where the server has STATUS=SIZE (RFC 8438), else the RFC822.SIZEs of each
        folder summed. May leave no folder selected: select again before message
        operations."""
        ...


def append_refused(exc: ServerError, done: list[int | None], refused: int) -> AppendRefused:
    """The error of an `append_many` that stored `done` and then was refused `refused`
    messages (one, or a whole MULTIAPPEND command) with `exc`."""
    return AppendRefused(exc.message, list(done), refused, exc.hint)


def append_each(
    append: Callable[[str, bytes, Flags, datetime | None], int | None],
    name: str,
    items: Sequence[tuple[bytes, Flags, datetime | None]],
) -> list[int | None]:
    """`append_many` for a server without MULTIAPPEND: one `append` per message, and a
    refusal raised as `append_refused`, naming what was stored before it."""
    out: list[int | None] = []
    for data, flags, date in items:
        try:
            out.append(append(name, data, flags, date))
        except ServerError as exc:
            raise append_refused(exc, out, 1) from exc
    return out


def batches(
    keys: list[int], sizes: dict[int, int], max_count: int, max_bytes: int
) -> Iterator[list[int]]:
    """`keys` in order, cut into runs of at most `max_count` keys and `max_bytes` of
    `sizes` (a single larger one goes alone): how fetches and MULTIAPPENDs are cut
    into commands, by the real store and the tests' fake alike."""
    batch: list[int] = []
    total = 0
    for key in keys:
        size = sizes[key]
        if batch and (len(batch) >= max_count or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(key)
        total += size
    if batch:
        yield batch
