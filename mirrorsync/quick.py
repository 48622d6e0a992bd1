"""The quick check: finish a `mirrorsync sync` that has nothing to do, fast.

Most runs (cron, a mail reader's hook) find both sides unchanged. The full path then
does about 30 ms of real work (connect, LOGIN, one LIST-STATUS, two `stat` calls per
folder) but spends over 100 ms importing argparse, logging, YAML, imapclient and the
engine first. `try_quick` runs before any of that, importing almost nothing, and
decides whether the run is provably a no-op by the very tests `AccountSync.run` and
`AccountSync.gather` apply, with the same code wherever code decides:

* the command is a plain ``sync`` (only ``-c FILE`` and account names);
* the configuration comes from the parsed-config cache (`configcache`), which a full
  run wrote and which still provably describes the file; every account selected
  has its password in the file;
* per account, under the account's lock (`statefiles.AccountLock`): the state opens
  (`statefiles.connect`) at this schema with nothing in the archive journal; the
  Maildir root exists; the state records the server's delimiter and namespace
  prefix (`naming`), which the listing must confirm; the folders wanted
  (`names.included`, not local-only, not kept local for a name the server cannot
  hold, that set as recorded) are the same in the state, on disk
  (`layout.list_folders`, which must have nothing to warn about) and on the server;
  every one of them has a trusted state row (no `needs_match`, a non-zero
  HIGHESTMODSEQ, a recorded local stamp) whose UIDVALIDITY, UIDNEXT and
  HIGHESTMODSEQ equal the server's LIST-STATUS numbers (`quickimap`) and whose
  local stamp equals the folder's stamp now (`dirstamp.read_stamp`, as
  `MaildirFolder.stamp`).

Only then does it do what the full path does for such a run: record `last_sync` in
each account's state, in a transaction, and print the same summary line. Whenever it
is not sure (a check fails, something is odd, anything raises), it returns None
having printed and changed nothing, and the full path runs exactly as it would have,
so it reports problems in its own words and picks up every change. The checks are
what the full path would find anyway; the only cost of a failed quick check is its
own few milliseconds (and the LIST-STATUS round trip, when only the server changed).
"""

from __future__ import annotations

import os
import stat
import time

from mirrorsync import configcache, xdg
from mirrorsync.dirstamp import read_stamp
from mirrorsync.layout import folder_dir, list_folders
from mirrorsync.names import (
    DELIMITER_META,
    KEPT_LOCAL_META,
    PREFIX_META,
    included,
    loaded_delimiter,
    matches_any,
    server_spelling,
)
from mirrorsync.statefiles import DB_NAME, KILL_ENV, SCHEMA_VERSION, AccountLock, connect
from mirrorsync.words import counted

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable, Sequence

    from mirrorsync import quickimap
    from mirrorsync.configcache import Facts
    from mirrorsync.environment import Environment

# How many runs the quick check finished (so tests can tell which path ran).
finished = 0

# The tables `state._SCHEMA` creates: a state missing one would be changed by the full
# path's open, so it is not a state the quick check may vouch for.
_TABLES = frozenset({"meta", "folders", "messages", "archive_journal"})


class NotQuick(Exception):
    """A check failed: the run is (or may be) more than a no-op."""


def parse_argv(argv: Sequence[str]) -> tuple[str | None, list[str]] | None:
    """(config file or None, account names) of a plain ``[-c FILE] sync [ACCOUNT...]``,
    or None for anything else: every other option changes what a run does or prints,
    and unusual spellings (``-cFILE``, abbreviations, repeats) are left to argparse."""
    config: str | None = None
    i = 0
    while True:
        if i >= len(argv):
            return None  # no command
        arg = argv[i]
        if arg == "sync":
            break
        if arg in ("-c", "--config") and config is None and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config=") and config is None:
            value, i = arg[len("--config=") :], i + 1
        else:
            return None
        if not value or value.startswith("-"):
            return None
        config = value
    names = list(argv[i + 1 :])
    if any(not n or n.startswith("-") for n in names) or len(set(names)) != len(names):
        return None
    return config, names


def select(accounts: list[Facts], names: list[str]) -> list[Facts] | None:
    """The accounts named (in the order given), or all of them in the file's order,
    as `cli._select_accounts` picks them; None when a name is unknown (an error the
    full path words)."""
    if not names:
        return accounts
    by_name = {a["name"]: a for a in accounts}
    if any(n not in by_name for n in names):
        return None
    return [by_name[n] for n in names]


