"""What a sync will do, as frozen values: the plan that `--dry-run` prints and the
executor carries out. Nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass

from mirrorsync import flags as flagmod
from mirrorsync.model import NO_FLAGS, Flags


def _letters(flags: Flags) -> str:
    return flagmod.to_letters(flags) or "-"


@dataclass(frozen=True)
class FlagChange:
    """How to bring one pair to `result`: what to add/remove on the server, and the
    flags to give the local file (None: it already has them)."""

    result: Flags
    remote_add: Flags = NO_FLAGS
    remote_remove: Flags = NO_FLAGS
    local: Flags | None = None

    @property
    def is_noop(self) -> bool:
        return not self.remote_add and not self.remote_remove and self.local is None


# -- message actions (within one folder)


@dataclass(frozen=True)
class Download:
    uid: int
    flags: Flags

    def describe(self) -> str:
        return f"download UID {self.uid} [{_letters(self.flags)}]"


@dataclass(frozen=True)
class Upload:
    key: str
    flags: Flags

    def describe(self) -> str:
        return f"upload {self.key} [{_letters(self.flags)}]"


@dataclass(frozen=True)
class UpdateFlags:
    uid: int
    key: str
    change: FlagChange

    def describe(self) -> str:
        parts = []
        if self.change.remote_add or self.change.remote_remove:
            parts.append(
                f"server +{_letters(self.change.remote_add)} -{_letters(self.change.remote_remove)}"
            )
        if self.change.local is not None:
            parts.append(f"local [{_letters(self.change.local)}]")
        if not parts:
            parts.append(f"both sides already [{_letters(self.change.result)}], recorded")
        return f"flags UID {self.uid} / {self.key}: " + ", ".join(parts)


@dataclass(frozen=True)
class Link:
    """Pair a server message and a local file found to hold the same content (after a
    crash, a UIDVALIDITY change, or a first sync against an existing Maildir)."""

    uid: int
    key: str
    hash: str
    change: FlagChange
    # The file equals the message apart from fields a tool added to its copy (see
    # content.TRACKING_FIELDS): it takes the server's bytes before it is recorded.
    replace: bool = False

    def describe(self) -> str:
        same = "same content, taking the server's bytes" if self.replace else "same content"
        return f"link UID {self.uid} = {self.key} ({same}) [{_letters(self.change.result)}]"


@dataclass(frozen=True)
class DeleteRemote:
    """The local file was deleted: expunge exactly this UID on the server."""

    uid: int
    key: str

    def describe(self) -> str:
        return f"delete on server UID {self.uid} (deleted locally)"


@dataclass(frozen=True)
class DeleteLocal:
    """The server expunged the message: remove the local file."""

    uid: int
    key: str

    def describe(self) -> str:
        return f"delete locally {self.key} (expunged on server)"


@dataclass(frozen=True)
class Release:
    """Backup mode: the server expunged the message, the file stays; only the state
    forgets the pair."""

    uid: int
    key: str

    def describe(self) -> str:
        return f"keep {self.key} locally (expunged on server; backup mode)"


@dataclass(frozen=True)
class Forget:
    """Gone on both sides: only the state row remains."""

    uid: int
    key: str

    def describe(self) -> str:
        return f"forget UID {self.uid} (gone on both sides)"


@dataclass(frozen=True)
class MoveOnServer:
    """A file moved between local folders: UID MOVE on the server, which keeps the
    message's flags and INTERNALDATE and costs no upload."""

    src: str
    uid: int
    dst: str
    key: str  # the file in `dst` now
    hash: str
    flags: Flags  # the pair's flags as last synced
    replace: bool = False  # the file differs by tracking fields: it takes the server's bytes

    def describe(self) -> str:
        how = "moved locally, taking the server's bytes" if self.replace else "moved locally"
        return f"move on server UID {self.uid} {self.src} -> {self.dst} ({how})"


@dataclass(frozen=True)
class MoveLocally:
    """A message moved between server folders by another client: rename the file,
    which keeps it (and its inode) instead of deleting and downloading it."""

    src: str
    key: str
    uid: int  # in `src`, gone
    dst: str
    new_uid: int  # in `dst`
    hash: str

    def describe(self) -> str:
        return f"move locally {self.key} {self.src} -> {self.dst} (moved on the server)"


@dataclass(frozen=True)
class FreeOnServer:
    """A file moved from a synced folder into a local-only one, its content checked
    against the state's hash: expunge the server copy, which frees space without
    losing anything. Not a deletion, so the mass-deletion guard does not count it."""

    src: str
    uid: int
    key: str
    dst: str  # the local-only folder now holding the file

    def describe(self) -> str:
        return f"free on server UID {self.uid} of {self.src} (archived locally in {self.dst})"


MessageMove = MoveOnServer | MoveLocally | FreeOnServer

MessageAction = (
    Download | Upload | UpdateFlags | Link | DeleteRemote | DeleteLocal | Release | Forget
)


# -- folder actions


@dataclass(frozen=True)
class CreateLocalFolder:
    name: str

    def describe(self) -> str:
        return f"create local folder {self.name}"


@dataclass(frozen=True)
class CreateRemoteFolder:
    name: str

    def describe(self) -> str:
        return f"create server folder {self.name}"


@dataclass(frozen=True)
class DeleteLocalFolder:
    name: str

    def describe(self) -> str:
        return f"delete local folder {self.name} (deleted on server, empty locally)"


@dataclass(frozen=True)
class DeleteRemoteFolder:
    name: str

    def describe(self) -> str:
        return f"delete server folder {self.name} (deleted locally, empty on server)"


@dataclass(frozen=True)
class ResetFolder:
    """One side's folder vanished while the other still holds messages: forget the
    folder's pairs so the holding side is copied back in full, instead of its
    messages being read as deleted."""

    name: str
    reason: str

    def describe(self) -> str:
        return f"resync folder {self.name}: {self.reason}"


@dataclass(frozen=True)
class ForgetFolder:
    name: str

    def describe(self) -> str:
        return f"forget folder {self.name} (gone on both sides)"


@dataclass(frozen=True)
class SyncFolder:
    name: str

    def describe(self) -> str:
        return f"sync folder {self.name}"


FolderAction = (
    CreateLocalFolder
    | CreateRemoteFolder
    | DeleteLocalFolder
    | DeleteRemoteFolder
    | ResetFolder
    | ForgetFolder
    | SyncFolder
)
