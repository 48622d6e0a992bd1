"""Unit tests for the quick check's parts: the argv gate (checked against argparse),
the parsed-config cache (every way it must refuse to be used), and the LIST-STATUS
reader with its modified UTF-7 decoding (checked against imapclient and against
`ImapStore` on the same scripted server)."""

from __future__ import annotations

import argparse
import io
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorsync import cli, configcache, quick, quickimap
from mirrorsync import maildir as maildir_mod
from mirrorsync.config import RemoteConfig
from mirrorsync.imap import connection
from mirrorsync.imap.store import ImapStore

# -- the argv gate ------------------------------------------------------------------------

ACCEPTED = [
    (["sync"], None, []),
    (["sync", "work"], None, ["work"]),
    (["-c", "f.yaml", "sync"], "f.yaml", []),
    (["--config", "f.yaml", "sync", "a", "b"], "f.yaml", ["a", "b"]),
    (["--config=f.yaml", "sync", "b", "a"], "f.yaml", ["b", "a"]),
    (["-c", "sync", "sync"], "sync", []),
]


@pytest.mark.parametrize(("argv", "config", "names"), ACCEPTED)
def test_argv_gate_accepts_plain_syncs_as_argparse_reads_them(
    argv: list[str], config: str | None, names: list[str]
) -> None:
    assert quick.parse_argv(argv) == (config, names)
    # argparse reads the same, with every other option at its default
    args = cli.build_parser().parse_args(argv)
    assert (args.command, args.config, args.accounts) == ("sync", config, names)
    assert (args.verbose, args.quiet, args.folder) == (0, False, [])
    assert (args.dry_run, args.force, args.archive) == (False, False, False)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["daemon"],
        ["check-config"],
        ["archive"],
        ["--version"],
        ["-h"],
        ["sync", "--dry-run"],
        ["sync", "--force"],
        ["sync", "--archive"],
        ["sync", "--folder", "INBOX"],
        ["sync", "-h"],
        ["-v", "sync"],
        ["-vv", "sync"],
        ["-q", "sync"],
        ["-c", "f.yaml"],
        ["-c"],
        ["-c", "f", "-c", "g", "sync"],
        ["-cf.yaml", "sync"],
        ["-c=f.yaml", "sync"],
        ["--conf", "f.yaml", "sync"],
        ["-c", "", "sync"],
        ["--config=", "sync"],
        ["-c", "-1", "sync"],
        ["sync", "-c", "f.yaml"],
        ["sync", "a", "a"],
        ["sync", "-"],
        ["sync", "--"],
        ["sync", ""],
        ["Sync"],
    ],
)
def test_argv_gate_refuses_everything_else(argv: list[str]) -> None:
    assert quick.parse_argv(argv) is None


# -- the parsed-config cache --------------------------------------------------------------


