"""Typed errors. Each carries the facts; `cli` turns them into one line of words.

Raising a typed error (instead of printing) keeps policy out of the stores and the
engine: they say *what* went wrong, the CLI decides the wording and the exit status.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    PARTIAL = 1  # done, but some folders failed (each named)
    USAGE = 2  # usage or configuration error
    CONNECTION = 3  # connection, TLS or authentication failure
    INTERNAL = 4  # a bug: reported with a hint to re-run with -v
    DAEMON_RUNNING = 5  # `daemon`: another daemon already runs for the account


def abridged(text: str, most: int = 200) -> str:
    """A name or path of a few kilobytes (a server folder of 25 levels) keeps a line
    readable with its middle left out: the start and the end say which it is."""
    if len(text) <= most:
        return text
    keep = (most - 5) // 2
    return f"{text[:keep]}[...]{text[-keep:]}"


class MirrorsyncError(Exception):
    """Base of every error the CLI knows how to word."""

    exit_status: ExitStatus = ExitStatus.PARTIAL

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ConfigError(MirrorsyncError):
    """The configuration file is missing, unreadable or invalid."""

    exit_status = ExitStatus.USAGE

    def __init__(self, message: str, path: str = "", key: str = "", hint: str = "") -> None:
        where = path + (f": {key}" if key else "") if path else key
        super().__init__(f"{where}: {message}" if where else message, hint)
        self.path = path
        self.key = key


class UsageError(MirrorsyncError):
    exit_status = ExitStatus.USAGE


class ConnectionFailed(MirrorsyncError):
    """Server unreachable, TLS failure, or the connection dropped."""

    exit_status = ExitStatus.CONNECTION


class AuthenticationFailed(ConnectionFailed):
    """The server refused the login."""


class ServerError(MirrorsyncError):
    """The server answered NO/BAD or something we cannot parse, for one folder/operation."""


class AppendRefused(ServerError):
    """`RemoteStore.append_many` stopped at a refused APPEND: the first ``len(uids)``
    messages went up (with these UIDs, None where not told); the next `refused` ones
    were in the refused command, so none of them is stored (RFC 3502), and the rest
    were not sent."""

    def __init__(self, message: str, uids: list[int | None], refused: int, hint: str = "") -> None:
        super().__init__(message, hint)
        self.uids = uids
        self.refused = refused


class FolderNameError(MirrorsyncError):
    """A folder name that cannot be represented on the other side."""


class LocalStoreError(MirrorsyncError):
    """The Maildir could not be read or written (permissions, full disk, odd files)."""


class StateError(MirrorsyncError):
    """The state database is unusable."""


# StateUnwritable's causes -> (what happened, what to do)
_STATE_CAUSES = {
    "full": ("no space left for the state in {where}", "free some space there and re-run"),
    "read-only": (
        "the state in {where} is on a read-only file system",
        "make it writable (or point state_dir elsewhere) and re-run",
    ),
    "io": (
        "the disk failed while reading or writing the state in {where}",
        "check the disk (dmesg) and re-run",
    ),
    "access": (
        "no permission to write the state in {where}",
        "check the owner and mode of that directory and re-run",
    ),
}


class StateUnwritable(StateError):
    """The state database could not be written (or opened) for a reason outside it: a
    full file system, a read-only one, an I/O error. Unlike damage, this says nothing
    against the state itself: it is kept as it is and nothing is undone, so the run
    stops (for the whole account) and the next one, once the cause is gone, goes on
    from where this one stopped."""

    def __init__(self, where: str, cause: str, detail: str = "") -> None:
        what, todo = _STATE_CAUSES.get(cause, _STATE_CAUSES["io"])
        message = what.format(where=where) + (f" ({detail})" if detail else "")
        super().__init__(message, f"{todo}; the state is kept and nothing was undone")
        self.where = where
        self.cause = cause


class LockedError(MirrorsyncError):
    """Another mirrorsync run holds the account's lock."""


