"""The quick check end to end, against a real Dovecot: an unchanged account is
finished without entering the engine, with the full path's output and its
`last_sync`; every kind of change, and every problem, makes it step aside, and the
full path then picks the change up (or reports the problem) exactly as before."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorsync import maildir as maildir_mod
from mirrorsync import proof, quick, quickimap
from mirrorsync.imap import connection
from mirrorsync.state import AccountLock
from mirrorsync.sync.engine import AccountSync
from tests.conftest import Account, SettleClock
from tests.harness import Mirror, QuickRuns, Result, message

SEEN, FLAGGED = b"\\Seen", b"\\Flagged"
SETTLE = 0.08  # a little more than Stamp.SETTLE_FINE: mtimes here have nanoseconds


class Runs:
    """Which path each `sync` took: the quick check's count and the engine's."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine = 0
        self.quick = QuickRuns(monkeypatch)
        real = AccountSync.run

        def run(sync: AccountSync) -> Any:
            self.engine += 1
            return real(sync)

        monkeypatch.setattr(AccountSync, "run", run)

    def sync(self, m: Mirror, *args: str) -> tuple[Result, bool]:
        """Run `sync`; (result, whether the quick check finished it). When it did, the
        engine was not even entered."""
        quick_before, engine_before = self.quick.finished, self.engine
        r = m.run("sync", *args)
        took_quick = self.quick.finished == quick_before + 1
        if took_quick:
            assert self.engine == engine_before
        elif r.status == 0:
            assert self.engine > engine_before
        return r, took_quick


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Runs:
    return Runs(monkeypatch)


def fill(m: Mirror) -> None:
    c = m.client
    for name in ("Work", "Entwürfe"):
        c.create_folder(name)
    c.append("INBOX", message(1), flags=[SEEN])
    c.append("INBOX", message(2), flags=[])
    c.append("Work", message(3), flags=[SEEN])
    c.append("Work", message(4), flags=[SEEN])
    c.append("Entwürfe", message(5, subject="Grüße"), flags=[SEEN])


def settle(m: Mirror) -> Result:
    """Sync until the state trusts both sides: the first sync downloads (its folders
    get no stamp), the next records the settled stamps. Returns the last, a no-op
    done by the full path."""
    time.sleep(SETTLE)  # the config too must settle before it is cached
    m.sync()
    time.sleep(SETTLE)
    return m.sync()


def quiet_again(m: Mirror, runs: Runs) -> None:
    """After a change, the full path records the new positions and stamps (our own
    STOREs move HIGHESTMODSEQ once more, and stamps must settle): within a few runs
    the quick check takes over again."""
    for _ in range(4):
        time.sleep(SETTLE)
        r, took_quick = runs.sync(m)
        assert r.status == 0, r
        if took_quick:
            return
    raise AssertionError("the quick check never took over again")


@pytest.fixture
def quiet(account: Any, tmp_path: Path, runs: Runs) -> Iterator[Mirror]:
    """A mirrored account that the quick check has just found unchanged."""
    m = Mirror(account, tmp_path)
    fill(m)
    settle(m)
    r, took_quick = runs.sync(m)
    assert took_quick and r.status == 0, r
    yield m
    m.close()


def last_sync(m: Mirror) -> float:
    with sqlite3.connect(m.state_dir / "state.sqlite3") as db:
        return float(db.execute("SELECT value FROM meta WHERE key = 'last_sync'").fetchone()[0])


def timeless(out: str) -> str:
    return re.sub(r"\(\d+\.\ds\)", "(T)", out)


def test_an_unchanged_account_is_done_by_the_quick_check(
    account: Any, tmp_path: Path, runs: Runs
) -> None:
    m = Mirror(account, tmp_path)
    fill(m)
    full = settle(m)
    before = last_sync(m)
    r, took_quick = runs.sync(m)
    assert took_quick, r
    assert (r.status, timeless(r.out), r.err) == (0, "test: 3 folders, no changes (T)\n", "")
    assert timeless(r.out) == timeless(full.out)  # the full path's words
    after = last_sync(m)
    assert before < after <= time.time()
    # the lock is free again, and the next run with the account named is quick too
    with AccountLock(m.state_dir, "test"):
        pass
    r2, took_quick = runs.sync(m, "test")
    assert took_quick and timeless(r2.out) == timeless(r.out)
    m.assert_mirrored()
    m.close()


