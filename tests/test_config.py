"""Tests for mirrorsync.config: the loader's errors, defaults and paths, password
sources and folder patterns, mostly as tables so a new rule is one more row."""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mirrorsync.config import (
    AccountConfig,
    ArchiveRule,
    Config,
    FolderFilter,
    LocalConfig,
    RemoteConfig,
    SyncConfig,
    default_path,
    load,
    resolve_password,
)
from mirrorsync.errors import ConfigError, ExitStatus

REPO = Path(__file__).resolve().parent.parent

BASE: dict[str, Any] = {
    "accounts": {
        "personal": {
            "remote": {
                "host": "imap.example.com",
                "username": "alice@example.com",
                "password": "hunter2",
            },
            "local": {"path": "~/Mail/personal"},
        }
    }
}

DELETE = object()
ACC = "accounts.personal"


def with_changes(changes: dict[str, Any], base: dict[str, Any] = BASE) -> dict[str, Any]:
    """BASE with dotted keys set (or removed, with DELETE)."""
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


@pytest.fixture
def write(tmp_path: Path) -> Callable[[object], Path]:
    """Write a config (a dict is dumped as YAML, a str written as is) and return its path."""

    def write(content: object) -> Path:
        path = tmp_path / "conf" / "config.yaml"
        path.parent.mkdir(exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def load_error(path: Path, env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, env)
    assert info.value.exit_status is ExitStatus.USAGE
    return info.value


# --------------------------------------------------------------------------------------
# Validation errors: each names the file and the key path.

ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, changes to BASE, key path in the message, fragment of the message)
    ("unknown top key", {"acounts": {}}, "acounts", "unknown key"),
    ("unknown account key", {f"{ACC}.remotes": {}}, f"{ACC}.remotes", "did you mean remote?"),
    ("unknown remote key", {f"{ACC}.remote.hots": "x"}, f"{ACC}.remote.hots", "did you mean host?"),
    ("unknown local key", {f"{ACC}.local.layuot": "nested"}, f"{ACC}.local.layuot", "unknown"),
    ("unknown folders key", {f"{ACC}.folders.only": []}, f"{ACC}.folders.only", "unknown key"),
    ("unknown sync key", {f"{ACC}.sync.force": True}, f"{ACC}.sync.force", "unknown key"),
    ("missing accounts", {"accounts": DELETE}, "accounts", "required key is missing"),
    ("accounts empty", {"accounts": {}}, "accounts", "no accounts are defined"),
    ("accounts null", {"accounts": None}, "accounts", "no accounts are defined"),
    ("accounts a list", {"accounts": ["personal"]}, "accounts", "expected a mapping"),
    ("account null", {ACC: None}, ACC, "expected a mapping, got an empty value"),
    ("missing remote", {f"{ACC}.remote": DELETE}, f"{ACC}.remote", "required key is missing"),
    ("missing local", {f"{ACC}.local": DELETE}, f"{ACC}.local", "required key is missing"),
    ("missing host", {f"{ACC}.remote.host": DELETE}, f"{ACC}.remote.host", "required key"),
    ("empty host", {f"{ACC}.remote.host": ""}, f"{ACC}.remote.host", "must not be empty"),
    ("host with port", {f"{ACC}.remote.host": "imap.x.com:993"}, f"{ACC}.remote.host", "port"),
    ("host is a url", {f"{ACC}.remote.host": "imaps://imap.x.com"}, f"{ACC}.remote.host", "host"),
    ("host number", {f"{ACC}.remote.host": 12}, f"{ACC}.remote.host", "quote it"),
    ("missing username", {f"{ACC}.remote.username": DELETE}, f"{ACC}.remote.username", "missing"),
    ("username a list", {f"{ACC}.remote.username": ["a"]}, f"{ACC}.remote.username", "a list"),
    ("port string", {f"{ACC}.remote.port": "abc"}, f"{ACC}.remote.port", "1-65535, got 'abc'"),
    ("port bool", {f"{ACC}.remote.port": True}, f"{ACC}.remote.port", "got true (a boolean)"),
    ("port zero", {f"{ACC}.remote.port": 0}, f"{ACC}.remote.port", "1-65535, got 0"),
    ("port too big", {f"{ACC}.remote.port": 65536}, f"{ACC}.remote.port", "1-65535"),
    ("port float", {f"{ACC}.remote.port": 993.0}, f"{ACC}.remote.port", "an integer"),
    ("tls maybe", {f"{ACC}.remote.tls": "maybe"}, f"{ACC}.remote.tls", "imaps, starttls, none"),
    ("tls bool", {f"{ACC}.remote.tls": False}, f"{ACC}.remote.tls", "false (a boolean)"),
    ("tls upper", {f"{ACC}.remote.tls": "IMAPS"}, f"{ACC}.remote.tls", "got 'IMAPS'"),
    (
        "no password",
        {f"{ACC}.remote.password": DELETE},
        f"{ACC}.remote.password",
        "exactly one of password, password_command, password_env",
    ),
    (
        "two passwords",
        {f"{ACC}.remote.password_env": "PW"},
        f"{ACC}.remote",
        "password and password_env are both set; set exactly one of",
    ),
    (
        "three passwords",
        {f"{ACC}.remote.password_env": "PW", f"{ACC}.remote.password_command": "x"},
        f"{ACC}.remote",
        "are all set",
    ),
    ("password empty", {f"{ACC}.remote.password": ""}, f"{ACC}.remote.password", "empty"),
    ("password null", {f"{ACC}.remote.password": None}, f"{ACC}.remote.password", "empty value"),
    (
        "password_env with $",
        {f"{ACC}.remote.password": DELETE, f"{ACC}.remote.password_env": "$PW"},
        f"{ACC}.remote.password_env",
        "without $",
    ),
    (
        "password_command list",
        {f"{ACC}.remote.password": DELETE, f"{ACC}.remote.password_command": ["pass"]},
        f"{ACC}.remote.password_command",
        "expected a string, got a list",
    ),
    (
        "ca_file with tls none",
        {f"{ACC}.remote.tls": "none", f"{ACC}.remote.ca_file": "/ca.pem"},
        f"{ACC}.remote.ca_file",
        "no effect with tls: none",
    ),
    ("ca_file number", {f"{ACC}.remote.ca_file": 5}, f"{ACC}.remote.ca_file", "expected a string"),
    ("timeout zero", {f"{ACC}.remote.timeout": 0}, f"{ACC}.remote.timeout", "> 0"),
    ("timeout negative", {f"{ACC}.remote.timeout": -1.5}, f"{ACC}.remote.timeout", "> 0"),
    ("timeout string", {f"{ACC}.remote.timeout": "60s"}, f"{ACC}.remote.timeout", "got '60s'"),
    ("timeout bool", {f"{ACC}.remote.timeout": True}, f"{ACC}.remote.timeout", "boolean"),
    ("timeout inf", {f"{ACC}.remote.timeout": float("inf")}, f"{ACC}.remote.timeout", "> 0"),
    (
        "max_connections zero",
        {f"{ACC}.remote.max_connections": 0},
        f"{ACC}.remote.max_connections",
        "1-32",
    ),
    (
        "max_connections 33",
        {f"{ACC}.remote.max_connections": 33},
        f"{ACC}.remote.max_connections",
        "1-32, got 33",
    ),
    ("missing path", {f"{ACC}.local.path": DELETE}, f"{ACC}.local.path", "required key"),
    ("path empty", {f"{ACC}.local.path": ""}, f"{ACC}.local.path", "must not be empty"),
    ("path unset var", {f"{ACC}.local.path": "$NOPE/Mail"}, f"{ACC}.local.path", "$NOPE"),
    ("path braces var", {f"{ACC}.local.path": "${NOPE}/Mail"}, f"{ACC}.local.path", "$NOPE"),
    ("layout", {f"{ACC}.local.layout": "flat"}, f"{ACC}.local.layout", "nested, maildir++"),
    ("state_dir list", {f"{ACC}.state_dir": []}, f"{ACC}.state_dir", "expected a string"),
    (
        "include string",
        {f"{ACC}.folders.include": "*"},
        f"{ACC}.folders.include",
        "got a string ('*'); write it as a list: [\"*\"]",
    ),
    ("exclude string", {f"{ACC}.folders.exclude": "Junk"}, f"{ACC}.folders.exclude", "a list"),
    ("include empty", {f"{ACC}.folders.include": []}, f"{ACC}.folders.include", "no folders"),
    ("include item", {f"{ACC}.folders.include": ["a", 3]}, f"{ACC}.folders.include[1]", "string"),
    ("include item empty", {f"{ACC}.folders.exclude": [""]}, f"{ACC}.folders.exclude[0]", "empty"),
    ("folders list", {f"{ACC}.folders": ["*"]}, f"{ACC}.folders", "expected a mapping"),
    (
        "share zero",
        {f"{ACC}.sync.max_delete_share": 0},
        f"{ACC}.sync.max_delete_share",
        "greater than 0 and at most 1",
    ),
    ("share > 1", {f"{ACC}.sync.max_delete_share": 1.5}, f"{ACC}.sync.max_delete_share", "1.5"),
    (
        "share percent",
        {f"{ACC}.sync.max_delete_share": "50%"},
        f"{ACC}.sync.max_delete_share",
        "got '50%'",
    ),
    ("guard negative", {f"{ACC}.sync.guard_min": -1}, f"{ACC}.sync.guard_min", ">= 0, got -1"),
    ("guard float", {f"{ACC}.sync.guard_min": 2.5}, f"{ACC}.sync.guard_min", "an integer"),
    ("guard bool", {f"{ACC}.sync.guard_min": False}, f"{ACC}.sync.guard_min", "boolean"),
    (
        "local_only string",
        {f"{ACC}.local.local_only": "Archive"},
        f"{ACC}.local.local_only",
        "list",
    ),
    (
        "local_only inbox",
        {f"{ACC}.local.local_only": ["Archive/*", "*"]},
        f"{ACC}.local.local_only[1]",
        "'*' matches INBOX, which cannot be local-only",
    ),
    ("mode", {f"{ACC}.sync.mode": "sync"}, f"{ACC}.sync.mode", "mirror, pull, backup, got 'sync'"),
    (
        "folder_modes list",
        {f"{ACC}.sync.folder_modes": ["x"]},
        f"{ACC}.sync.folder_modes",
        "mapping",
    ),
    (
        "folder_modes value",
        {f"{ACC}.sync.folder_modes": {"INBOX": "pull", "Lists/*": "push"}},
        f"{ACC}.sync.folder_modes.Lists/*",
        "mirror, pull, backup, got 'push'",
    ),
]