class DaemonRunning(LockedError):
    """A second `mirrorsync daemon` for an account: a status of its own, so that a
    service manager can tell it from a daemon whose folders failed (1)."""

    exit_status = ExitStatus.DAEMON_RUNNING


class LocalPathError(MirrorsyncError):
    """A configured local path (local.path, state_dir) that cannot be used: under a
    file, a file itself, or in a directory we may not write. A configuration or
    environment problem, not a folder's: the account is not synced at all."""

    exit_status = ExitStatus.USAGE

    def __init__(self, key: str, path: str, problem: str, hint: str) -> None:
        super().__init__(f"{key} {path}: {problem}", hint)
        self.key = key
        self.path = path


class GuardError(MirrorsyncError):
    """A plan would delete more than the configured share of a folder."""


class FirstSyncGuard(GuardError):
    """A folder's first sync would upload many local messages that matched nothing
    on the server: more likely copies another tool left (with its own headers) than
    new mail. The facts are kept so that the CLI can say what `migrate` would do."""

    def __init__(self, folder: str, uploads: int, matched: int, downloads: int) -> None:
        super().__init__(
            f"first sync of {folder!r} would upload {uploads} local messages that match "
            f"none on the server ({matched} matched, {downloads} to download); "
            "nothing was changed in this folder",
            "if this Maildir was made by mbsync or offlineimap, run 'mirrorsync migrate "
            "ACCOUNT --from mbsync|offlineimap' first; if these are new messages, "
            "re-run with --force; if mirrorsync's state was lost, re-run with "
            "--recover (see 'When the state is lost' in the README)",
        )
        self.folder = folder
        self.uploads = uploads
        self.matched = matched
        self.downloads = downloads


class RecoveryNotice(MirrorsyncError):
    """A sync without a state while both sides hold mail (see `recovery`): what
    pairing by content cannot know, and what this run does about it. Not raised: it
    is said as one warning before the run changes anything; the facts are kept so
    the words stay in one place."""

    def __init__(
        self,
        account: str,
        local: int,
        remote: int,
        elsewhere: int,
        extra: int,
        one_side: int,
        choice: str | None,
        actions: int,
    ) -> None:
        doubts = [
            f"{n} {what}"
            for n, what in (
                (elsewhere, "in one folder here and another on the server (moved on one side)"),
                (
                    extra,
                    "in more folders on one side than on the other (copied, or a copy deleted)",
                ),
                (one_side, "on one side only (new there, or deleted on the other)"),
            )
            if n
        ]
        found = "; ".join(doubts) if doubts else "each in the same folders on both sides"
        message = (
            f"[{account}] no sync state, and both the Maildir ({local} messages) and the "
            f"server ({remote}) hold mail: pairing them by content, which cannot tell what "
            f"was moved or deleted on either side since the last sync: {found}"
        )
        if not elsewhere and not extra:
            hint = (
                "those are copied to the other side (a deleted one comes back: without a "
                "state, new mail and deleted mail look the same)"
                if one_side
                else "nothing is in doubt"
            )
        elif choice in ("local", "server"):
            side, where = (
                ("Maildir", "on the server") if choice == "local" else ("server", "in the Maildir")
            )
            hint = (
                f"following the {side}'s folders (--recover={choice}): moving or removing "
                f"{actions} {'copy' if actions == 1 else 'copies'} {where}; a message on one "
                "side only is copied to the other"
            )
        else:
            hint = (
                "keeping every copy ("
                + ("--recover=keep" if choice else "no --recover given")
                + "): a moved message ends up in both folders and a deleted one comes back"
            )
            if not choice:
                hint += (
                    "; with no state, --recover=local follows the Maildir's folders "
                    "instead, --recover=server the server's (see 'When the state is "
                    "lost' in the README)"
                )
        super().__init__(message, hint)
        self.account = account
        self.elsewhere = elsewhere
        self.extra = extra
        self.one_side = one_side
        self.choice = choice


class LocalRootMissing(MirrorsyncError):
    """The local Maildir root vanished although the state remembers messages."""
