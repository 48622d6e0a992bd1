"""Unit tests for OAuth2 sign-in: the configuration's rules (tables), the SASL
messages, the refresh token's store, and the token logic against the local
provider (tests/oauthprovider.py), without an IMAP server."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorsync import oauth
from mirrorsync.config import REFRESH_TOKEN_FILE, load
from mirrorsync.errors import AuthenticationFailed, ConfigError, ConnectionFailed, ExitStatus
from tests.oauthprovider import CLIENT_ID, CLIENT_SECRET, Provider

ACC = "accounts.work"


def _config(remote: dict[str, Any]) -> dict[str, Any]:
    return {
        "accounts": {
            "work": {
                "remote": {"host": "imap.example.com", "username": "bob@example.com", **remote},
                "local": {"path": "/tmp/Mail"},
                "state_dir": "/tmp/state-work",
            }
        }
    }


OAUTH2 = {
    "token_url": "https://login.example.com/token",
    "client_id": "abc",
    "scope": "imap offline_access",
}

ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, remote keys, key named, message fragment)
    ("unknown auth", {"auth": "kerberos", "password": "x"}, "remote.auth", "expected one of"),
    ("no token source", {"auth": "xoauth2"}, "remote.oauth2", "no token source"),
    (
        "both token sources",
        {"auth": "xoauth2", "oauth2": OAUTH2, "oauth2_token_command": "t"},
        "remote",
        "oauth2_token_command and oauth2 are both set",
    ),
    (
        "password with a token",
        {"auth": "oauthbearer", "password": "x", "oauth2_token_command": "t"},
        "remote.password",
        "signs in with a token, not a password",
    ),
    (
        "token source with password auth",
        {"password": "x", "oauth2_token_command": "t"},
        "remote.oauth2_token_command",
        "is only used with auth: xoauth2",
    ),
    (
        "token url not https",
        {"auth": "xoauth2", "oauth2": {**OAUTH2, "token_url": "http://login.example.com/t"}},
        "remote.oauth2.token_url",
        "expected an https:// URL",
    ),
    (
        "missing client_id",
        {"auth": "xoauth2", "oauth2": {"token_url": "https://a/t", "scope": "s"}},
        "remote.oauth2.client_id",
        "required key is missing",
    ),
    (
        "both client secrets",
        {
            "auth": "xoauth2",
            "oauth2": {**OAUTH2, "client_secret": "a", "client_secret_command": "b"},
        },
        "remote.oauth2",
        "client_secret and client_secret_command are both set",
    ),
    (
        "unknown token store",
        {"auth": "xoauth2", "oauth2": {**OAUTH2, "token_store": "vault"}},
        "remote.oauth2.token_store",
        "expected one of file, keyring",
    ),
    (
        "typo in oauth2",
        {"auth": "xoauth2", "oauth2": {**OAUTH2, "scopes": "x"}},
        "remote.oauth2.scopes",
        "did you mean scope?",
    ),
]


@pytest.mark.parametrize(
    ("remote", "key", "fragment"), [r[1:] for r in ERRORS], ids=[r[0] for r in ERRORS]
)
def test_config_errors(tmp_path: Path, remote: dict[str, Any], key: str, fragment: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(remote)))
    with pytest.raises(ConfigError) as e:
        load(path, {"HOME": str(tmp_path)})
    assert str(e.value).startswith(f"{path}: {ACC}.{key}: "), str(e.value)
    assert fragment in str(e.value)
    assert e.value.exit_status == ExitStatus.USAGE


def test_a_client_secret_is_not_in_its_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    oauth2 = {**OAUTH2, "client_secret": 123456789}
    path.write_text(yaml.safe_dump(_config({"auth": "xoauth2", "oauth2": oauth2})))
    with pytest.raises(ConfigError) as e:
        load(path, {"HOME": str(tmp_path)})
    assert "client_secret: expected a string" in str(e.value)
    assert "123456789" not in str(e.value)


def test_config_loaded(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    oauth2 = {**OAUTH2, "client_secret": "shh", "device_url": "https://login.example.com/d"}
    path.write_text(yaml.safe_dump(_config({"auth": "oauthbearer", "oauth2": oauth2})))
    remote = load(path, {"HOME": str(tmp_path)}).accounts["work"].remote
    assert remote.auth == "oauthbearer"
    assert remote.password is None and remote.password_command is None
    assert remote.oauth2 is not None
    assert remote.oauth2.token_file == Path("/tmp/state-work") / REFRESH_TOKEN_FILE
    assert remote.oauth2.account == "work"
    assert remote.oauth2.device_url == "https://login.example.com/d"
    assert remote.oauth2.auth_url is None
    assert "shh" not in repr(remote)


def test_password_accounts_are_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config({"password": "x"})))
    remote = load(path, {"HOME": str(tmp_path)}).accounts["work"].remote
    assert (remote.auth, remote.oauth2, remote.oauth2_token_command) == ("password", None, None)


def test_sasl_initial_responses() -> None:
    assert oauth.initial_response("XOAUTH2", "bob@x.org", "T0K", "h", 993) == (
        b"user=bob@x.org\x01auth=Bearer T0K\x01\x01"
    )
    # RFC 7628 section 3.1; "," and "=" in the name are escaped (RFC 5801)
    assert oauth.initial_response("OAUTHBEARER", "a,b=c", "T0K", "imap.x.org", 993) == (
        b"n,a=a=2Cb=3Dc,\x01host=imap.x.org\x01port=993\x01auth=Bearer T0K\x01\x01"
    )


def test_responder_answers_an_error_challenge_empty() -> None:
    respond = oauth.responder(b"first")
    error = base64.b64encode(b'{"status":"401"}')
    assert [respond(b""), respond(error), respond(error)] == [b"first", b"", b""]


@pytest.fixture
def provider() -> Any:
    p = Provider().start()
    yield p
    p.close()


def _remote(tmp_path: Path, provider: Provider, **extra: Any) -> Any:
    path = tmp_path / "config.yaml"
    oauth2 = {
        "token_url": provider.url + "/token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": "imap",
        **extra,
    }
    data = _config({"auth": "xoauth2", "oauth2": oauth2})
    data["accounts"]["work"]["state_dir"] = str(tmp_path / "state")
    path.write_text(yaml.safe_dump(data))
    oauth.forget()
    return load(path, {"HOME": str(tmp_path)}).accounts["work"].remote


def test_tokens_are_held_until_shortly_before_they_expire(
    tmp_path: Path, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    monkeypatch.setattr(oauth, "clock", lambda: now[0])
    remote = _remote(tmp_path, provider)
    oauth.save_refresh_token(remote.oauth2, provider.grant("bob"))
    first = oauth.access_token(remote, {})
    assert oauth.access_token(remote) == first
    assert oauth.access_token(remote, refused=first) != first  # refused: a new one
    held = oauth.access_token(remote)
    now[0] += provider.expires_in - oauth.EXPIRY_MARGIN - 1
    assert oauth.access_token(remote) == held
    now[0] += 2
    assert oauth.access_token(remote) not in (held, first)
    assert provider.refreshes == 3


def test_refresh_token_file_is_private_and_rotated(tmp_path: Path, provider: Provider) -> None:
    remote = _remote(tmp_path, provider)
    where = oauth.save_refresh_token(remote.oauth2, provider.grant("bob"))
    assert where.endswith("(mode 0600)")
    file = remote.oauth2.token_file
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    before = file.read_text()
    oauth.access_token(remote, {})
    assert file.read_text() != before
    assert file.read_text().strip() in provider.refresh


def test_a_wrong_client_secret(tmp_path: Path, provider: Provider) -> None:
    remote = _remote(tmp_path, provider, client_secret="wrong")
    oauth.save_refresh_token(remote.oauth2, provider.grant("bob"))
    with pytest.raises(AuthenticationFailed) as e:
        oauth.access_token(remote, {})
    assert str(e.value) == (
        f"account work: 127.0.0.1:{provider.url.rsplit(':', 1)[1]} refused to refresh the "
        "access token (HTTP 401, invalid_client); check oauth2.client_id, client_secret and scope"
    )
    assert "wrong" not in str(e.value)


def test_client_secret_command(tmp_path: Path, provider: Provider) -> None:
    remote = _remote(tmp_path, provider)
    path = tmp_path / "config.yaml"
    data = yaml.safe_load(path.read_text())
    oauth2 = data["accounts"]["work"]["remote"]["oauth2"]
    del oauth2["client_secret"]
    oauth2["client_secret_command"] = f"echo {CLIENT_SECRET}"
    path.write_text(yaml.safe_dump(data))
    remote = load(path, {"HOME": str(tmp_path)}).accounts["work"].remote
    oauth.save_refresh_token(remote.oauth2, provider.grant("bob"))
    assert oauth.access_token(remote, {"PATH": "/usr/bin:/bin"}) in provider.access


def test_an_unreachable_provider(tmp_path: Path, provider: Provider) -> None:
    remote = _remote(tmp_path, provider, token_url="http://127.0.0.1:9/token")
    oauth.save_refresh_token(remote.oauth2, "rt-x")
    with pytest.raises(ConnectionFailed) as e:
        oauth.access_token(remote, {})
    assert str(e.value).startswith("cannot reach the OAuth2 provider at 127.0.0.1:9 (")
    assert "rt-x" not in str(e.value)


def test_keyring_store_without_the_package(
    tmp_path: Path, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "keyring", None)  # import fails, installed or not
    remote = _remote(tmp_path, provider, token_store="keyring")
    with pytest.raises(ConfigError) as e:
        oauth.save_refresh_token(remote.oauth2, "rt-x")
    assert "needs the Python package keyring" in str(e.value)


def test_keyring_store(tmp_path: Path, provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the keyring package (here a stand-in with its two calls), the refresh
    token goes there and no file is written."""
    import sys
    import types

    kept: dict[tuple[str, str], str] = {}
    fake = types.ModuleType("keyring")
    fake.get_password = lambda service, name: kept.get((service, name))  # type: ignore[attr-defined]
    fake.set_password = lambda service, name, value: kept.__setitem__((service, name), value)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "keyring", fake)
    remote = _remote(tmp_path, provider, token_store="keyring")
    where = oauth.save_refresh_token(remote.oauth2, provider.grant("bob"))
    assert where == "the system keyring (service mirrorsync, entry work)"
    assert oauth.access_token(remote, {}) in provider.access
    assert kept[("mirrorsync", "work")] in provider.refresh  # rotated in place
    assert not remote.oauth2.token_file.exists()