def _account(tmp: Path, **remote: Any) -> dict[str, Any]:
    return {
        "remote": {"host": "127.0.0.1", "port": 1143, "tls": "none", "username": "u", **remote},
        "local": {"path": str(tmp / "Mail"), "local_only": ["Archive", "Archive/*"]},
        "state_dir": str(tmp / "state"),
        "folders": {"include": ["*"], "exclude": ["Junk"]},
    }


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration file written a moment ago counts as settled (see
    configcache.settled); the tests that need the real rule do not use this."""
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_FINE", -1.0)
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_COARSE", -1.0)


@pytest.fixture
def setup(tmp_path: Path) -> Callable[..., tuple[Path, cli.Environment]]:
    """Write a config; return it and an Environment whose cache is in tmp_path."""

    def make(accounts: dict[str, Any] | None = None, **env: str) -> tuple[Path, cli.Environment]:
        path = tmp_path / "config.yaml"
        accounts = accounts or {"work": _account(tmp_path, password="pw")}
        path.write_text(yaml.safe_dump({"accounts": accounts}))
        environ = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
        environ.update(env)
        return path, cli.Environment(io.StringIO(), io.StringIO(), environ)

    return make


def load_config(path: Path, env: cli.Environment) -> None:
    cli._load_config(argparse.Namespace(config=str(path)), env)


def cached(path: Path, env: cli.Environment) -> list[dict[str, Any]] | None:
    key = configcache.key_for(str(path))
    identity = configcache.file_identity(os.stat(key))
    return configcache.load(key, identity, env.environ)  # type: ignore[return-value]


def test_digest_holds_what_the_quick_check_needs_and_no_secret(
    setup: Any, trusted: None, tmp_path: Path
) -> None:
    path, env = setup()
    cfg = cli._load_config(argparse.Namespace(config=str(path)), env)
    facts = cached(path, env)
    assert facts == [
        {
            "name": "work",
            "quick": True,
            "state_dir": str(tmp_path / "state"),
            "settings": configcache.fingerprint(cfg.accounts["work"]),
            "password_source": "password",
            "password_env": None,
            "password_from": (str(path), "accounts.work.remote"),
            "source_at": path.read_text().index("password: pw") + len("password: "),
        }
    ]
    cache = Path(configcache.cache_file(env.environ, configcache.key_for(str(path))))
    assert cache.parent == tmp_path / "cache" / "mirrorsync"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]
    assert b"pw" not in cache.read_bytes().replace(b"password", b"")


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("plain", "plain"),
        ("plain with spaces  ", "plain with spaces"),
        ("plain # a comment", "plain"),
        ("pl#in", "pl#in"),  # not a comment without the space
        ("'single'", "single"),
        ("'it''s # not a comment'", "it's # not a comment"),
        ('"double # not a comment"', "double # not a comment"),
        ('"back\\slash"', None),  # escapes are not read here
        ("'unterminated", None),
        ("", None),
    ],
)
def test_a_one_line_scalar_is_read_the_simple_way(line: str, value: str | None) -> None:
    text = f"remote:\n  password: {line}\r\n  port: 1\n"
    assert configcache.scalar_at(text, text.index("password: ") + len("password: ")) == value


@pytest.mark.parametrize(
    "spelling",
    ["pw", "'pw'", '"pw"', "pw  # the password", '"p\\x77"', "|-\n        pw"],
    ids=["plain", "single", "double", "comment", "escaped", "block"],
)
def test_the_digest_points_at_a_secret_only_where_it_reads_back_exactly(
    setup: Any, trusted: None, tmp_path: Path, spelling: str
) -> None:
    """What the strict parse gave is the test: a spelling `scalar_at` reads otherwise
    (an escape, a block scalar) gets no position, and the quick check parses."""
    path, env = setup()
    path.write_text(path.read_text().replace("password: pw", f"password: {spelling}"))
    cfg = cli._load_config(argparse.Namespace(config=str(path)), env)
    assert cfg.accounts["work"].remote.password == "pw"
    facts = cached(path, env)
    assert facts is not None
    at = facts[0]["source_at"]
    if "\\" in spelling or spelling.startswith("|"):
        assert at is None
    else:
        assert configcache.scalar_at(path.read_text(), at) == "pw"


def test_writing_a_digest_removes_the_password_caches_of_earlier_versions(
    setup: Any, trusted: None, tmp_path: Path
) -> None:
    import marshal

    cache = tmp_path / "cache" / "mirrorsync"
    cache.mkdir(parents=True)
    old = cache / "config-00000001.marshal"  # another file's, written by version 2
    old.write_bytes(marshal.dumps({"version": 2, "accounts": [{"password": "pw"}]}))
    other = cache / "config-00000002.marshal"  # not ours to judge
    other.write_bytes(b"something else")
    path, env = setup()
    load_config(path, env)
    assert not old.exists() and other.exists() and cached(path, env) is not None


def test_the_fingerprint_follows_every_setting_but_the_password_source(
    setup: Any, tmp_path: Path
) -> None:
    import dataclasses

    path, env = setup()
    account = cli._load_config(argparse.Namespace(config=str(path)), env).accounts["work"]
    fingerprint = configcache.fingerprint(account)
    for remote in (
        dataclasses.replace(account.remote, password="other"),
        dataclasses.replace(account.remote, password=None, password_command="pass show x"),
    ):
        assert configcache.fingerprint(dataclasses.replace(account, remote=remote)) == fingerprint
    for changed in (
        dataclasses.replace(account, remote=dataclasses.replace(account.remote, port=993)),
        dataclasses.replace(account, folders=dataclasses.replace(account.folders, exclude=())),
        dataclasses.replace(account, sync=dataclasses.replace(account.sync, mode="pull")),
    ):
        assert configcache.fingerprint(changed) != fingerprint


def test_a_full_run_reads_the_file_the_quick_check_read_once(
    setup: Any, trusted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full path after a quick check that parsed the file takes its read and
    parse, and gives the very configuration a fresh parse gives (the oracle checks
    that too)."""
    from mirrorsync import config

    path, env = setup()
    first = cli._load_config(argparse.Namespace(config=str(path)), env)
    outcome = quick.Outcome()
    key = configcache.key_for(str(path))
    facts = cached(path, env)
    assert facts is not None
    # a password the digest has no position for is read with PyYAML, once per run
    entry = {**facts[0], "source_at": None}
    found = (key, os.stat(key), 0.0)
    assert quick._from_file(entry, outcome, found, "password") == "pw"
    assert outcome.loaded is not None
    read: list[Path] = []
    monkeypatch.setattr(config, "_read", lambda p: read.append(p) or p.read_text())
    monkeypatch.setenv("MIRRORSYNC_PLAN_ORACLE", "")  # its fresh parse reads the file too
    again = cli._load_config(argparse.Namespace(config=str(path), quick=outcome), env)
    assert again == first and read == [] and outcome.loaded is None
    # a reload (the daemon's) reads the file again
    assert cli._load_config(argparse.Namespace(config=str(path), quick=outcome), env) == first
    assert read == [path]