def test_the_command_decides_before_importing_the_cli(quiet: Mirror) -> None:
    """`python -m mirrorsync` (as `bin/mirrorsync`) finishes a no-op in the quick
    check without importing the CLI, the errors (and their enum), the engine, the
    configuration's validation, PyYAML or the `sqlite3` package (the password is read
    from the file where the digest says it is); a run with work to do still gets the
    whole CLI, but not argparse for a plain sync."""
    heavy = {"mirrorsync.cli", "mirrorsync.errors", "mirrorsync.sync.engine", "sqlite3.dbapi2"}
    heavy |= {"mirrorsync.config", "yaml"}

    def imported(r: Result) -> set[str]:
        return {
            line.rsplit("|", 1)[1].strip()
            for line in r.err.splitlines()
            if line.startswith("import time:")
        }

    # what a run imports is measured as users run it: without the plan oracle, whose
    # full path imports everything (it checks these runs in every other test)
    env = {"PYTHONPROFILEIMPORTTIME": "1", "MIRRORSYNC_PLAN_ORACLE": ""}
    time.sleep(SETTLE)
    r = quiet.run_process("sync", env=env)
    assert r.status == 0 and timeless(r.out) == "test: 3 folders, no changes (T)\n", r
    assert "mirrorsync.quick" in imported(r)
    assert not heavy & imported(r)
    quiet.client.append("INBOX", message(9), flags=[])
    r = quiet.run_process("sync", env=env)
    assert r.status == 0 and "1 downloaded" in r.out, r
    assert heavy <= imported(r)
    assert "argparse" not in imported(r)  # a plain sync is read without it


