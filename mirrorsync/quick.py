"""The quick check: finish a `mirrorsync sync` that has nothing to do, fast.

Most runs (cron, a mail reader's hook) find both sides unchanged. The full path then
does little real work (connect, LOGIN, one LIST-STATUS, two `stat` calls per folder)
but spends most of its time importing argparse, logging, imapclient and the engine
first. `try_quick` runs before any of that, importing almost nothing, and decides
whether the run is provably a no-op without knowing the full path's rules: the last
full sync wrote down what it proved (`proof`), and the check only compares.

* The command is a plain ``sync`` (only ``-c FILE`` and account names).
* The configuration file is provably the one the config digest (`configcache`) was
  made from; it names each account's state directory and settings.
* Per account, under the account's lock (`statefiles.AccountLock`): its no-op
  proof was made under these settings, for the state as it is (the proof's token
  is the state's); the local folders (`layout.list_folders`, with nothing to warn
  about) and the server's (LIST-STATUS, `quickimap`) are the ones the proof lists;
  every folder it vouches for has its stamp (`dirstamp.read_stamp`) and its
  UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ as the proof has them.

The password comes from where the full path takes it: the file (``password:``, read
at the position the digest gives, or with PyYAML's C loader), the environment, or
the account's password command, run by `config.resolve_password` itself. Nothing
secret is ever written down.

Only then does it do what the full path does for such a run: record `last_sync` in
each account's state, in a transaction, and print the same summary line. Whenever it
is not sure (a check fails, something is odd, anything raises), it returns an
`Outcome` without a status, having printed and changed nothing, and the full path
runs exactly as it would have. The outcome hands over what the check learned so
that the full path does not pay for it twice: the file as read and parsed, each
password (or the error its command gave), and a refused login or a timed-out
connection.
"""

from __future__ import annotations

import os
import stat
import time

from mirrorsync import configcache, proof, quickimap, xdg
from mirrorsync.dirstamp import read_stamp, settle_now
from mirrorsync.layout import folder_dir, list_folders
from mirrorsync.statefiles import DB_NAME, KILL_ENV, AccountLock, connect
from mirrorsync.words import counted

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Mapping, Sequence

    from mirrorsync.configcache import Entry
    from mirrorsync.environment import Environment

ORACLE_ENV = "MIRRORSYNC_PLAN_ORACLE"  # as `oracle.ENV`, which costs an import


class NotQuick(Exception):
    """A check failed: the run is (or may be) more than a no-op."""


class Loaded:
    """The configuration file as the quick check read it: its identity (taken
    before the read, with the settle clock's time) and its text, parsed. The full
    path takes it from here instead of reading the file again, so that both work
    from the very same bytes."""

    __slots__ = ("before", "document", "key", "st", "text")

    def __init__(
        self, key: str, st: os.stat_result, before: float, text: str, document: object
    ) -> None:
        self.key = key
        self.st = st
        self.before = before
        self.text = text
        self.document = document


class Outcome:
    """What the quick check found. `status` is the exit status of a run it finished,
    None when the full path must run; `why` says why (for tests and debugging). The rest is
    what it learned on the way, for that full path: `read` (the configuration file's
    key and identity, when the digest described it), `loaded` (the file, when it
    parsed it), `learned` (a refused login, a timed-out connection) and each
    account's password or password error (`password`), kept in memory only and good
    only for that very file."""

    __slots__ = ("_passwords", "learned", "loaded", "read", "status", "why")

    def __init__(self) -> None:
        self.status: int | None = None
        self.why = ""
        self.read: tuple[str, configcache.Identity] | None = None
        self.loaded: Loaded | None = None
        self.learned = quickimap.Learned()
        self._passwords: dict[str, str | Exception] = {}

    def password(self, account: str) -> str | None:
        """The password the check obtained for `account`, as `config.resolve_password`
        gave it; None when it did not ask. Raises the error the account's password
        command gave, so that a failing (or prompting) command is not run twice."""
        value = self._passwords.get(account)
        if isinstance(value, Exception):
            raise value
        return value

    def forget_passwords(self) -> None:
        self._passwords.clear()

    def __repr__(self) -> str:  # never the passwords
        return f"Outcome(status={self.status!r}, why={self.why!r})"


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