@pytest.mark.parametrize(
    "argv",
    [
        ["sync"],
        ["-c", "f.yaml", "sync"],
        ["--config", "f.yaml", "sync", "work"],
        ["--config=f.yaml", "sync", "work", "home"],
        ["sync", "sync"],
    ],
)
def test_a_plain_sync_is_parsed_as_argparse_parses_it(argv: list[str]) -> None:
    assert vars(cli.plain_sync(argv)) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["sync", "--dry-run"],
        ["-v", "sync"],
        ["--conf", "f.yaml", "sync"],
        ["sync", "--folder", "INBOX"],
        ["status"],
        ["sync", "-q"],
    ],
)
def test_any_other_command_line_is_left_to_argparse(argv: list[str]) -> None:
    assert cli.plain_sync(argv) is None


def test_cache_is_keyed_by_the_absolute_path(
    setup: Any, trusted: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, env = setup()
    monkeypatch.chdir(tmp_path)
    load_config(Path("config.yaml"), env)
    assert configcache.key_for("config.yaml") == str(path)
    assert cached(path, env) is not None


def test_default_config_path_is_honoured(setup: Any, trusted: None, tmp_path: Path) -> None:
    path, env = setup(XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    default = tmp_path / "xdg" / "mirrorsync" / "config.yaml"
    default.parent.mkdir(parents=True)
    path.rename(default)
    cli._load_config(argparse.Namespace(config=None), env)
    assert cached(default, env) is not None


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ({"password_command": "printf secret"}, "password_command"),
        ({"password_env": "PW"}, "password_env"),
    ],
    ids=["password_command", "password_env"],
)
def test_the_digest_says_where_the_password_comes_from_not_what_it_is(
    setup: Any, trusted: None, tmp_path: Path, source: dict[str, str], kind: str
) -> None:
    path, env = setup({"work": _account(tmp_path, **source)}, PW="secret")
    load_config(path, env)
    facts = cached(path, env)
    assert facts is not None and facts[0]["quick"] is True
    assert facts[0]["password_source"] == kind
    assert facts[0]["password_env"] == source.get("password_env")
    data = Path(configcache.cache_file(env.environ, str(path))).read_bytes()
    assert b"secret" not in data and b"printf" not in data
    assert quick.try_quick(["-c", str(path), "sync"], env).status is None  # no state