class _Checked:
    """An account found unchanged, still locked, with its state open."""

    def __init__(
        self, name: str, lock: AccountLock, db: sqlite3.Connection, folders: int, took: float
    ) -> None:
        self.name = name
        self.lock = lock
        self.db = db
        self.folders = folders
        self.took = took

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            self.lock.__exit__(None, None, None)


def main() -> int:
    """The `mirrorsync` command (`bin/mirrorsync`, `python -m mirrorsync`): the quick
    check, then, unless it finished the run, the full CLI."""
    import sys

    from mirrorsync.environment import Environment

    env = Environment()
    try:
        status = try_quick(sys.argv[1:], env)
    except KeyboardInterrupt:
        from mirrorsync.cli import interrupted

        return interrupted(env)
    if status is not None:
        return status
    from mirrorsync import cli

    return cli.main(env=env, quick=False)


def try_quick(argv: Sequence[str], env: Environment) -> int | None:
    """The exit status of a provably no-op `sync`, done as the full path would do
    it; None (nothing printed, nothing changed) when it is not sure."""
    global finished
    from mirrorsync import quickimap

    # what an earlier run in this process (tests, mostly) learned is not this run's
    quickimap.refused_logins.clear()
    quickimap.timed_out.clear()
    if os.environ.get(KILL_ENV):
        return None  # the crash tests count the full path's commits
    # `-q` (cron's usual spelling), before or after the command, prints nothing
    rest = [a for a in argv if a not in ("-q", "--quiet")]
    quiet = len(rest) == len(argv) - 1
    gate = parse_argv(rest if quiet else argv)
    if gate is None:
        return None
    config, names = gate
    checked: list[_Checked] = []
    try:
        key = configcache.key_for(config or xdg.default_config(env.environ))
        facts = configcache.load(key, env.environ)
        chosen = select(facts, names) if facts is not None else None
        if not chosen or not all(a["quick"] is True for a in chosen):
            return None
        for account in chosen:
            checked.append(check_account(account))
        if os.environ.get("MIRRORSYNC_PLAN_ORACLE") == "1":
            # tests only: a no-op must be one by the full path's plan too (oracle.py)
            from mirrorsync.sync.oracle import verify_quick

            verify_quick(key, chosen, env.environ)
        # All unchanged: record the sync as `AccountSync.run` does at its end. Every
        # transaction is opened before any is committed, so a failure leaves no
        # account half done.
        started = time.monotonic()
        for c in checked:
            c.db.execute("BEGIN IMMEDIATE")
            c.db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_sync', ?)",
                (str(time.time()),),
            )
        for c in checked:
            c.db.execute("COMMIT")
        commit_took = time.monotonic() - started
    except Exception as e:
        for c in checked:
            try:
                if c.db.in_transaction:
                    c.db.execute("ROLLBACK")
            except Exception:
                pass
        if os.environ.get("MIRRORSYNC_PLAN_ORACLE") == "1":
            from mirrorsync.sync.oracle import PlanMismatch

            if isinstance(e, PlanMismatch):
                raise  # a wrong no-op must fail the test, not fall back to the full path
        return None
    finally:
        for c in checked:
            try:  # noqa: SIM105 (contextlib.suppress would cost an import)
                c.close()
            except Exception:
                pass
    for c in checked if not quiet else ():
        # the line `cli.sync_account` prints for an account with no changes
        env.stdout.write(
            f"{c.name}: {counted(c.folders, 'folder')}, no changes ({c.took + commit_took:.1f}s)\n"
        )
    finished += 1
    return 0