def select(accounts: list[Entry], names: list[str]) -> list[Entry] | None:
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


def try_quick(argv: Sequence[str], env: Environment) -> Outcome:
    """Finish a provably no-op `sync` as the full path would (the outcome's status),
    or find out that it cannot (no status; nothing printed, nothing changed)."""
    outcome = Outcome()
    if os.environ.get(KILL_ENV):
        outcome.why = "crash test"  # they count the full path's commits
        return outcome
    # `-q` (cron's usual spelling), before or after the command, prints nothing
    rest = [a for a in argv if a not in ("-q", "--quiet")]
    quiet = len(rest) == len(argv) - 1
    gate = parse_argv(rest if quiet else argv)
    if gate is None:
        outcome.why = "not a plain sync"
        return outcome
    config, names = gate
    checked: list[_Checked] = []
    try:
        key = configcache.key_for(config or xdg.default_config(env.environ))
        before = settle_now()
        st = os.stat(key)
        entries = configcache.load(key, configcache.file_identity(st), env.environ)
        chosen = select(entries, names) if entries is not None else None
        if not chosen or not all(a["quick"] is True for a in chosen):
            raise NotQuick("no digest of this configuration, or an account it cannot serve")
        outcome.read = (key, configcache.file_identity(st))
        for entry in chosen:
            checked.append(_check_account(entry, outcome, (key, st, before), env.environ))
        if os.environ.get(ORACLE_ENV) == "1":
            # tests only: a no-op must be one by the full path's plan too (oracle.py)
            from mirrorsync.sync.oracle import verify_quick

            verify_quick(key, chosen, outcome, env.environ)
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
        if os.environ.get(ORACLE_ENV) == "1":
            from mirrorsync.sync.oracle import PlanMismatch

            if isinstance(e, PlanMismatch):
                raise  # a wrong no-op must fail the test, not fall back to the full path
        outcome.why = f"{type(e).__name__}: {e}"
        return outcome
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
    outcome.status = 0
    return outcome


def _check_account(
    entry: Entry,
    outcome: Outcome,
    found: tuple[str, os.stat_result, float],
    environ: Mapping[str, str],
) -> _Checked:
    """Lock the account and check that its proof still holds (see the module's
    docstring); NotQuick (or any other error) otherwise, with the lock released and
    the state closed."""
    started = time.monotonic()
    name = str(entry["name"])
    state_dir = str(entry["state_dir"])
    made = proof.read(state_dir)
    if made is None or made.account != name or made.settings != entry["settings"]:
        raise NotQuick("no proof, or one made under other settings")
    db_path = os.path.join(state_dir, DB_NAME)
    st = os.stat(db_path)
    # the full path's open would chmod it
    if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o600:
        raise NotQuick("state file")
    # Connected first: the server's greeting (its login process) is on its way while
    # the password is found and the state opened, and the LOGIN is answered while the
    # Maildir is looked at. Nothing the server does for it changes anything.
    try:
        session = quickimap.Session(
            made.host, made.port, made.tls, made.ca_file, made.timeout, made.username
        )
    except TimeoutError as e:
        outcome.learned.timed_out[made.host, made.port] = e
        raise
    try:
        session.begin_login(_password(entry, outcome, found, environ))
        lock = AccountLock(state_dir, name).__enter__()
        try:
            db = connect(db_path)
            try:
                _check_unchanged(made, db, session)
                return _Checked(name, lock, db, len(made.folders), time.monotonic() - started)
            except BaseException:
                db.close()
                raise
        except BaseException:
            lock.__exit__(None, None, None)
            raise
    finally:
        session.close()
        if session.refused:
            outcome.learned.refused.add((made.host, made.port, made.username))


