"""Which server names the canonical folder names stand for, decided once per run.

Two things depend on the server and on the account's history rather than on the name
alone (see `names.server_spelling`):

* The personal namespace prefix (RFC 2342). Courier keeps every folder of the user
  under "INBOX." and refuses to create a top-level one; with the prefix left out,
  server "INBOX.Work" is local "Work" and a new local "Work" is created as
  "INBOX.Work". `remote.namespace_prefix` says which prefix: `auto` (the default)
  takes the server's NAMESPACE answer. The prefix an account was first synced with
  is recorded in its state and kept; an account that already has folders named
  with the prefix (a state from before prefixes were recorded, or a Maildir with
  INBOX/Work for the server's INBOX.Work) keeps "", since changing the mapping
  under existing folders would make every one of them look deleted on one side and
  new on the other, and so copied twice.
* Local folders the server cannot hold: a component containing the server's
  separator ("Release.1" where "." separates levels would become the folder 1 inside
  Release). Such a folder is kept only on disk, with a warning the first time.
"""

from __future__ import annotations

import logging
from typing import Protocol

from mirrorsync.errors import ConfigError
from mirrorsync.names import KEPT_LOCAL_META, PREFIX_META, server_spelling

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:  # config imports YAML: not for a run that has nothing to do
    from collections.abc import Callable, Iterable

    from mirrorsync.config import AccountConfig
    from mirrorsync.remote import RemoteStore
    from mirrorsync.state import State

log = logging.getLogger(__name__)


def settle_prefix(
    account: AccountConfig,
    remote: RemoteStore,
    state: State,
    record: bool,
    local_folders: Callable[[], Iterable[str]],
) -> str:
    """Decide the namespace prefix for this run, tell `remote`, and (with `record`)
    remember it in the state; returns it. `local_folders` lists the Maildir's folders
    (asked only when nothing is recorded yet)."""
    configured = account.remote.namespace_prefix
    recorded = state.get_meta(PREFIX_META)
    if configured is not None:
        if recorded is not None and recorded != configured and state.folders():
            raise ConfigError(
                f"namespace_prefix {configured or 'none'!r} differs from "
                f"{recorded or 'none'!r}, which this account's folders were synced with; "
                "nothing was changed",
                key=f"accounts.{account.name}.remote.namespace_prefix",
                hint=f"set it back to {recorded or 'none'!r} (or auto), or move the state "
                "directory and the Maildir aside to start afresh",
            )
        delimiter = remote.delimiter() if configured else None
        if delimiter and not configured.endswith(delimiter):
            raise ConfigError(
                f"namespace_prefix {configured!r} does not end with the server's "
                f"separator {delimiter!r}",
                key=f"accounts.{account.name}.remote.namespace_prefix",
                hint=f"write it as the server's NAMESPACE names it, e.g. "
                f"{configured + delimiter!r}, or use auto",
            )
        prefix = configured
    elif recorded is not None:
        prefix = recorded
    else:
        prefix = remote.personal_prefix()
        if prefix:
            synced = sorted(state.folders())
            spelled = _spelled_with(prefix, remote.delimiter(), synced, local_folders)
            if spelled is not None:
                if record:
                    log.warning(
                        "the server keeps your folders under the namespace %r, but this "
                        "account already names them with it (%r), as mirrorsync did before "
                        "it left the prefix out: the names stay as they are; to drop the "
                        "prefix, start afresh with a new state directory and Maildir",
                        prefix,
                        spelled,
                    )
                prefix = ""
    remote.use_namespace_prefix(prefix)
    if record and recorded != prefix:
        with state.transaction():
            state.set_meta(PREFIX_META, prefix)
    return prefix


def _spelled_with(
    prefix: str,
    delimiter: str | None,
    synced: list[str],
    local_folders: Callable[[], Iterable[str]],
) -> str | None:
    """A folder the account already has (synced, or in the Maildir) under a name that
    spells the prefix, "INBOX/Work" for the server's "INBOX.Work": evidence that it
    was synced before the prefix was left out (a state moved aside and rebuilt
    included). Leaving the prefix out then would make every such folder look new on
    both sides and copy it twice; and a state that holds any folder but no recorded
    prefix was written before prefixes were recorded, so by the old rule."""
    for name in [*synced, *sorted(local_folders())]:
        if name == "INBOX":
            continue
        try:
            old = server_spelling(name, delimiter)
        except ValueError:
            old = ""
        if old.startswith(prefix) or name in synced:
            return name
    return None


def kept_local(remote: RemoteStore, state: State, candidates: set[str], record: bool) -> set[str]:
    """Of `candidates` (local folders not on the server), those the server cannot
    hold. Each is warned about once, the first run it is met (remembered in the
    state), so that a daemon's every sync does not repeat it."""
    why = {n: w for n in sorted(candidates) if (w := remote.unrepresentable(n)) is not None}
    before = set(filter(None, (state.get_meta(KEPT_LOCAL_META) or "").split("\n")))
    for name in sorted(set(why) - before):
        log.warning("%s (it stays only on disk; said once)", why[name])
    if record and set(why) != before:
        with state.transaction():
            state.set_meta(KEPT_LOCAL_META, "\n".join(sorted(why)))
    return set(why)


class ServerNaming(Protocol):
    """What `recorded_prefix` asks of a connection (`ImapStore`, push's connection)."""

    def personal_prefix(self) -> str: ...

    def delimiter(self) -> str | None: ...


def recorded_prefix(account: AccountConfig, server: ServerNaming) -> str:
    """The namespace prefix for a connection that does without the account's lock
    and state (`mirrorsync quota`, the daemon's push listeners), as `settle_prefix`
    decides it: the configured one, else the one the account's syncs recorded, else
    the server's unless the account already spells it (`_spelled_with`)."""
    if account.remote.namespace_prefix is not None:
        return account.remote.namespace_prefix
    import os

    from mirrorsync.statefiles import DB_NAME

    path = os.path.join(account.state_dir, DB_NAME)
    recorded: str | None = None
    synced: list[str] = []
    if os.path.exists(path):
        import _sqlite3

        # read-only, waiting out a sync's transaction: this must not change the state
        db = _sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (PREFIX_META,)).fetchone()
            recorded = None if row is None else str(row[0])
            synced = sorted(str(r[0]) for r in db.execute("SELECT name FROM folders"))
        except _sqlite3.OperationalError:
            pass  # no tables yet: a state being created is one not synced
        finally:
            db.close()
    if recorded is not None:
        return recorded
    prefix = server.personal_prefix()
    if not prefix:
        return ""

    def local() -> list[str]:
        from mirrorsync.layout import list_folders

        return list_folders(account.local.path, account.local.layout, warn=lambda *a: None)

    return "" if _spelled_with(prefix, server.delimiter(), synced, local) is not None else prefix