def _load_with(tmp_path: Path, remote: dict[str, Any], **account: Any) -> Any:
    path = tmp_path / "config.yaml"
    data = _config(remote)
    if "host" not in remote:
        del data["accounts"]["work"]["remote"]["host"]  # the preset's
    data["accounts"]["work"].update(account)
    path.write_text(yaml.safe_dump(data))
    return load(path, {"HOME": str(tmp_path)}).accounts["work"]


def test_gmail_preset(tmp_path: Path) -> None:
    account = _load_with(
        tmp_path, {"provider": "gmail", "oauth2": {"client_id": "id", "client_secret": "s"}}
    )
    remote = account.remote
    assert (remote.host, remote.port, remote.tls, remote.auth) == (
        "imap.gmail.com",
        993,
        "imaps",
        "xoauth2",
    )
    assert remote.oauth2.token_url == "https://oauth2.googleapis.com/token"
    assert remote.oauth2.auth_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert remote.oauth2.device_url is None  # Google's device flow has no mail scope
    assert remote.oauth2.scope == "https://mail.google.com/"
    assert (remote.oauth2.client_id, remote.oauth2.client_secret) == ("id", "s")
    assert account.folders.exclude == ("[Gmail]/Important", "[Gmail]/Starred")
    assert account.folders.matches("[Gmail]/All Mail")