ARCHIVE_OK = {f"{ACC}.local.local_only": ["Archive", "Archive/*"]}
RULE = {"folder": "INBOX", "older_than": "1y"}


def _rule(**changes: Any) -> dict[str, Any]:
    return {**ARCHIVE_OK, f"{ACC}.archive": [{**RULE, **changes}]}


ERRORS += [
    ("archive mapping", {**ARCHIVE_OK, f"{ACC}.archive": RULE}, f"{ACC}.archive", "list of rules"),
    (
        "archive no folder",
        {**ARCHIVE_OK, f"{ACC}.archive": [{"older_than": "1y"}]},
        f"{ACC}.archive[0].folder",
        "required key is missing",
    ),
    (
        "archive unknown key",
        _rule(older_then="1y"),
        f"{ACC}.archive[0].older_then",
        "did you mean older_than?",
    ),
    (
        "archive no criterion",
        {**ARCHIVE_OK, f"{ACC}.archive": [{"folder": "INBOX"}]},
        f"{ACC}.archive[0]",
        "needs older_than or larger_than",
    ),
    ("archive age", _rule(older_than="1x"), f"{ACC}.archive[0].older_than", "unknown unit 'x'"),
    ("archive age number", _rule(older_than=5), f"{ACC}.archive[0].older_than", "a string"),
    ("archive size", _rule(larger_than="lots"), f"{ACC}.archive[0].larger_than", "cannot read"),
    ("archive size bool", _rule(larger_than=True), f"{ACC}.archive[0].larger_than", "a size"),
    ("archive size negative", _rule(larger_than=-1), f"{ACC}.archive[0].larger_than", "negative"),
    (
        "archive keep_flagged",
        _rule(keep_flagged="yes"),
        f"{ACC}.archive[0].keep_flagged",
        "expected true or false, got 'yes'",
    ),
    ("archive to pattern", _rule(to="Archive/*"), f"{ACC}.archive[0].to", "not a pattern"),
    (
        "archive to not local-only",
        _rule(to="Old"),
        f"{ACC}.archive[0].to",
        "archives into 'Old', which is not a local-only folder; add a pattern for it to "
        f"{ACC}.local.local_only",
    ),
    (
        "archive default not local-only",
        {f"{ACC}.archive": [RULE]},
        f"{ACC}.archive[0]",
        "archives into 'Archive/INBOX', which is not a local-only folder",
    ),
    (
        "archive from local-only",
        _rule(folder="Archive/INBOX", to="Archive"),
        f"{ACC}.archive[0].folder",
        "is local-only",
    ),
]


