"""The interface the sync engine needs from a server.

`imapstore.ImapStore` implements it against a real IMAP server; the tests' in-memory
fake implements it too, and both must pass `tests/test_remote_contract.py`. Operations
on messages act on the folder chosen by the last `select`, as IMAP does, so that the
engine decides how often a folder is selected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

from mirrorsync.model import Flags, FolderStatus, RemoteFolder, RemoteIdentity, RemoteMessage


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

    def status(self, name: str) -> FolderStatus:
        """STATUS without selecting; `messages` is the message count."""
        ...

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

    def add_flags(self, uids: Iterable[int], flags: Flags) -> None: ...

    def remove_flags(self, uids: Iterable[int], flags: Flags) -> None: ...

    def expunge(self, uids: Iterable[int]) -> None:
        """Mark exactly these UIDs \\Deleted and expunge exactly them (UID EXPUNGE);
        never a bare EXPUNGE that would also remove other clients' deleted messages."""
        ...

    def close(self) -> None: ...