def _check_unchanged(made: proof.Proof, db: sqlite3.Connection, session: quickimap.Session) -> None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (proof.TOKEN_META,)).fetchone()
    if row is None or row[0] != made.token:
        raise NotQuick("the proof is not this state's")
    if not os.path.isdir(made.path):
        raise NotQuick("no local root")  # the full path stops, or creates it
    warnings: list[tuple[object, ...]] = []
    local = list_folders(made.path, made.layout, warn=lambda *a: warnings.append(a))
    if warnings or set(local) != made.local:
        raise NotQuick("local folders")
    for n, (_validity, _next, _modseq, stamp) in made.folders.items():
        found = read_stamp(folder_dir(made.path, made.layout, n))
        if found is None or found[0] != stamp:
            raise NotQuick(f"{n}: changed locally")
    numbers = session.list_status((made.delimiter, made.prefix))
    if set(numbers) != made.server:
        raise NotQuick("server folders")
    for n, (uidvalidity, uidnext, highestmodseq, _stamp) in made.folders.items():
        now_validity, now_next, _messages, now_modseq = numbers[n]
        if (now_validity, now_next, now_modseq) != (uidvalidity, uidnext, highestmodseq):
            raise NotQuick(f"{n}: changed on the server")


def _password(
    entry: Entry,
    outcome: Outcome,
    found: tuple[str, os.stat_result, float],
    environ: Mapping[str, str],
) -> str:
    """The account's password, from where the full path takes it (see the module's
    docstring), kept in the outcome for the full path."""
    name = str(entry["name"])
    source = entry["password_source"]
    if source == "password_env":
        value = environ.get(str(entry["password_env"]))
        if not value:
            raise NotQuick("password_env: not set")  # the full path words it
        return value
    if source == "password":
        password = _from_file(entry, outcome, found, "password")
    elif source == "password_command":
        # As the full path runs it, with its words for a failure, which the full
        # path then reports without running the command a second time.
        from mirrorsync.config import RemoteConfig, resolve_password

        command = _from_file(entry, outcome, found, "password_command")
        where = entry["password_from"]
        if not isinstance(command, str) or not isinstance(where, tuple) or len(where) != 2:
            raise NotQuick("password_command")
        config = RemoteConfig(
            host="",
            username="",
            port=0,
            password_command=command,
            source_file=str(where[0]),
            source_key=str(where[1]),
        )
        try:
            password = resolve_password(config, environ)
        except Exception as e:
            outcome._passwords[name] = e
            raise
    else:
        raise NotQuick(f"password source {source!r}")
    if not isinstance(password, str):
        raise NotQuick("password")
    outcome._passwords[name] = password
    return password


def _from_file(
    entry: Entry, outcome: Outcome, found: tuple[str, os.stat_result, float], field: str
) -> object:
    """The account's ``remote.<field>`` in the configuration file, which is the one
    the digest was made from: read at the position the digest gives, where the full
    path found that `configcache.scalar_at` reads it back exactly; else (an unusual
    spelling) read with PyYAML's C loader, once per run, for the full path too."""
    key, st, before = found
    at = entry["source_at"]
    if isinstance(at, int) and not isinstance(at, bool):
        value = configcache.scalar_at(_read_unchanged(key, st).decode("utf-8"), at)
        if value is None:
            raise NotQuick(field)
        return value
    if outcome.loaded is None:
        import yaml

        text = _read_unchanged(key, st).decode("utf-8")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        outcome.loaded = Loaded(key, st, before, text, yaml.load(text, Loader=loader))
    document = outcome.loaded.document
    remote = document["accounts"][entry["name"]]["remote"]  # type: ignore[index]
    if not isinstance(remote, dict):
        raise NotQuick("remote")
    return remote[field]


def _read_unchanged(key: str, st: os.stat_result) -> bytes:
    """The file's bytes, provided it is still the file `st` describes (an edit while
    it was read would make the value read another's)."""
    with open(key, "rb") as f:
        data = f.read()
        if configcache.file_identity(os.fstat(f.fileno())) != configcache.file_identity(st):
            raise NotQuick("the configuration file changed")
    return data