def test_a_just_written_config_is_not_cached(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the settle margin an edit could keep size and mtime: not cached yet."""
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_FINE", 3600.0)
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_COARSE", 3600.0)
    path, env = setup()
    load_config(path, env)
    assert cached(path, env) is None


@pytest.mark.parametrize(
    "change",
    [
        lambda p: os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 1)),
        lambda p: p.write_text(p.read_text() + "# more\n"),
        lambda p: os.chmod(p, 0o600),  # ctime: a rewrite with the old mtime put back
        lambda p: p.write_bytes(p.read_bytes()),  # new mtime, same size
    ],
    ids=["mtime", "size", "ctime", "rewritten"],
)
def test_cache_is_stale_once_the_file_changes(
    setup: Any, trusted: None, change: Callable[[Path], Any]
) -> None:
    path, env = setup()
    load_config(path, env)
    assert cached(path, env) is not None
    change(path)
    assert cached(path, env) is None


def test_cache_is_refused_when_a_variable_the_config_used_changed(
    setup: Any, trusted: None, tmp_path: Path
) -> None:
    account = _account(tmp_path, password="pw")
    account["local"]["path"] = "$MAILROOT/Mail"
    del account["state_dir"]  # from XDG_STATE_HOME, else HOME
    path, env = setup({"work": account}, MAILROOT=str(tmp_path))
    load_config(path, env)
    assert cached(path, env) is not None
    for name, value in (("MAILROOT", "/elsewhere"), ("XDG_STATE_HOME", "/state"), ("HOME", "/")):
        other = cli.Environment(environ={**env.environ, name: value})
        assert cached(path, other) is None, name
    unrelated = cli.Environment(environ={**env.environ, "EDITOR": "vi"})
    assert cached(path, unrelated) is not None


def test_digest_of_another_format_version_is_ignored(
    setup: Any, trusted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, env = setup()
    load_config(path, env)
    monkeypatch.setattr(configcache, "FORMAT_VERSION", configcache.FORMAT_VERSION + 1)
    assert cached(path, env) is None


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00garbage", b"\xe9\x01\x00\x00", None],
    ids=["empty", "garbage", "truncated", "half"],
)
def test_corrupt_cache_is_ignored_and_rewritten(
    setup: Any, trusted: None, garbage: bytes | None
) -> None:
    path, env = setup()
    load_config(path, env)
    cache = Path(configcache.cache_file(env.environ, configcache.key_for(str(path))))
    good = cache.read_bytes()
    cache.write_bytes(good[: len(good) // 2] if garbage is None else garbage)
    assert cached(path, env) is None
    load_config(path, env)
    assert cache.read_bytes() == good


def test_cache_not_ours_alone_is_ignored(setup: Any, trusted: None) -> None:
    path, env = setup()
    load_config(path, env)
    cache = Path(configcache.cache_file(env.environ, configcache.key_for(str(path))))
    cache.chmod(0o622)
    assert cached(path, env) is None


def test_an_unwritable_cache_never_fails_a_run(setup: Any, trusted: None, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path, env = setup(XDG_CACHE_HOME=str(blocker))
    load_config(path, env)  # no error
    assert cached(path, env) is None
    assert quick.try_quick(["-c", str(path), "sync"], env).status is None


def test_quick_check_without_cache_or_state_does_nothing(
    setup: Any, trusted: None, tmp_path: Path
) -> None:
    path, env = setup()
    assert quick.try_quick(["-c", str(path), "sync"], env).status is None  # no cache yet
    load_config(path, env)
    assert quick.try_quick(["-c", str(path), "sync"], env).status is None  # no state yet
    assert quick.try_quick(["-c", str(path), "sync", "nobody"], env).status is None
    assert not (tmp_path / "state").exists()  # nothing created, not even the lock
    assert env.stdout.getvalue() == env.stderr.getvalue() == ""  # type: ignore[attr-defined]


# -- the LIST-STATUS reader ---------------------------------------------------------------

ITEMS = ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ"]


def numbers(*lines: bytes) -> dict[str, quickimap.Numbers]:
    lists = [line[len(b"LIST ") :] for line in lines if line.startswith(b"LIST ")]
    statuses = [line[len(b"STATUS ") :] for line in lines if line.startswith(b"STATUS ")]
    return quickimap.folder_numbers(lists, statuses, ITEMS)


def list_status(*args: Any) -> dict[str, quickimap.Numbers]:
    """A whole quick look: connect, log in, LIST-STATUS, close (the password last)."""
    session = quickimap.Session(*args[:-1])
    try:
        session.begin_login(args[-1])
        return session.list_status()
    finally:
        session.close()


def test_list_status_reader() -> None:
    got = numbers(
        b'LIST (\\HasNoChildren) "/" INBOX',
        b"STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 17 HIGHESTMODSEQ 9)",
        b'LIST (\\HasNoChildren \\UnMarked) "." "Sent &- Drafts"',
        b'STATUS "Sent &- Drafts" (messages 0 uidnext 1 uidvalidity 18 highestmodseq 1)',
        b'LIST (\\HasNoChildren) "." &ZeVnLIqe-.Sub',
        b"STATUS &ZeVnLIqe-.Sub (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 19 HIGHESTMODSEQ 2)",
        b'LIST (\\NonExistent \\HasChildren) "/" Work',
        b'LIST (\\Noselect \\HasChildren) "/" Lists',
        b"LIST (\\HasNoChildren) NIL Flat",
        b"STATUS Flat (MESSAGES 5 UIDNEXT 6 UIDVALIDITY 22 HIGHESTMODSEQ 7)",
        b'LIST () "/" "Q\\"uote\\\\d"',
        b'STATUS "Q\\"uote\\\\d" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 21 HIGHESTMODSEQ 1)',
        b"STATUS Gone (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 23 HIGHESTMODSEQ 1)",  # not listed
    )
    assert got == {
        "INBOX": (17, 4, 3, 9),
        "Sent & Drafts": (18, 1, 0, 1),
        "日本語/Sub": (19, 2, 1, 2),
        "Flat": (22, 6, 5, 7),
        'Q"uote\\d': (21, 1, 0, 1),
    }


def test_inbox_is_canonical_in_any_case() -> None:
    got = numbers(
        b'LIST () "/" inbox/Sub',
        b"STATUS inbox/Sub (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 3 HIGHESTMODSEQ 4)",
    )
    assert got == {"INBOX/Sub": (3, 2, 1, 4)}


@pytest.mark.parametrize(
    "lines",
    [
        # the full path would ask for this folder's STATUS on its own
        [b'LIST () "/" A'],
        [b'LIST () "/" A', b"STATUS A (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 3)"],
        # the full path would warn and skip these names
        [
            b'LIST () "." "a/b"',
            b'STATUS "a/b" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 3 HIGHESTMODSEQ 4)',
        ],
        [
            b'LIST () "/" "a//b"',
            b'STATUS "a//b" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 3 HIGHESTMODSEQ 4)',
        ],
        # two names for one folder
        [
            b'LIST () "/" INBOX',
            b'LIST () "/" Inbox',
            b"STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 3 HIGHESTMODSEQ 4)",
            b"STATUS Inbox (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 3 HIGHESTMODSEQ 4)",
        ],
        # what this reader does not parse
        [b'LIST () "/" A ("CHILDINFO" ("SUBSCRIBED"))'],
        [b'LIST () "/" "unterminated'],
        [b'LIST () "/" "odd\\escape"'],
        [b'LIST () "//" A'],
        [b'LIST () "/" NIL'],
        [b'LIST (\\HasNoChildren "x") "/" A'],
        [b'LIST () "/" &APw'],
        [b"STATUS A (MESSAGES 1 UIDNEXT)"],
        [b"STATUS A (MESSAGES x UIDNEXT 2 UIDVALIDITY 3 HIGHESTMODSEQ 4)"],
    ],
)
def test_list_status_reader_is_unsure(lines: list[bytes]) -> None:
    with pytest.raises(quickimap.Unsure):
        numbers(*lines)


# -- against a scripted server, side by side with ImapStore -----------------------------------

FULL_CAPS = b"IMAP4rev1 LITERAL+ ENABLE UIDPLUS CONDSTORE QRESYNC LIST-EXTENDED LIST-STATUS"
LISTING = (
    b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
    b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 17 HIGHESTMODSEQ 9)\r\n"
    b'* LIST (\\HasChildren) "/" Entw&APw-rfe\r\n'
    b"* STATUS Entw&APw-rfe (MESSAGES 0 UIDNEXT 1 UIDVALIDITY 18 HIGHESTMODSEQ 1)\r\n"
    b'* LIST (\\HasNoChildren) "/" "Entw&APw-rfe/Sent Items"\r\n'
    b'* STATUS "Entw&APw-rfe/Sent Items" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 19 HIGHESTMODSEQ 2)\r\n'
    b'* LIST (\\Noselect \\HasChildren) "/" Lists\r\n'
)


class Wire:
    """A scripted IMAP server for one connection at a time, recording every command
    line it gets (tag removed). Answers are templates with "{tag}"."""

    def __init__(
        self,
        greeting: bytes = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ ENABLE] ready\r\n",
        login: bytes = b"{tag} OK [CAPABILITY " + FULL_CAPS + b"] in\r\n",
        capability: bytes = b"* CAPABILITY " + FULL_CAPS + b"\r\n{tag} OK done\r\n",
        enable: bytes = b"* ENABLED QRESYNC\r\n{tag} OK enabled\r\n",
        listing: bytes = LISTING + b"{tag} OK listed\r\n",
    ) -> None:
        self.answers = {
            b"LOGIN": login,
            b"CAPABILITY": capability,
            b"ENABLE": enable,
            b"LIST": listing,
        }
        self.greeting = greeting
        self.commands: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as reader:
                conn.sendall(self.greeting)
                for line in reader:
                    tag, _, command = line.rstrip(b"\r\n").partition(b" ")
                    self.commands.append(command)
                    verb = command.split(b" ", 1)[0].upper()
                    if verb == b"LOGOUT":
                        conn.sendall(b"* BYE bye\r\n" + tag + b" OK out\r\n")
                        break
                    answer = self.answers.get(verb, b"{tag} BAD unexpected\r\n")
                    conn.sendall(answer.replace(b"{tag}", tag).split(b"{close}")[0])
                    if b"{close}" in answer:
                        break

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def wire() -> Iterator[Callable[..., Wire]]:
    made: list[Wire] = []

    def make(**answers: bytes) -> Wire:
        made.append(Wire(**answers))
        return made[-1]

    yield make
    for w in made:
        w.close()


def quick_list(w: Wire, password: str = "pw") -> dict[str, quickimap.Numbers]:
    return list_status("127.0.0.1", w.port, "none", None, 5.0, "u", password)


def full_list(w: Wire) -> dict[str, quickimap.Numbers]:
    remote = RemoteConfig(host="127.0.0.1", username="u", port=w.port, tls="none", timeout=5)
    store = ImapStore.connect(remote, "pw")
    try:
        found = store.statuses()
    finally:
        store.close()
    return {n: (s.uidvalidity, s.uidnext, s.messages, s.highestmodseq) for n, s in found.items()}


@pytest.mark.parametrize(
    "answers",
    [
        {},
        # no capabilities in the greeting, none with the login: both are asked for
        {"greeting": b"* OK ready\r\n", "login": b"{tag} OK in\r\n"},
        # capabilities as an untagged response to LOGIN
        {"login": b"* CAPABILITY " + FULL_CAPS + b"\r\n{tag} OK in\r\n"},
        # no LIST-EXTENDED: no CHILDREN in the RETURN options
        {"login": b"{tag} OK [CAPABILITY IMAP4rev1 ENABLE CONDSTORE LIST-STATUS] in\r\n"},
        # no ENABLE: none sent
        {"login": b"{tag} OK [CAPABILITY IMAP4rev1 CONDSTORE LIST-STATUS] in\r\n"},
    ],
    ids=["usual", "asked", "untagged", "no-list-extended", "no-enable"],
)
def test_quick_client_sends_and_reads_what_the_store_does(
    wire: Callable[..., Wire], answers: dict[str, bytes]
) -> None:
    full = wire(**answers)
    expected = full_list(full)
    quick_wire = wire(**answers)
    assert quick_list(quick_wire) == expected
    assert expected["Entwürfe/Sent Items"] == (19, 2, 1, 2) and "Lists" not in expected
    # The same commands, except the CAPABILITY imaplib always sends before logging in.
    sent_by_full = full.commands
    if b"CAPABILITY" in sent_by_full[:1] and not answers.get("greeting"):
        sent_by_full = sent_by_full[1:]
    assert quick_wire.commands == sent_by_full


@pytest.mark.parametrize(
    "answers",
    [
        {"greeting": b"* PREAUTH [CAPABILITY " + FULL_CAPS + b"] hi\r\n"},
        {"greeting": b"* BYE busy\r\n"},
        {"greeting": b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] ready\r\n"},
        {"greeting": b"* OK [CAPABILITY SOMETHING] ready\r\n"},
        {"login": b"{tag} NO [AUTHENTICATIONFAILED] wrong\r\n"},
        {"login": b"{tag} BAD what\r\n"},
        {"login": b"{tag} OK [CAPABILITY IMAP4rev1 ENABLE CONDSTORE] in\r\n"},  # no LIST-STATUS
        {"login": b"{tag} OK [CAPABILITY IMAP4rev1 ENABLE LIST-STATUS] in\r\n"},  # no CONDSTORE
        {"login": b"* BYE going\r\n{tag} OK in\r\n"},
        {"enable": b"{tag} NO not now\r\n"},
        {"listing": b"{tag} NO [SERVERBUG] oops\r\n"},
        {"listing": b'* LIST () "/" {5}\r\nA\r\nB\r\n{tag} OK listed\r\n'},
        {"listing": b'* LIST () "/" A\r\n* OK [ALERT] hm\r\n{tag} OK listed\r\n'},
        {"listing": LISTING + b"{close}"},  # the connection ends before the tagged answer
    ],
    ids=[
        "preauth",
        "bye",
        "logindisabled",
        "not-imap4",
        "login-no",
        "login-bad",
        "no-list-status",
        "no-condstore",
        "login-bye",
        "enable-no",
        "list-no",
        "literal",
        "alert",
        "cut",
    ],
)
def test_quick_client_is_unsure_of_anything_else(
    wire: Callable[..., Wire], answers: dict[str, bytes]
) -> None:
    w = wire(**answers)
    with pytest.raises((quickimap.Unsure, OSError)):
        quick_list(w)


def test_quick_client_sends_nothing_for_an_unusual_login(wire: Callable[..., Wire]) -> None:
    w = wire()
    with pytest.raises(quickimap.Unsure):
        list_status("127.0.0.1", w.port, "none", None, 5.0, "a b", "pw")
    with pytest.raises(quickimap.Unsure):
        list_status("127.0.0.1", w.port, "starttls", None, 5.0, "u", "pw")
    assert w.commands == []


def test_quick_client_gives_up_on_a_silent_server() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with pytest.raises(OSError):  # TimeoutError: the greeting never comes
            list_status("127.0.0.1", port, "none", None, 0.2, "u", "pw")


# -- the local listing's warnings ---------------------------------------------------------


def test_listing_reports_odd_directories_through_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The quick check passes its own `warn`: a listing the full path would warn
    about (here a stray "inbox" beside "INBOX") is one it must not cut short."""
    from mirrorsync.layout import NESTED, list_folders

    for name in ("INBOX", "inbox", "Work"):
        for sub in ("cur", "new", "tmp"):
            (tmp_path / name / sub).mkdir(parents=True)
    said: list[tuple[object, ...]] = []
    assert list_folders(tmp_path, NESTED, warn=lambda *a: said.append(a)) == ["INBOX", "Work"]
    assert len(said) == 1 and "inbox" in str(said[0][1])
    assert caplog.text == ""
    # without `warn`, the same goes to the log, as before
    with caplog.at_level("WARNING"):
        assert list_folders(str(tmp_path), NESTED) == ["INBOX", "Work"]
    assert f"ignoring Maildir {tmp_path / 'inbox'}" in caplog.text


def test_a_connection_the_quick_check_saw_time_out_is_not_waited_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The full path reports the quick check's timeout in its own words instead of
    waiting the whole timeout a second time."""
    from mirrorsync import quickimap
    from mirrorsync.config import RemoteConfig
    from mirrorsync.errors import ConnectionFailed
    from mirrorsync.imap.store import ImapStore

    def timing_out(*args: object, **kw: object) -> object:
        raise TimeoutError("timed out")

    monkeypatch.setattr(quickimap, "_connect", timing_out)
    # tls: none to a host that is not this machine sends the full path to warn; the
    # TEST-NET address only stands in for a server that does not answer
    monkeypatch.setattr(connection, "is_loopback", lambda _host: True)
    with pytest.raises(TimeoutError) as timeout:
        list_status("192.0.2.1", 143, "none", None, 5.0, "me", "pw")
    learned = quickimap.Learned()  # as the quick check hands it to the full path
    learned.timed_out["192.0.2.1", 143] = timeout.value
    made: list[object] = []
    monkeypatch.setattr("mirrorsync.imap.store.Client", lambda *a, **kw: made.append(a))
    remote = RemoteConfig(host="192.0.2.1", port=143, tls="none", username="me")
    with pytest.raises(ConnectionFailed) as info:
        ImapStore.connect(remote, "pw", learned=learned)
    assert made == []  # no second attempt
    assert "192.0.2.1:143" in str(info.value)