@pytest.mark.parametrize(
    ("changes", "key", "fragment"), [row[1:] for row in ERRORS], ids=[row[0] for row in ERRORS]
)
def test_invalid_values(
    write: Callable[[object], Path],
    env: dict[str, str],
    changes: dict[str, Any],
    key: str,
    fragment: str,
) -> None:
    path = write(with_changes(changes))
    error = load_error(path, env)
    message = str(error)
    assert message.startswith(f"{path}: {key}: "), message
    assert fragment in message
    assert error.path == str(path)
    assert error.key == key
    assert "Traceback" not in message


@pytest.mark.parametrize(
    "name", ["my account", "a/b", "ü", ".", "..", "", "x:y"], ids=lambda n: repr(n)
)
def test_bad_account_names(write: Callable[[object], Path], env: dict[str, str], name: str) -> None:
    data = {"accounts": {name: BASE["accounts"]["personal"]}}
    message = str(load_error(write(data), env))
    assert f"accounts.{name}: " in message
    assert "letters, digits" in message


@pytest.mark.parametrize("name", ["personal", "work-2", "a.b", "A_1", "2024"])
def test_good_account_names(
    write: Callable[[object], Path], env: dict[str, str], name: str
) -> None:
    data = {"accounts": {name: BASE["accounts"]["personal"]}}
    assert list(load(write(data), env).accounts) == [name]


def test_unquoted_numeric_account_name_says_to_quote(
    write: Callable[[object], Path], env: dict[str, str]
) -> None:
    text = yaml.safe_dump(BASE).replace("personal:", "2024:")
    message = str(load_error(write(text), env))
    assert "accounts.2024: an account name must be a string" in message
    assert "quote it" in message


def test_secret_values_never_appear_in_messages(
    write: Callable[[object], Path], env: dict[str, str]
) -> None:
    message = str(load_error(write(with_changes({f"{ACC}.remote.password": 987654321})), env))
    assert f"{ACC}.remote.password: expected a string" in message
    assert "987654321" not in message


RAW_ERRORS: list[tuple[str, str, str]] = [
    # (id, file text, expected fragment after "<file>: ")
    ("empty", "", "the file is empty"),
    ("only comments", "# nothing here\n", "the file is empty"),
    ("top is a list", "- a\n- b\n", "(top level): expected a mapping, got a list"),
    ("top is a string", "accounts\n", "(top level): expected a mapping"),
    ("unclosed flow", "accounts:\n  a: [1\n", "line 3, column 1: invalid YAML"),
    ("bad mapping", "accounts:\n  a: b: c\n", "line 2, column 7: invalid YAML"),
    ("tab", "accounts:\n\tpersonal: {}\n", "line 2, column 1: invalid YAML"),
    ("bad indentation", "accounts:\n  a: 1\n b: 2\n", "line 3, column 2: invalid YAML"),
    ("duplicate key", "accounts: {}\naccounts: {}\n", "line 2, column 1: invalid YAML: duplicate"),
    ("python tag", "accounts: !!python/object:os.system x\n", "line 1, column 11: invalid"),
    ("control char", "accounts:\n  a: \x07\n", "line 2: invalid YAML"),
]


