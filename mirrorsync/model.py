"""Plain data that flows from the stores through the planner to the executor.

Folder names are carried in one canonical form everywhere inside mirrorsync: the
decoded (Unicode) path components joined with "/", and INBOX spelled "INBOX". Each
store maps that to its own spelling (server delimiter and modified UTF-7, or a
directory layout), so the planner never sees a store's quirks.

Flags are carried as IMAP flag names (``\\Seen``, ``$Forwarded``); `flags` maps the
ones a Maildir can hold to info letters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Defined in the import-light `names` (the quick check needs them without the rest).
from mirrorsync.names import SEP as SEP
from mirrorsync.names import canonical_folder as canonical_folder

Flags = frozenset[str]
NO_FLAGS: Flags = frozenset()


@dataclass(frozen=True)
class FolderStatus:
    """What the server says about a folder when it is selected (or STATUS'd)."""

    uidvalidity: int
    uidnext: int
    messages: int
    highestmodseq: int = 0  # 0: the server has no CONDSTORE, or the folder NOMODSEQ


@dataclass(frozen=True)
class RemoteFolder:
    name: str  # canonical
    attributes: frozenset[str] = frozenset()  # e.g. \Noselect, \HasChildren

    @property
    def selectable(self) -> bool:
        lowered = {a.lower() for a in self.attributes}
        return "\\noselect" not in lowered and "\\nonexistent" not in lowered


@dataclass(frozen=True, slots=True)
class RemoteMessage:
    uid: int
    flags: Flags
    size: int = 0  # RFC822.SIZE, CRLF bytes; 0 when not fetched


@dataclass(frozen=True)
class FolderChanges:
    """What changed in a server folder since a known HIGHESTMODSEQ, as learned while
    selecting it (`RemoteStore.select_changes`). Carrying the whole answer in one value
    lets the engine treat the incremental and the full case alike: with `full` it
    diffs `changed` against its state as after a plain `list_messages()`."""

    status: FolderStatus  # as selected now; highestmodseq as of the SELECT
    # UID -> all flags (size may be 0) of the messages new or with flags changed since
    # the given modseq; when `full`, every message in the folder (sizes then known)
    changed: dict[int, RemoteMessage]
    # UIDs expunged since the given modseq; may include UIDs the caller never knew.
    # When `full`: the known UIDs not listed (empty under another UIDVALIDITY).
    vanished: frozenset[int]
    # True when no incremental answer was possible (no CONDSTORE, modseq 0, another
    # UIDVALIDITY, a NOMODSEQ folder, a modseq the server never reached): `changed` is
    # then the complete listing
    full: bool


@dataclass(frozen=True, slots=True)
class RemoteIdentity:
    """Cheap facts to pick candidates when matching messages by content."""

    uid: int
    size: int
    message_id: str | None


@dataclass(frozen=True)
class QuotaResource:
    """One resource of a quota root (RFC 9208, was 2087), as the server reports it.
    STORAGE counts units of 1024 octets, MESSAGE counts messages; others are the
    server's own."""

    root: str  # the quota root's name ("" or e.g. "User quota")
    name: str  # upper case: STORAGE, MESSAGE, ...
    usage: int
    limit: int

    @property
    def usage_bytes(self) -> int | None:
        """Usage in octets for STORAGE, None for resources that count something else."""
        return self.usage * 1024 if self.name == "STORAGE" else None

    @property
    def limit_bytes(self) -> int | None:
        return self.limit * 1024 if self.name == "STORAGE" else None


@dataclass(frozen=True, slots=True)
class LocalMessage:
    key: str  # the unique part of the Maildir file name; survives flag renames
    flags: Flags  # as IMAP flags
    subdir: str  # "cur" or "new"
    filename: str = field(compare=False, default="")

    @property
    def relpath(self) -> str:
        return f"{self.subdir}/{self.filename}"


@dataclass(frozen=True, slots=True)
class Pair:
    """One message known on both sides, with the flags each side had at the last sync
    (a row of the state; defined here so that the pure planner needs no `state`)."""

    uid: int
    key: str
    hash: str
    remote_flags: Flags
    local_flags: Flags