def test_quick_output_equals_the_full_paths(
    quiet: Mirror, runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick_run, took_quick = runs.sync(quiet)
    assert took_quick
    monkeypatch.setattr(quick, "try_quick", lambda argv, env: quick.Outcome())
    full_run, took_quick = runs.sync(quiet)
    assert not took_quick
    assert (full_run.status, timeless(full_run.out), full_run.err) == (
        quick_run.status,
        timeless(quick_run.out),
        quick_run.err,
    )


def _server_flag(m: Mirror) -> None:
    m.client.select_folder("INBOX")
    m.client.add_flags(min(m.client.search("ALL")), [FLAGGED])


def _server_new(m: Mirror) -> None:
    m.client.append("Work", message(10), flags=[])


def _server_expunge(m: Mirror) -> None:
    m.client.select_folder("Work")
    m.client.delete_messages(min(m.client.search("ALL")))
    m.client.expunge()


def _server_folder(m: Mirror) -> None:
    m.client.create_folder("Fresh")
    m.client.append("Fresh", message(11), flags=[SEEN])


def _local_rename(m: Mirror) -> None:
    """A mail reader flags a message: ":2,S" becomes ":2,FS"."""
    f = next(p for p in m.files("Work") if p.name.endswith(":2,S"))
    f.rename(f.with_name(f.name[:-1] + "FS"))


def _local_new(m: Mirror) -> None:
    (m.folder_dir("Work") / "new" / "1700000000.M1P1.test").write_bytes(
        message(12).replace(b"\r\n", b"\n")
    )


def _local_delete(m: Mirror) -> None:
    m.files("Work")[0].unlink()


def _local_folder(m: Mirror) -> None:
    for sub in ("cur", "new", "tmp"):
        (m.root / "Local" / sub).mkdir(parents=True)


def _needs_match(m: Mirror) -> None:
    # as an interrupted run leaves it: every session voids the proof before it
    # changes the state (see mirrorsync/proof.py)
    proof.void(m.state_dir)
    with sqlite3.connect(m.state_dir / "state.sqlite3") as db:
        db.execute("UPDATE folders SET needs_match = 1 WHERE name = 'Work'")


def _journal(m: Mirror) -> None:
    proof.void(m.state_dir)  # as a killed `mirrorsync archive` leaves it
    with sqlite3.connect(m.state_dir / "state.sqlite3") as db:
        (validity,) = db.execute("SELECT uidvalidity FROM folders WHERE name = 'INBOX'").fetchone()
        db.execute(
            "INSERT INTO archive_journal(folder, uidvalidity, uid, dest, key, hash) "
            "VALUES ('INBOX', ?, 1, 'Archive/INBOX', 'no-such-key', 'x')",
            (validity,),
        )


def _check_server_flag(m: Mirror) -> None:
    assert any("F" in f for (_h, f) in m.local()["INBOX"])


def _check_counts(folder: str, n: int) -> Callable[[Mirror], None]:
    def check(m: Mirror) -> None:
        assert sum(m.local()[folder].values()) == n
        assert len(m.server_uids(folder)) == n

    return check


def _check_local_rename(m: Mirror) -> None:
    assert sum(1 for f in m.server_uids("Work").values() if "\\Flagged" in f) == 1


def _check_local_folder(m: Mirror) -> None:
    assert m.server_uids("Local") == {}  # created on the server (empty)


def _check_state(query: str, expected: object) -> Callable[[Mirror], None]:
    def check(m: Mirror) -> None:
        with sqlite3.connect(m.state_dir / "state.sqlite3") as db:
            assert db.execute(query).fetchone()[0] == expected

    return check


CHANGES = {
    "server-flag": (_server_flag, _check_server_flag),
    "server-new": (_server_new, _check_counts("Work", 3)),
    "server-expunge": (_server_expunge, _check_counts("Work", 1)),
    "server-folder": (_server_folder, _check_counts("Fresh", 1)),
    "local-rename": (_local_rename, _check_local_rename),
    "local-new": (_local_new, _check_counts("Work", 3)),
    "local-delete": (_local_delete, _check_counts("Work", 1)),
    "local-folder": (_local_folder, _check_local_folder),
    "needs-match": (_needs_match, _check_state("SELECT SUM(needs_match) FROM folders", 0)),
    "journal": (_journal, _check_state("SELECT COUNT(*) FROM archive_journal", 0)),
}


@pytest.mark.parametrize("kind", list(CHANGES))
def test_a_change_is_left_to_the_full_path(quiet: Mirror, runs: Runs, kind: str) -> None:
    change, check = CHANGES[kind]
    change(quiet)
    r, took_quick = runs.sync(quiet)
    assert not took_quick and r.status == 0, r
    # (a folder created on the server, a row or journal entry settled: no message counts)
    assert "no changes" not in r.out or kind in ("local-folder", "needs-match", "journal"), r
    check(quiet)
    quiet.assert_mirrored()
    quiet_again(quiet, runs)


def test_a_held_lock_is_reported_by_the_full_path(quiet: Mirror, runs: Runs) -> None:
    with AccountLock(quiet.state_dir, "test"):
        r, took_quick = runs.sync(quiet)
    assert not took_quick
    assert r.status == 1 and r.out == ""
    assert r.err == (
        "mirrorsync: account test is being synced by another mirrorsync process; "
        f"wait for it to finish (lock {quiet.state_dir / 'lock'})\n"
    )
    assert runs.sync(quiet)[1]


@pytest.mark.parametrize("local_change", [False, True])
def test_a_refused_login_is_reported_by_the_full_path(
    quiet: Mirror, runs: Runs, monkeypatch: pytest.MonkeyPatch, local_change: bool
) -> None:
    """Also when the local side changed: the quick check has sent its LOGIN by the
    time it finds that out, and reads the refusal before it steps aside."""
    # Dovecot delays every later login from an address that failed one (anvil's auth
    # penalty, 2 s and up). The quick check (its own `_connect`) fails from 127.0.0.3
    # and the full path (were it to try) from 127.0.0.2, so that neither slows the
    # other, nor the other tests, down.
    real = socket.create_connection

    def from_other_ip(address: Any, timeout: Any = None, *args: Any, **kw: Any) -> Any:
        return real(address, timeout, source_address=("127.0.0.2", 0))

    def quick_from_other_ip(address: Any, port: int, timeout: float) -> Any:
        import _socket

        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.bind(("127.0.0.3", 0))
        sock.connect((address, port))
        return sock

    monkeypatch.setattr(socket, "create_connection", from_other_ip)
    monkeypatch.setattr(quickimap, "_connect", quick_from_other_ip)
    import imapclient

    logins: list[str] = []
    real_login = imapclient.IMAPClient.login

    def counted_login(self: Any, user: str, password: str) -> Any:
        logins.append(user)
        return real_login(self, user, password)

    monkeypatch.setattr(imapclient.IMAPClient, "login", counted_login)
    account = quiet.account  # a user of this test's own
    account.server.add_user(account.user, "another password")
    # Dovecot re-reads a passwd file when its mtime changed, at most once a second
    t = time.time() - 100
    os.utime(account.server.passwd / account.user, (t, t))
    time.sleep(1.1)
    if local_change:
        f = quiet.files("Work")[0]
        f.rename(f.with_name(f.name + "F"))
    r, took_quick = runs.sync(quiet)
    assert not took_quick
    assert (r.status, r.out) == (3, "")
    assert r.err == (
        f"mirrorsync: login refused for {account.user} at {account.host}:{account.port}; "
        "check username and password\n"
    )
    # the server was asked once per run, by the quick check: a second failed login
    # would double its failure count (and what fail2ban sees)
    assert logins == []


class Proxy:
    """A TCP forwarder in front of Dovecot, so a test can make the server vanish."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        # shutdown wakes the accept() under way; close alone would leave it listening
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def test_an_unreachable_server_is_reported_by_the_full_path(
    account: Any, tmp_path: Path, runs: Runs
) -> None:
    proxy = Proxy(account.port)
    m = Mirror(
        account,
        tmp_path,
        remote={
            "host": "127.0.0.1",
            "port": proxy.port,
            "tls": "none",
            "username": account.user,
            "password": account.password,
            "timeout": 20,
        },
    )
    fill(m)
    settle(m)
    assert runs.sync(m)[1]
    proxy.close()
    r, took_quick = runs.sync(m)
    assert not took_quick
    assert (r.status, r.out) == (3, "")
    assert r.err.startswith(f"mirrorsync: connection to 127.0.0.1:{proxy.port} refused")
    m.close()


def test_an_edited_config_is_read_again(quiet: Mirror, runs: Runs) -> None:
    data = yaml.safe_load(quiet.config.read_text())
    data["accounts"]["test"]["folders"] = {"exclude": ["Entwürfe"]}
    quiet.config.write_text(yaml.safe_dump(data, allow_unicode=True))
    time.sleep(SETTLE)
    r, took_quick = runs.sync(quiet)
    assert not took_quick
    assert r.out.startswith("test: 2 folders, no changes")  # the new filter applies
    r, took_quick = runs.sync(quiet)
    assert took_quick and r.out.startswith("test: 2 folders, no changes")


def test_a_server_without_list_status_never_takes_the_quick_path(
    basic_account: Any, tmp_path: Path, runs: Runs
) -> None:
    m = Mirror(basic_account, tmp_path)
    fill(m)
    settle(m)
    for _ in range(2):
        r, took_quick = runs.sync(m)
        assert not took_quick and r.status == 0
        assert r.out.startswith("test: 3 folders, no changes")
    m.close()


def test_a_change_in_the_same_tick_as_the_recorded_stamp_is_seen(
    quiet: Mirror, runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stamp taken too soon after a change is not recorded: a second change in the
    same mtime tick would leave the directory's mtime as it was, and an equal stamp
    would hide it. So the next run cannot be quick, and the full path scans."""
    # as on a file system with whole-second mtimes: every stamp taken now is "fresh"
    margins = maildir_mod.Stamp.SETTLE_FINE, maildir_mod.Stamp.SETTLE_COARSE
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_FINE", 3600.0)
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_COARSE", 3600.0)
    _local_rename(quiet)
    r, took_quick = runs.sync(quiet)
    assert not took_quick  # the change is seen; Work's stamp is left unrecorded
    r, took_quick = runs.sync(quiet)  # takes in the HIGHESTMODSEQ of our own STORE
    assert not took_quick and r.out.startswith("test: 3 folders, no changes")
    # A second flag change "in the same tick": cur/'s mtime stays what it was.
    cur = quiet.folder_dir("Work") / "cur"
    was = cur.stat()
    _local_rename(quiet)
    os.utime(cur, ns=(was.st_atime_ns, was.st_mtime_ns))
    r, took_quick = runs.sync(quiet)
    assert not took_quick
    assert sum(1 for f in quiet.server_uids("Work").values() if "\\Flagged" in f) == 2
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_FINE", margins[0])
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_COARSE", margins[1])
    quiet_again(quiet, runs)


def test_two_accounts_are_quick_together_or_not_at_all(
    make_account: Callable[[], Any], tmp_path: Path, runs: Runs
) -> None:
    one, two = Mirror(make_account(), tmp_path / "one"), Mirror(make_account(), tmp_path / "two")
    accounts = {
        name: yaml.safe_load(m.config.read_text())["accounts"]["test"]
        for name, m in (("one", one), ("two", two))
    }
    config = tmp_path / "both.yaml"
    config.write_text(yaml.safe_dump({"accounts": accounts}, allow_unicode=True))
    for m in (one, two):
        m.config = config
        fill(m)
    settle(one)  # syncs both
    r, took_quick = runs.sync(one)
    assert took_quick
    assert timeless(r.out) == "one: 3 folders, no changes (T)\ntwo: 3 folders, no changes (T)\n"
    _server_new(two)
    before = last_sync(one)
    r, took_quick = runs.sync(one)
    assert not took_quick
    assert timeless(r.out) == "one: 3 folders, no changes (T)\ntwo: 3 folders, 1 downloaded (T)\n"
    assert last_sync(one) > before  # written by the full path, not left half done
    r, took_quick = runs.sync(one, "one")
    assert took_quick and timeless(r.out) == "one: 3 folders, no changes (T)\n"
    one.close()
    two.close()


def _tls_mirror(account: Any, tmp_path: Path, tls: str, ca_file: str) -> Mirror:
    server = account.server
    return Mirror(
        account,
        tmp_path,
        remote={
            "host": server.host,
            "port": server.imaps_port if tls == "imaps" else server.port,
            "tls": tls,
            "ca_file": ca_file,
            "username": account.user,
            "password": account.password,
            "timeout": 20,
        },
    )


def test_implicit_tls_is_quick_and_starttls_is_left_to_the_full_path(
    make_account: Callable[[], Any], tmp_path: Path, runs: Runs
) -> None:
    for tls in ("imaps", "starttls"):
        account = make_account()
        m = _tls_mirror(account, tmp_path / tls, tls, str(account.server.cert))
        fill(m)
        settle(m)
        r, took_quick = runs.sync(m)
        assert r.status == 0 and r.out.startswith("test: 3 folders, no changes"), r
        assert took_quick == (tls == "imaps")
        m.close()


def test_an_untrusted_certificate_is_reported_by_the_full_path(
    account: Any, tmp_path: Path, runs: Runs
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(account.server.cert).read_bytes())
    m = _tls_mirror(account, tmp_path, "imaps", str(ca))
    fill(m)
    settle(m)
    assert runs.sync(m)[1]
    # ca_file now holds another certificate (the configuration, and so the cache, is
    # unchanged): the quick check's handshake fails, and the full path says why
    key = str(tmp_path / "key.pem")
    new_cert = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    subprocess.run(
        [*new_cert.split(), "-days", "1", "-subj", "/CN=other", "-keyout", key, "-out", str(ca)],
        check=True,
        capture_output=True,
    )
    r, took_quick = runs.sync(m)
    assert not took_quick
    assert (r.status, r.out) == (3, "")
    assert r.err.startswith(
        f"mirrorsync: TLS certificate of {account.host}:{account.server.imaps_port} "
        f"not trusted by ca_file {ca}"
    )
    m.close()


def test_filters_local_only_folders_and_maildirpp_are_honoured(
    account: Any, tmp_path: Path, runs: Runs
) -> None:
    root = tmp_path / "Mail"
    m = Mirror(
        account,
        tmp_path,
        local={"path": str(root), "layout": "maildir++", "local_only": ["Archive", "Archive/*"]},
        folders={"exclude": ["Entwürfe"]},
    )
    fill(m)
    for sub in ("cur", "new", "tmp"):
        (root / ".Archive" / sub).mkdir(parents=True)
    settle(m)
    r, took_quick = runs.sync(m)
    assert took_quick and r.out.startswith("test: 2 folders, no changes"), r
    # what no sync looks at does not stop the quick check either
    (root / ".Archive" / "new" / "1700000000.M1P1.kept").write_bytes(message(20))
    m.client.append("Entwürfe", message(22), flags=[])
    r, took_quick = runs.sync(m)
    assert took_quick and r.out.startswith("test: 2 folders, no changes"), r
    # A folder that appears is compared, not judged: the full path finds that it
    # does nothing with an excluded one, and its proof lists it from then on.
    for sub in ("cur", "new", "tmp"):
        (root / ".Entwürfe" / sub).mkdir(parents=True)  # excluded
    (root / ".Entwürfe" / "new" / "1700000000.M2P1.kept").write_bytes(message(21))
    r, took_quick = runs.sync(m)
    assert not took_quick and r.out.startswith("test: 2 folders, no changes"), r
    r, took_quick = runs.sync(m)
    assert took_quick and r.out.startswith("test: 2 folders, no changes"), r
    # but the INBOX, which is the root itself here, does
    (root / "new" / "1700000000.M3P1.new").write_bytes(message(23).replace(b"\r\n", b"\n"))
    r, took_quick = runs.sync(m)
    assert not took_quick and r.out.startswith("test: 2 folders, 1 uploaded"), r
    m.close()


def test_tls_none_warns_on_every_run_unless_the_host_is_loopback(
    account: Any,
    tmp_path: Path,
    runs: Runs,
    monkeypatch: pytest.MonkeyPatch,
    settle_clock: Any,
) -> None:
    m = Mirror(account, tmp_path)
    fill(m)
    for _ in range(3):
        m.sync()
        settle_clock.advance()
    r, took_quick = runs.sync(m)
    assert took_quick and "unencrypted" not in r.err  # 127.0.0.1: nothing to say
    # The same server seen under a name that is not this machine's: every run says
    # so, the no-op too (the quick check steps aside for the full path's warning).
    monkeypatch.setattr(connection, "is_loopback", lambda _host: False)
    for _ in range(2):
        r, took_quick = runs.sync(m)
        assert r.status == 0 and not took_quick, r
        assert r.err.count("tls: none sends the password and all mail unencrypted") == 1, r


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("127.example.org", False),
        ("imap.example.org", False),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert connection.is_loopback(host) is loopback


# -- no secret written down, and the proof's bounds -----------------------------------


def _files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("source", ["password", "password_command", "password_command-folded"])
def test_no_password_is_written_to_the_cache_or_the_state(
    dovecot: Any,
    tmp_path: Path,
    runs: Runs,
    settle_clock: SettleClock,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    """After full runs, a quick no-op and a quick check that hands over to the full
    path, neither the cache nor the state directory holds the password (nor the
    password command, which may hold one); the command ran once per run, whether
    the quick check read it where the digest points or (folded over two lines, as
    PyYAML writes a long one) with PyYAML."""
    secret = "Sekrit-" + os.urandom(8).hex()
    user = "leak-" + os.urandom(4).hex()
    dovecot.add_user(user, secret)
    remote: dict[str, Any] = {
        "host": dovecot.host,
        "port": dovecot.port,
        "tls": "none",
        "username": user,
        "timeout": 20,
    }
    calls = tmp_path / "calls"
    if source == "password":
        remote["password"] = secret
        said = [secret]
    else:
        # the command's runs are counted: the plan oracle's own logins would add theirs
        monkeypatch.setenv("MIRRORSYNC_PLAN_ORACLE", "")
        (tmp_path / "secret").write_text(secret + "\n")
        remote["password_command"] = f"echo x >> {calls}; cat {tmp_path / 'secret'}"
        said = [secret, str(calls)]
    m = Mirror(Account(dovecot, user, secret), tmp_path / "m", remote=remote)
    if source != "password_command-folded":
        m.config.write_text(yaml.safe_dump(yaml.safe_load(m.config.read_text()), width=10**6))
    fill(m)
    m.sync()
    settle_clock.advance()
    m.sync()
    settle_clock.advance()
    r, took_quick = runs.sync(m)
    assert took_quick and r.status == 0, r
    m.client.append("INBOX", message(30), flags=[])
    r, took_quick = runs.sync(m)
    assert not took_quick and "1 downloaded" in r.out, r
    settle_clock.advance()
    runs.sync(m)
    if source != "password":
        # three full runs, a quick no-op, a quick check handing over: once each
        assert calls.read_text().count("x") == 5
    cache = Path(os.environ["XDG_CACHE_HOME"])
    files = _files_under(cache, m.state_dir)
    assert any(p.name == proof.FILE_NAME for p in files)  # something to look into
    assert any(p.name.startswith("config-") for p in files)
    for p in files:
        data = p.read_bytes()
        for text in said:
            assert text.encode() not in data, (p, text)
    m.close()


def test_a_proof_that_is_not_the_states_is_not_taken(quiet: Mirror, runs: Runs) -> None:
    """A state restored from a backup (here: its proof token changed) is not vouched
    for by a proof written with another state."""
    with sqlite3.connect(quiet.state_dir / "state.sqlite3") as db:
        db.execute("UPDATE meta SET value = 'restored' WHERE key = ?", (proof.TOKEN_META,))
    r, took_quick = runs.sync(quiet)
    assert not took_quick and r.status == 0 and "no changes" in r.out, r
    quiet_again(quiet, runs)


def test_every_session_voids_the_proof_first(quiet: Mirror, runs: Runs) -> None:
    """Whatever opens the state for work (archive, migrate, a sync) may change what
    the proof summarizes: the proof is gone, and the next sync is a full one."""
    from mirrorsync import cli, config

    assert (quiet.state_dir / proof.FILE_NAME).exists()
    account = config.load(quiet.config, os.environ).accounts["test"]
    with cli.account_session(account, cli.Environment()):
        assert not (quiet.state_dir / proof.FILE_NAME).exists()
    r, took_quick = runs.sync(quiet)
    assert not took_quick and "no changes" in r.out, r
    assert (quiet.state_dir / proof.FILE_NAME).exists()


def test_a_proof_that_cannot_be_written_never_fails_a_sync(quiet: Mirror, runs: Runs) -> None:
    # the in-process run writes the proof through a temporary file of this name
    (quiet.state_dir / f"{proof.FILE_NAME}.{os.getpid()}.tmp").mkdir()
    quiet.client.append("INBOX", message(40), flags=[])
    r, took_quick = runs.sync(quiet)
    assert not took_quick and r.status == 0 and "1 downloaded" in r.out, r
    assert not (quiet.state_dir / proof.FILE_NAME).exists()


def test_a_proof_that_cannot_be_removed_stops_a_run_in_one_line(quiet: Mirror) -> None:
    """It would go on vouching for a state that the run changes."""
    (quiet.state_dir / proof.FILE_NAME).unlink()
    (quiet.state_dir / proof.FILE_NAME).mkdir()
    quiet.client.append("INBOX", message(40), flags=[])
    r = quiet.run("sync")
    assert r.status == 1 and r.out == "", r  # the account failed, as for any state error
    assert r.err == (
        f"mirrorsync: cannot remove {quiet.state_dir / proof.FILE_NAME}: Is a directory; "
        "remove it by hand (it only speeds up a sync with nothing to do) and re-run\n"
    )