@pytest.mark.parametrize(
    ("text", "fragment"), [row[1:] for row in RAW_ERRORS], ids=[row[0] for row in RAW_ERRORS]
)
def test_invalid_files(
    write: Callable[[object], Path], env: dict[str, str], text: str, fragment: str
) -> None:
    path = write(text)
    message = str(load_error(path, env))
    assert message.startswith(f"{path}: {fragment}"), message
    assert "<unicode string>" not in message


def test_tab_error_says_to_use_spaces(write: Callable[[object], Path], env: dict[str, str]) -> None:
    assert "indent with spaces" in str(load_error(write("accounts:\n\tx: 1\n"), env))


def test_duplicate_password_key_is_rejected(
    write: Callable[[object], Path], env: dict[str, str]
) -> None:
    text = yaml.safe_dump(BASE).replace("password: hunter2", "password: a\n      password: b")
    message = str(load_error(write(text), env))
    assert "duplicate key 'password'" in message


def test_merge_keys_are_not_duplicates(
    write: Callable[[object], Path], env: dict[str, str]
) -> None:
    # A top-level `defaults` key would be unknown, so share through an alias in accounts.
    text = """
accounts:
  a:
    remote: &remote {host: imap.example.com, username: alice, password: pw, port: 1}
    local: {path: /m/a}
  b:
    remote:
      <<: *remote
      port: 2
    local: {path: /m/b}
"""
    config = load(write(text), env)
    assert config.accounts["b"].remote.port == 2
    assert config.accounts["b"].remote.host == "imap.example.com"


def test_missing_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "nope.yaml"
    message = str(load_error(path, env))
    assert message.startswith(f"{path}: no such file; create it")
    assert "mirrorsync sample-config" in message


def test_directory_instead_of_file(tmp_path: Path, env: dict[str, str]) -> None:
    assert "is a directory" in str(load_error(tmp_path, env))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(write: Callable[[object], Path], env: dict[str, str]) -> None:
    path = write(BASE)
    path.chmod(0)
    try:
        message = str(load_error(path, env))
    finally:
        path.chmod(0o600)
    assert message.startswith(f"{path}: cannot read: Permission denied")