def test_a_preset_gives_way_to_what_is_set(tmp_path: Path) -> None:
    account = _load_with(
        tmp_path,
        {
            "provider": "outlook",
            "host": "imap.example.net",
            "oauth2": {"client_id": "id", "scope": "mine"},
        },
        folders={"exclude": ["Junk"]},
    )
    assert account.remote.host == "imap.example.net"
    assert account.remote.oauth2.scope == "mine"
    assert account.remote.oauth2.device_url.endswith("/common/oauth2/v2.0/devicecode")
    assert account.folders.exclude == ("Junk",)


def test_a_password_with_an_oauth_preset_is_an_app_password(tmp_path: Path) -> None:
    remote = _load_with(tmp_path, {"provider": "gmail", "password_env": "APP_PW"}).remote
    assert (remote.host, remote.auth, remote.oauth2) == ("imap.gmail.com", "password", None)


@pytest.mark.parametrize(
    ("remote", "key", "fragment"),
    [
        ({"provider": "aol", "password": "x"}, "remote.provider", "expected one of gmail, "),
        ({"provider": "fastmail"}, "remote.password", "no password source"),
        ({"provider": "outlook"}, "remote.oauth2", "no token source"),
    ],
)
def test_preset_errors(tmp_path: Path, remote: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load_with(tmp_path, remote)
    assert f"{ACC}.{key}: " in str(e.value) and fragment in str(e.value), str(e.value)


@pytest.mark.parametrize("name", ["fastmail", "icloud", "yahoo"])
def test_password_presets(tmp_path: Path, name: str) -> None:
    remote = _load_with(tmp_path, {"provider": name, "password": "app-password"}).remote
    assert remote.host.startswith("imap.") and remote.port == 993 and remote.auth == "password"
