"""The no-op proof: what a successful full sync proved about one account, written down
so that the next run can tell it has nothing to do by comparing, not by reasoning.

A full sync that ends with every folder trusted leaves ``<state_dir>/noop-proof``:
the settings it ran with (`configcache.fingerprint`), the server's address, the
folder naming, both listings as it saw them, and for each folder it syncs the
UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ and the Maildir stamp the state recorded.
While all of that is still true, the full path would plan nothing: the folder sets
would agree, and `AccountSync.gather` would find every folder unchanged by its own
rule (same numbers, same stamp, trusted row). `mirrorsync.quick` only checks that.

It holds no secret: no password, no password command (which may hold one), no
message. It lives in the state directory, beside the state it summarizes, so that
moving or deleting the state takes the proof with it. It is only as good as that
state: every session that opens the state for work deletes it first (`void`), under
the account's lock, and the state records which proof it goes with (`TOKEN_META`),
so that a state restored from a backup is not vouched for by a newer proof.

Plain values in `marshal` (no import to read it), mode 0600, replaced atomically.
"""

from __future__ import annotations

import marshal
import os

from mirrorsync.configcache import fingerprint
from mirrorsync.names import DELIMITER_META, KEPT_LOCAL_META, PREFIX_META, loaded_delimiter
from mirrorsync.xdg import read_private, replace_private

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from mirrorsync.config import AccountConfig
    from mirrorsync.state import State

FILE_NAME = "noop-proof"
# The state's meta key holding the token of the proof written with it.
TOKEN_META = "noop_proof"
# Bump whenever what is stored, or what it means, changes.
FORMAT_VERSION = 1

# (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, local stamp) of one folder
FolderFacts = tuple[int, int, int, str]


class Proof:
    """One account's proof, as `read` returns it (see the module's docstring)."""

    __slots__ = (
        "account",
        "ca_file",
        "delimiter",
        "folders",
        "host",
        "layout",
        "local",
        "path",
        "port",
        "prefix",
        "server",
        "settings",
        "timeout",
        "tls",
        "token",
        "username",
    )

    def __init__(self, data: dict[str, object]) -> None:
        """From the stored mapping; KeyError or TypeError when it is not one."""
        self.account = _text(data["account"])
        self.settings = _text(data["settings"])
        self.token = _text(data["token"])
        self.host = _text(data["host"])
        self.port = _integer(data["port"])
        self.tls = _text(data["tls"])
        self.username = _text(data["username"])
        ca_file = data["ca_file"]
        self.ca_file = None if ca_file is None else _text(ca_file)
        timeout = data["timeout"]
        if not isinstance(timeout, float):
            raise TypeError("timeout")
        self.timeout = timeout
        self.path = _text(data["path"])
        self.layout = _text(data["layout"])
        delimiter = data["delimiter"]
        self.delimiter = None if delimiter is None else _text(delimiter)
        self.prefix = _text(data["prefix"])
        self.local = _names(data["local"])
        self.server = _names(data["server"])
        folders = data["folders"]
        if not isinstance(folders, dict):
            raise TypeError("folders")
        self.folders: dict[str, FolderFacts] = {}
        for name, facts in folders.items():
            uidvalidity, uidnext, highestmodseq, stamp = facts
            self.folders[_text(name)] = (
                _integer(uidvalidity),
                _integer(uidnext),
                _integer(highestmodseq),
                _text(stamp),
            )


def path_of(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(state_dir), FILE_NAME)


def read(state_dir: str | os.PathLike[str]) -> Proof | None:
    """The account's proof, or None when there is none that this code can read
    (missing, someone else's, another version, damaged)."""
    raw = read_private(path_of(state_dir))
    if raw is None:
        return None
    try:
        data = marshal.loads(raw)
        if not isinstance(data, dict) or data.get("version") != _code():
            return None
        return Proof(data)
    except (ValueError, EOFError, KeyError, TypeError):
        return None


def void(state_dir: str | os.PathLike[str]) -> None:
    """Delete the account's proof (OSError when it cannot be deleted)."""
    try:  # noqa: SIM105 (contextlib.suppress would cost the quick check an import)
        os.unlink(path_of(state_dir))
    except FileNotFoundError:
        pass


def void_for_work(state_dir: str | os.PathLike[str]) -> None:
    """`void`, for a session about to open the state for work, under the account's
    lock: a proof that cannot be removed stops it, since it would go on vouching for
    a state it no longer describes."""
    try:
        void(state_dir)
    except OSError as e:
        from mirrorsync.errors import StateError

        raise StateError(
            f"cannot remove {path_of(state_dir)}: {e.strerror or e}",
            "remove it by hand (it only speeds up a sync with nothing to do) and re-run",
        ) from e


def record(
    account: AccountConfig,
    state: State,
    server: Iterable[str],
    local: Iterable[str],
    wanted: Callable[[Iterable[str]], set[str]],
) -> bool:
    """Write the proof of a successful full sync of `account`, which listed the
    folders `server` (every selectable one) and `local` (every one on disk) and
    syncs `wanted` of them; called inside the transaction that records the sync,
    which then records the proof's token too. Whether one was written: none when
    the next full run could still have work to do whatever happens meanwhile (a
    folder without a trusted row: matching pending, no HIGHESTMODSEQ, no settled
    stamp), when the folder sets do not agree (this run created or deleted
    folders, so its listings are not the ones it leaves), or when the file cannot
    be written (the proof is an optimisation: it never fails a sync)."""
    try:
        void(account.state_dir)
    except OSError:
        return False
    rows = {n: r for n, r in state.folders().items() if n in wanted([n])}
    delimiter, prefix = state.get_meta(DELIMITER_META), state.get_meta(PREFIX_META)
    kept = set(filter(None, (state.get_meta(KEPT_LOCAL_META) or "").split("\n")))
    server, local = sorted(server), sorted(local)
    if (
        delimiter is None
        or prefix is None
        or any(r.needs_match or not r.highestmodseq or not r.local_stamp for r in rows.values())
        or wanted(server) != set(rows)
        or wanted(local) - kept != set(rows)
    ):
        return False
    remote = account.remote
    token = os.urandom(8).hex()
    data = {
        "version": _code(),
        "account": account.name,
        "settings": fingerprint(account),
        "token": token,
        "host": remote.host,
        "port": remote.port,
        "tls": remote.tls,
        "username": remote.username,
        "ca_file": None if remote.ca_file is None else str(remote.ca_file),
        "timeout": float(remote.timeout),
        "path": str(account.local.path),
        "layout": account.local.layout,
        "delimiter": loaded_delimiter(delimiter),
        "prefix": prefix,
        "local": local,
        "server": server,
        "folders": {
            n: (r.uidvalidity, r.uidnext, r.highestmodseq, r.local_stamp)
            for n, r in sorted(rows.items())
        },
    }
    # the file first: a crash before the state's commit leaves a proof whose token
    # the state does not hold, which no quick check accepts
    try:
        replace_private(path_of(account.state_dir), marshal.dumps(data))
    except OSError:
        return False  # an optimisation: a full, read-only or failing disk is the sync's
    state.set_meta(TOKEN_META, token)
    return True


def _code() -> tuple[int, str, int]:
    """What a proof's meaning depends on besides its contents: its format, the
    version that wrote it and the state's schema."""
    from mirrorsync import __version__
    from mirrorsync.statefiles import SCHEMA_VERSION

    return (FORMAT_VERSION, __version__, SCHEMA_VERSION)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


def _names(value: object) -> frozenset[str]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return frozenset(_text(v) for v in value)