def check_account(account: Facts) -> _Checked:
    """Lock the account and check that a sync would find nothing to do (see the
    module's docstring); NotQuick (or any other error) otherwise, with the lock
    released and the state closed."""
    from mirrorsync import quickimap

    started = time.monotonic()
    name = str(account["name"])
    state_dir = str(account["state_dir"])
    db_path = os.path.join(state_dir, DB_NAME)
    st = os.stat(db_path)  # none yet: the full path creates it
    # the full path's open would chmod it
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o600:
        raise NotQuick("state file")
    ca_file = account["ca_file"]
    # Connected first: the server's greeting (its login process) is on its way while
    # the state is opened, and the LOGIN is answered while the Maildir is looked at.
    # Nothing the server does for it changes anything.
    session = quickimap.Session(
        str(account["host"]),
        _integer(account["port"]),
        str(account["tls"]),
        None if ca_file is None else str(ca_file),
        _number(account["timeout"]),
        str(account["username"]),
        str(account["password"]),
    )
    try:
        lock = AccountLock(state_dir, name).__enter__()
        try:
            db = connect(db_path)
            try:
                folders = _check_unchanged(account, db, session)
                return _Checked(name, lock, db, folders, time.monotonic() - started)
            except BaseException:
                db.close()
                raise
        except BaseException:
            lock.__exit__(None, None, None)
            raise
    finally:
        session.close()


def _check_unchanged(account: Facts, db: sqlite3.Connection, session: quickimap.Session) -> int:
    """The number of folders a sync would report, if it would change nothing."""
    include = _strings(account["include"])
    exclude = _strings(account["exclude"])
    local_only = _strings(account["local_only"])

    def wanted(names: Iterable[str]) -> set[str]:
        # AccountSync._wanted without --folder
        return {
            n for n in names if included(include, exclude, n) and not matches_any(local_only, n)
        }

    prior = _read_state(db)
    known = wanted(prior)
    naming = _naming(account, db)
    root, layout = str(account["path"]), str(account["layout"])
    if not os.path.isdir(root):
        raise NotQuick("no local root")  # the full path stops, or creates it
    session.begin_login()
    warnings: list[tuple[object, ...]] = []
    local = wanted(list_folders(root, layout, warn=lambda *a: warnings.append(a)))
    # the local folders the server cannot hold stay local (`naming.kept_local`), each
    # warned about once, by the run that met it first
    kept = {n for n in local - known if not representable(n, *naming)}
    if warnings or local - kept != known or kept != _kept_local(db):
        raise NotQuick("local folders")
    for n in known:
        uidvalidity, uidnext, highestmodseq, needs_match, local_stamp = prior[n]
        if needs_match or not highestmodseq or not local_stamp:
            raise NotQuick(f"{n}: not trusted")
        found = read_stamp(folder_dir(root, layout, n))
        if found is None or found[0] != local_stamp:
            raise NotQuick(f"{n}: changed locally")
    numbers = session.list_status(naming)
    if wanted(numbers) != known:
        raise NotQuick("server folders")
    for n in known:
        uidvalidity, uidnext, highestmodseq, _needs_match, _stamp = prior[n]
        now_validity, now_next, _messages, now_modseq = numbers[n]
        if (now_validity, now_next, now_modseq) != (uidvalidity, uidnext, highestmodseq):
            raise NotQuick(f"{n}: changed on the server")
    return len(known)


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _naming(account: Facts, db: sqlite3.Connection) -> tuple[str | None, str]:
    """(delimiter, namespace prefix) as the last full sync used them (`naming`)."""
    delimiter, prefix = _meta(db, DELIMITER_META), _meta(db, PREFIX_META)
    configured = account.get("namespace_prefix")
    if delimiter is None or prefix is None or configured not in (None, prefix):
        raise NotQuick("folder naming not recorded, or configured otherwise")
    return loaded_delimiter(delimiter), prefix


def _kept_local(db: sqlite3.Connection) -> set[str]:
    return set(filter(None, (_meta(db, KEPT_LOCAL_META) or "").split("\n")))


def representable(name: str, delimiter: str | None, prefix: str) -> bool:
    try:
        server_spelling(name, delimiter, prefix)
    except ValueError:
        return False
    return True


def _read_state(db: sqlite3.Connection) -> dict[str, tuple[int, int, int, bool, str]]:
    """The folder rows, after checking that the state is one the full path would
    open without changing it and that no archive is half done."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables >= _TABLES:
        raise NotQuick("state schema")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or str(row[0]) != str(SCHEMA_VERSION):
        raise NotQuick("state schema version")
    if db.execute("SELECT COUNT(*) FROM archive_journal").fetchone()[0]:
        raise NotQuick("an archive to finish")
    rows = db.execute(
        "SELECT name, uidvalidity, uidnext, highestmodseq, needs_match, local_stamp FROM folders"
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows}


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise NotQuick("cache")
    return value


def _number(value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise NotQuick("cache")
    return float(value)


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise NotQuick("cache")
    return value