def test_read_error_without_root_skip(
    write: Callable[[object], Path], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same path as test_unreadable_file, reachable when the tests run as root."""
    path = write(BASE)

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert str(load_error(path, env)) == f"{path}: cannot read: Permission denied"


def test_not_utf8(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"accounts:\n  caf\xe9: {}\n")
    assert str(load_error(path, env)) == f"{path}: line 2: not valid UTF-8"


# --------------------------------------------------------------------------------------
# Defaults


@pytest.mark.parametrize(
    ("remote", "port"),
    [
        ({}, 993),
        ({"tls": "imaps"}, 993),
        ({"tls": "starttls"}, 143),
        ({"tls": "none"}, 143),
        ({"tls": "starttls", "port": 1143}, 1143),
        ({"port": 10993}, 10993),
    ],
)
def test_port_follows_tls(
    write: Callable[[object], Path], env: dict[str, str], remote: dict[str, Any], port: int
) -> None:
    changes = {f"{ACC}.remote.{k}": v for k, v in remote.items()}
    config = load(write(with_changes(changes)), env)
    assert config.accounts["personal"].remote.port == port
    assert config.accounts["personal"].remote.tls == remote.get("tls", "imaps")


def test_defaults(write: Callable[[object], Path], env: dict[str, str]) -> None:
    path = write(BASE)
    config = load(path, env)
    assert isinstance(config, Config)
    assert config.path == path
    home = Path(env["HOME"])
    assert config.accounts == {
        "personal": AccountConfig(
            name="personal",
            remote=RemoteConfig(
                host="imap.example.com",
                username="alice@example.com",
                port=993,
                tls="imaps",
                password="hunter2",
                timeout=60.0,
                max_connections=4,
            ),
            local=LocalConfig(path=home / "Mail/personal", layout="nested"),
            state_dir=home / ".local/state/mirrorsync/personal",
            folders=FolderFilter(include=("*",), exclude=()),
            sync=SyncConfig(max_delete_share=0.5, guard_min=5),
        )
    }


@pytest.mark.parametrize(
    ("xdg_state_home", "expected"),
    [
        (None, "{home}/.local/state/mirrorsync/personal"),
        ("/xdg/state", "/xdg/state/mirrorsync/personal"),
        ("", "{home}/.local/state/mirrorsync/personal"),
        ("relative/state", "{home}/.local/state/mirrorsync/personal"),  # XDG: ignore relative
    ],
)
def test_state_dir_default(
    write: Callable[[object], Path],
    env: dict[str, str],
    xdg_state_home: str | None,
    expected: str,
) -> None:
    if xdg_state_home is not None:
        env["XDG_STATE_HOME"] = xdg_state_home
    config = load(write(BASE), env)
    assert config.accounts["personal"].state_dir == Path(expected.format(home=env["HOME"]))


def test_values_are_kept(write: Callable[[object], Path], env: dict[str, str]) -> None:
    changes = {
        f"{ACC}.remote.timeout": 2.5,
        f"{ACC}.remote.max_connections": 32,
        f"{ACC}.local.layout": "maildir++",
        f"{ACC}.folders": {"include": ["INBOX", "Lists/%"], "exclude": ["Lists/spam"]},
        f"{ACC}.sync": {"max_delete_share": 1, "guard_min": 0},
    }
    account = load(write(with_changes(changes)), env).accounts["personal"]
    assert account.remote.timeout == 2.5
    assert account.remote.max_connections == 32
    assert account.local.layout == "maildir++"
    assert account.folders == FolderFilter(("INBOX", "Lists/%"), ("Lists/spam",))
    assert account.sync == SyncConfig(max_delete_share=1.0, guard_min=0)
    assert isinstance(account.sync.max_delete_share, float)


def test_local_only_modes_and_archive_rules(
    write: Callable[[object], Path], env: dict[str, str]
) -> None:
    text = """
accounts:
  personal:
    remote: {host: imap.example.com, username: alice, password: pw}
    local:
      path: ~/Mail
      local_only: ["Archive", "Archive/*", "Local/%"]
    sync:
      mode: pull
      folder_modes:
        "Lists/announce": mirror
        "Lists/*": backup
        "Lists/%": mirror
    archive:
      - folder: INBOX
        older_than: 2024-01-31
      - folder: "Lists/*"
        older_than: 6m
        larger_than: 1.5M
        keep_flagged: false
        keep_unread: false
        to: /Local/lists/
      - {folder: Sent, larger_than: 2048}
"""
    account = load(write(text), env).accounts["personal"]
    local = account.local
    assert local.local_only == ("Archive", "Archive/*", "Local/%")
    assert local.is_local_only("Archive") and local.is_local_only("Archive/INBOX/2024")
    assert local.is_local_only("Local/lists") and not local.is_local_only("Local/a/b")
    assert not local.is_local_only("INBOX") and not local.is_local_only("Archived")
    sync = account.sync
    assert sync.mode == "pull"
    assert sync.mode_for("Lists/announce") == "mirror"  # first match wins
    assert sync.mode_for("Lists/python/dev") == "backup"
    assert sync.mode_for("INBOX") == "pull"
    assert account.archive == (
        ArchiveRule("INBOX", older_than="2024-01-31"),  # an unquoted YAML date too
        ArchiveRule(
            "Lists/*", "6m", 1572864, keep_flagged=False, keep_unread=False, to="Local/lists"
        ),
        ArchiveRule("Sent", larger_than=2048),
    )
    assert account.archive[0].destination("INBOX") == "Archive/INBOX"
    assert account.archive[1].destination("Lists/python") == "Local/lists"


def test_defaults_of_the_new_keys(write: Callable[[object], Path], env: dict[str, str]) -> None:
    account = load(write(BASE), env).accounts["personal"]
    assert account.local.local_only == ()
    assert not account.local.is_local_only("Archive")
    assert account.sync.mode == "mirror" and account.sync.folder_modes == ()
    assert account.sync.mode_for("INBOX") == "mirror"
    assert account.archive == ()


def test_accounts_keep_file_order(write: Callable[[object], Path], env: dict[str, str]) -> None:
    one = BASE["accounts"]["personal"]
    names = ["zeta", "alpha", "mid"]
    data = {"accounts": {n: with_changes({"local.path": f"/m/{n}"}, one) for n in names}}
    assert list(load(write(data), env).accounts) == names


# --------------------------------------------------------------------------------------
# Paths


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/abs/Mail", "/abs/Mail"),
        ("~", "{home}"),
        ("~/Mail", "{home}/Mail"),
        ("$MAILROOT/x", "/srv/mail/x"),
        ("${MAILROOT}/x", "/srv/mail/x"),
        ("~/$USERNAME-mail", "{home}/alice-mail"),
        ("Mail", "{conf}/Mail"),  # relative to the config file's directory
        ("./Mail/../Other", "{conf}/Other"),
        ("../Mail", "{conf_parent}/Mail"),
        ("/a/b/", "/a/b"),
        ("~root/Mail", "{root_home}/Mail"),
        ("/a$/b", "/a$/b"),  # a $ that starts no name is kept
    ],
)
def test_path_expansion(
    write: Callable[[object], Path], env: dict[str, str], raw: str, expected: str
) -> None:
    import pwd

    env.update(MAILROOT="/srv/mail", USERNAME="alice")
    path = write(with_changes({f"{ACC}.local.path": raw, f"{ACC}.state_dir": "/state"}))
    want = expected.format(
        home=env["HOME"],
        conf=path.parent,
        conf_parent=path.parent.parent,
        root_home=pwd.getpwnam("root").pw_dir,
    )
    assert load(path, env).accounts["personal"].local.path == Path(want)


def test_paths_relative_to_config_not_cwd(
    write: Callable[[object], Path],
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changes = {
        f"{ACC}.local.path": "mail",
        f"{ACC}.state_dir": "state",
        f"{ACC}.remote.ca_file": "ca.pem",
    }
    path = write(with_changes(changes))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # The config itself is named relative to the current directory.
    account = load(Path("..") / "conf" / "config.yaml", env).accounts["personal"]
    assert account.local.path == path.parent / "mail"
    assert account.state_dir == path.parent / "state"
    assert account.remote.ca_file == path.parent / "ca.pem"
    assert account.local.path.is_absolute()


def test_unknown_user_in_path(write: Callable[[object], Path], env: dict[str, str]) -> None:
    path = write(with_changes({f"{ACC}.local.path": "~no-such-user-xyz/Mail"}))
    assert f"{ACC}.local.path: unknown user" in str(load_error(path, env))


def test_unset_variable_names_it(write: Callable[[object], Path], env: dict[str, str]) -> None:
    path = write(with_changes({f"{ACC}.state_dir": "$STATE/x"}))
    message = str(load_error(path, env))
    assert f"{path}: {ACC}.state_dir: $STATE in '$STATE/x' is not set" in message


SEPARATION: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = [
    # (id, account a, account b (changes to BASE's account), key in error, fragment)
    ("same local path", {}, {}, "accounts.b.local.path", "is the same as accounts.a.local.path"),
    (
        "same path spelled differently",
        {"local.path": "/m/x"},
        {"local.path": "/m/y/../x/"},
        "accounts.b.local.path",
        "is the same as",
    ),
    (
        "nested local paths",
        {"local.path": "/m"},
        {"local.path": "/m/b"},
        "accounts.b.local.path",
        "overlaps accounts.a.local.path",
    ),
    (
        "same state_dir",
        {"local.path": "/m/a", "state_dir": "/s"},
        {"local.path": "/m/b", "state_dir": "/s"},
        "accounts.b.state_dir",
        "is the same as accounts.a.state_dir",
    ),
    (
        "state inside another's maildir",
        {"local.path": "/m/a"},
        {"local.path": "/m/b", "state_dir": "/m/a/.state"},
        "accounts.b.state_dir",
        "overlaps accounts.a.local.path",
    ),
    (
        "state inside own maildir",
        {"local.path": "/m/a", "state_dir": "/m/a/state"},
        {"local.path": "/m/b"},
        "accounts.a.state_dir",
        "overlaps accounts.a.local.path",
    ),
]


@pytest.mark.parametrize(
    ("a", "b", "key", "fragment"),
    [row[1:] for row in SEPARATION],
    ids=[row[0] for row in SEPARATION],
)
def test_accounts_must_not_share_directories(
    write: Callable[[object], Path],
    env: dict[str, str],
    a: dict[str, Any],
    b: dict[str, Any],
    key: str,
    fragment: str,
) -> None:
    one = BASE["accounts"]["personal"]
    data = {"accounts": {"a": with_changes(a, one), "b": with_changes(b, one)}}
    path = write(data)
    message = str(load_error(path, env))
    assert message.startswith(f"{path}: {key}: {fragment}"), message


def test_default_state_dirs_differ_per_account(
    write: Callable[[object], Path], env: dict[str, str]
) -> None:
    one = BASE["accounts"]["personal"]
    data = {
        "accounts": {
            "a": with_changes({"local.path": "/m/a"}, one),
            "b": with_changes({"local.path": "/m/b"}, one),
        }
    }
    accounts = load(write(data), env).accounts
    assert accounts["a"].state_dir != accounts["b"].state_dir


# --------------------------------------------------------------------------------------
# default_path


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HOME": "/home/a"}, "/home/a/.config/mirrorsync/config.yaml"),
        ({"HOME": "/home/a", "XDG_CONFIG_HOME": "/xdg"}, "/xdg/mirrorsync/config.yaml"),
        ({"HOME": "/home/a", "XDG_CONFIG_HOME": ""}, "/home/a/.config/mirrorsync/config.yaml"),
        ({"HOME": "/home/a", "XDG_CONFIG_HOME": "rel"}, "/home/a/.config/mirrorsync/config.yaml"),
    ],
)
def test_default_path(env: dict[str, str], expected: str) -> None:
    assert default_path(env) == Path(expected)


def test_default_path_without_home_uses_passwd() -> None:
    import pwd

    home = pwd.getpwuid(os.getuid()).pw_dir
    assert default_path({}) == Path(home, ".config/mirrorsync/config.yaml")


# --------------------------------------------------------------------------------------
# Passwords


def remote(**kwargs: Any) -> RemoteConfig:
    return RemoteConfig(host="h", username="u", port=993, **kwargs)


def password_error(r: RemoteConfig, env: dict[str, str], **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_password(r, env, **kwargs)
    return str(info.value)


def test_password_given() -> None:
    assert resolve_password(remote(password=" p w "), {}) == " p w "


def test_password_env(env: dict[str, str]) -> None:
    env["MAIL_PW"] = "s3cret"
    assert resolve_password(remote(password_env="MAIL_PW"), env) == "s3cret"


@pytest.mark.parametrize(("value", "fragment"), [(None, "is not set"), ("", "is empty")])
def test_password_env_missing(env: dict[str, str], value: str | None, fragment: str) -> None:
    if value is not None:
        env["MAIL_PW"] = value
    message = password_error(remote(password_env="MAIL_PW"), env)
    assert f"environment variable MAIL_PW {fragment}" in message


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("echo s3cret", "s3cret"),
        ("printf 's3cret'", "s3cret"),  # no trailing newline
        ("printf 'first\\nsecond\\n'", "first"),
        ("printf ' spaced \\n'", " spaced "),  # only the newline is stripped
        ("printf 'crlf\\r\\n'", "crlf"),
        ("echo wrong | tr w s", "srong"),  # a pipeline: run via the shell
        ('echo "$MAIL_SECRET"', "from-env"),  # runs with the given env
        ("printf 'p\\303\\244ss'", "päss"),
    ],
)
def test_password_command(env: dict[str, str], command: str, expected: str) -> None:
    env["MAIL_SECRET"] = "from-env"
    assert resolve_password(remote(password_command=command), env) == expected


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("echo hunter2; exit 3", "the command exited with status 3; run it in a shell"),
        ("false", "exited with status 1"),
        ("no-such-command-xyz 2>/dev/null", "status 127; command not found"),
        ("true", "exited with status 0 but printed no password"),
        ("echo", "exited with status 0 but printed no password"),
        ("kill -TERM $$", "killed by SIGTERM"),
        ("printf '\\377'", "not UTF-8"),
    ],
)
def test_password_command_fails(env: dict[str, str], command: str, fragment: str) -> None:
    message = password_error(remote(password_command=command), env)
    assert fragment in message
    assert "hunter2" not in message
    assert "echo" not in message  # the command may hold the secret too


def test_password_command_timeout(env: dict[str, str]) -> None:
    # The background sleep keeps the pipe open after the shell is killed: this must not
    # wait for it.
    start = time.monotonic()
    message = password_error(remote(password_command="sleep 5 & sleep 5"), env, timeout=0.3)
    assert time.monotonic() - start < 3
    assert "did not finish within 0.3 s" in message


def test_password_command_timeout_ends_the_whole_group(env: dict[str, str], tmp_path: Path) -> None:
    # A hung helper with a child of its own: after the timeout no process of it is
    # left (before, the child lived on with PPID 1).
    pidfile = tmp_path / "pid"
    command = f"sh -c 'echo $$ > {pidfile}; exec sleep 301' & wait"
    message = password_error(remote(password_command=command), env, timeout=0.5)
    assert "did not finish within 0.5 s" in message
    pid = int(pidfile.read_text())
    # SIGKILL went to the whole group before the error was raised; the kernel takes a
    # moment to carry it out. The child must end (gone, or a zombie waiting for
    # init), never go on sleeping.
    state = ""
    for _ in range(500):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        if state in ("gone", "Z", "X"):
            break
        time.sleep(0.01)
    assert state in ("gone", "Z", "X"), f"the command's child {pid} outlived the timeout"


def test_password_default_timeout_is_30_seconds() -> None:
    import inspect

    assert inspect.signature(resolve_password).parameters["timeout"].default == 30


def test_password_errors_name_file_and_key(
    write: Callable[[object], Path], env: dict[str, str]
) -> None:
    changes = {f"{ACC}.remote.password": DELETE, f"{ACC}.remote.password_command": "exit 4"}
    path = write(with_changes(changes))
    r = load(path, env).accounts["personal"].remote
    message = password_error(r, env)
    assert message.startswith(f"{path}: {ACC}.remote.password_command: ")
    assert "status 4" in message


def test_where_configured_does_not_affect_equality(
    write: Callable[[object], Path], env: dict[str, str]
) -> None:
    r = load(write(BASE), env).accounts["personal"].remote
    assert r.source_key == f"{ACC}.remote"
    assert r == RemoteConfig(
        host="imap.example.com", username="alice@example.com", port=993, password="hunter2"
    )
    assert "source_file" not in repr(r)


def test_load_does_not_run_password_command(
    write: Callable[[object], Path], env: dict[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    changes = {
        f"{ACC}.remote.password": DELETE,
        f"{ACC}.remote.password_command": f"touch {marker}; echo x",
    }
    load(write(with_changes(changes)), env)
    assert not marker.exists()


# --------------------------------------------------------------------------------------
# Folder patterns

PATTERNS: list[tuple[str, str, bool]] = [
    # (pattern, canonical folder name, matches)
    ("*", "INBOX", True),
    ("*", "a/b/c", True),
    ("%", "Sent", True),
    ("%", "a/b", False),
    ("INBOX", "INBOX", True),
    ("INBOX", "inbox", True),
    ("inbox", "INBOX", True),
    ("Inbox", "iNbOx", True),
    ("INBOX", "INBOX/sub", False),
    ("INBOX/*", "inbox/sub", True),
    ("inbox/%", "INBOX/sub", True),
    ("inbox/%", "INBOX/sub/deeper", False),
    ("inbox/sub", "INBOX/Sub", False),  # only INBOX itself is case-insensitive
    ("inbox*", "INBOXES", False),  # "INBOXES" is not INBOX: case matters
    ("INBOX*", "INBOXES", True),
    ("I%", "inbox", True),
    ("I*", "inboxa", False),  # not INBOX, so an ordinary case-sensitive name
    ("i*", "INBOX/a", True),
    ("*X", "inbox", True),
    ("Sent", "sent", False),
    ("Sent", "Sent", True),
    ("Sent", "Sent/2024", False),
    ("Sent*", "Sent/2024", True),
    ("Sent%", "Sent/2024", False),
    ("Sent/%", "Sent/2024", True),
    ("%/Junk", "a/Junk", True),
    ("%/Junk", "a/b/Junk", False),
    ("*/Junk", "a/b/Junk", True),
    ("*/Junk", "Junk", False),
    ("a*b*c", "a/x/b/y/c", True),
    ("a%b%c", "axbyc", True),
    ("a%b%c", "ax/byc", False),
    ("Lists/*", "Lists", False),
    ("", "", True),
    ("Ärger/%", "Ärger/x", True),
    ("a.b", "a.b", True),
    ("a.b", "axb", False),  # no regex leaks
    ("[a]", "[a]", True),
    ("?", "x", False),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), PATTERNS)
def test_pattern(pattern: str, name: str, expected: bool) -> None:
    assert FolderFilter(include=(pattern,)).matches(name) is expected


FILTERS: list[tuple[tuple[str, ...], tuple[str, ...], str, bool]] = [
    # (include, exclude, name, matches)
    (("*",), (), "anything/at/all", True),
    (("*",), ("Trash",), "Trash", False),
    (("*",), ("Trash",), "Trash/old", True),
    (("*",), ("Trash*",), "Trash/old", False),
    (("INBOX", "Sent"), (), "Sent", True),
    (("INBOX", "Sent"), (), "Drafts", False),
    (("*",), ("inbox",), "INBOX", False),
    (("%",), ("%/%",), "a", True),
    (("Lists/*",), ("Lists/spam",), "Lists/spam", False),
    (("Lists/*",), ("Lists/spam",), "Lists/python", True),
    ((), (), "INBOX", False),
]


@pytest.mark.parametrize(("include", "exclude", "name", "expected"), FILTERS)
def test_filter(
    include: tuple[str, ...], exclude: tuple[str, ...], name: str, expected: bool
) -> None:
    assert FolderFilter(include=include, exclude=exclude).matches(name) is expected


def test_default_filter_matches_everything() -> None:
    f = FolderFilter()
    assert all(f.matches(n) for n in ["INBOX", "inbox", "a", "a/b/c", ""])


def reference_match(pattern: str, name: str) -> bool:
    """The obvious regex translation; right for names that do not start with INBOX."""
    regex = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


names = st.text(alphabet="abAB/x", max_size=8)
patterns = st.text(alphabet="abAB/x*%", max_size=6)


@given(patterns, names)
def test_pattern_agrees_with_regex(pattern: str, name: str) -> None:
    assert FolderFilter(include=(pattern,)).matches(name) == reference_match(pattern, name)


# Only INBOX itself or a name under it: "INBOXa" is an ordinary, case-sensitive name.
inbox_rests = st.one_of(st.just(""), st.text(alphabet="/ab", max_size=5).map(lambda r: "/" + r))


@given(st.text(alphabet="inboxINBOX/a*%", max_size=10), inbox_rests)
def test_inbox_case_is_irrelevant(pattern: str, rest: str) -> None:
    for spelling in ("INBOX", "inbox", "InBoX"):
        assert FolderFilter(include=(pattern,)).matches(spelling + rest) == FolderFilter(
            include=(pattern,)
        ).matches("INBOX" + rest)


# --------------------------------------------------------------------------------------
# The sample config must stay valid.


def test_sample_config_loads(env: dict[str, str]) -> None:
    env["MIRRORSYNC_WORK_PASSWORD"] = "work-secret"
    config = load(REPO / "sample-config.yaml", env)
    home = Path(env["HOME"])
    assert list(config.accounts) == ["personal", "work"]
    personal, work = config.accounts["personal"], config.accounts["work"]
    assert personal.remote.password_command == "pass show mail/personal"
    assert personal.local.path == home / "Mail/personal"
    assert personal.state_dir == home / ".local/state/mirrorsync/personal"
    assert personal.folders.matches("INBOX") and not personal.folders.matches("Junk")
    assert personal.local.is_local_only("Archive/INBOX")
    assert personal.sync.mode_for("INBOX") == "mirror"
    assert [r.folder for r in personal.archive] == ["INBOX", "Lists/*"]
    assert personal.archive[1].larger_than == 5 * 1024**2
    assert work.remote.port == 143
    assert work.local.layout == "maildir++"
    assert work.state_dir == home / ".local/state/mirrorsync/work"
    assert resolve_password(work.remote, env) == "work-secret"


def test_sample_config_mentions_every_key() -> None:
    """Every key the loader accepts is shown (maybe commented out) in the sample."""
    text = (REPO / "sample-config.yaml").read_text()
    keys = [
        "accounts", "remote", "host", "port", "tls", "username", "password",
        "password_command", "password_env", "ca_file", "timeout", "max_connections",
        "local", "path", "layout", "state_dir", "folders", "include", "exclude", "sync",
        "max_delete_share", "guard_min", "local_only", "mode", "folder_modes", "archive",
        "folder", "older_than", "larger_than", "keep_flagged", "keep_unread", "to",
        "hooks", "pre_sync", "post_sync", "new_mail",
        "auth", "oauth2_token_command", "oauth2", "token_url", "client_id", "scope",
        "client_secret", "client_secret_command", "device_url", "auth_url", "token_store",
        "provider", "rename",
    ]  # fmt: skip
    for key in keys:
        assert re.search(rf"^\s*#?\s*(?:-\s*)?{key}:", text, re.MULTILINE), key
