"""OAuth2 sign-in against Dovecot's oauth2 passdb and the local provider
(tests/oauthprovider.py): XOAUTH2 and OAUTHBEARER, tokens refreshed before they
expire and when the server refuses one, a revoked refresh token, a token command,
`mirrorsync login` with the device flow and with the code flow (PKCE), and no
secret anywhere it should not be."""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorsync import oauth
from mirrorsync.cli import Environment, main
from tests.harness import Mirror, Result, message
from tests.oauthprovider import CLIENT_ID, CLIENT_SECRET, Provider


@pytest.fixture(autouse=True)
def _fresh_tokens() -> Any:
    """Access tokens held by earlier tests' runs in this process are not this one's."""
    oauth.forget()
    yield
    oauth.forget()


def _oauth_mirror(
    account: Any, tmp: Path, provider: Provider, auth: str = "xoauth2", **oauth2: Any
) -> Mirror:
    """A Mirror whose remote signs in with mirrorsync's own OAuth2 client."""
    m = Mirror(account, tmp)
    data = yaml.safe_load(m.config.read_text())
    remote = data["accounts"]["test"]["remote"]
    del remote["password"]
    remote["auth"] = auth
    remote["oauth2"] = {
        "token_url": provider.url + "/token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": "https://mail.example/imap offline_access",
        **oauth2,
    }
    m.config.write_text(yaml.safe_dump(data))
    return m


def _signed_in(m: Mirror, provider: Provider) -> str:
    """As if `mirrorsync login` had run: a refresh token in the state directory."""
    token = provider.grant(m.account.user)
    m.state_dir.mkdir(parents=True, exist_ok=True)
    (m.state_dir / "oauth2-refresh-token").write_text(token + "\n")
    return token


def _stored(m: Mirror) -> str:
    return (m.state_dir / "oauth2-refresh-token").read_text().strip()


@pytest.mark.parametrize("auth", ["xoauth2", "oauthbearer"])
def test_sync_signs_in_with_a_refreshed_token(
    oauth_account: Any, oauth_provider: Provider, tmp_path: Path, auth: str
) -> None:
    m = _oauth_mirror(oauth_account, tmp_path, oauth_provider, auth)
    first = _signed_in(m, oauth_provider)
    c = oauth_account.client()
    c.append("INBOX", message(1))
    c.logout()
    m.sync()
    assert len(list((m.root / "INBOX" / "new").iterdir())) == 1
    # the provider rotated the refresh token; the new one is kept, 0600
    assert _stored(m) != first and _stored(m) in oauth_provider.refresh
    mode = stat.S_IMODE((m.state_dir / "oauth2-refresh-token").stat().st_mode)
    assert mode == 0o600
    log = (Path(oauth_account.server.base) / "dovecot.log").read_text()
    assert f"user=<{oauth_account.user}>, method={auth.upper()}" in log


def test_a_refused_token_is_refreshed_once(
    oauth_account: Any, oauth_provider: Provider, tmp_path: Path
) -> None:
    m = _oauth_mirror(oauth_account, tmp_path, oauth_provider)
    _signed_in(m, oauth_provider)
    m.sync()
    before = oauth_provider.refreshes
    # the token held by this process is no longer good (revoked, or expired early)
    oauth_provider.expire_all()
    refused = oauth_provider.refused_introspections
    m.sync()
    assert oauth_provider.refused_introspections == refused + 1  # refused once only
    assert oauth_provider.refreshes == before + 1


def test_a_token_about_to_expire_is_refreshed_first(
    oauth_account: Any,
    oauth_provider: Provider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(oauth, "clock", lambda: now[0])
    m = _oauth_mirror(oauth_account, tmp_path, oauth_provider)
    _signed_in(m, oauth_provider)
    m.sync()
    before = oauth_provider.refreshes
    m.sync()
    assert oauth_provider.refreshes == before  # an hour's token: used again
    now[0] += oauth_provider.expires_in - oauth.EXPIRY_MARGIN + 1
    refused = oauth_provider.refused_introspections
    m.sync()
    assert oauth_provider.refreshes == before + 1
    assert oauth_provider.refused_introspections == refused  # never sent a stale one


def test_a_revoked_refresh_token_is_one_line_and_exit_3(
    oauth_account: Any, oauth_provider: Provider, tmp_path: Path
) -> None:
    m = _oauth_mirror(oauth_account, tmp_path, oauth_provider)
    oauth_provider.revoke(_signed_in(m, oauth_provider))
    r = m.run("sync")
    assert r.status == 3, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "refused the stored refresh token" in lines[0]
    assert "mirrorsync login test" in lines[0]


def test_not_signed_in_says_how(
    oauth_account: Any, oauth_provider: Provider, tmp_path: Path
) -> None:
    m = _oauth_mirror(oauth_account, tmp_path, oauth_provider)
    r = m.run("sync")
    assert r.status == 3, r
    assert r.err.strip().splitlines() == [
        "mirrorsync: account test has not signed in yet (no refresh token); "
        "run: mirrorsync login test"
    ]


def _token_command_mirror(account: Any, tmp: Path, command: str) -> Mirror:
    m = Mirror(account, tmp)
    data = yaml.safe_load(m.config.read_text())
    remote = data["accounts"]["test"]["remote"]
    del remote["password"]
    remote["auth"] = "oauthbearer"
    remote["oauth2_token_command"] = command
    m.config.write_text(yaml.safe_dump(data))
    return m


def test_token_command(oauth_account: Any, oauth_provider: Provider, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(oauth_provider.token_for(oauth_account.user) + "\n")
    m = _token_command_mirror(oauth_account, tmp_path, f"cat {token_file}")
    m.sync()
    # the helper's token lapsed and it has a new one: a refused login asks it again
    oauth_provider.expire_all()
    token_file.write_text(oauth_provider.token_for(oauth_account.user) + "\n")
    m.sync()


def test_a_failing_token_command(oauth_account: Any, tmp_path: Path) -> None:
    m = _token_command_mirror(oauth_account, tmp_path, "echo not-a-token; exit 7")
    r = m.run("sync")
    assert r.status == 2, r
    assert r.err.strip().splitlines() == [
        f"mirrorsync: {m.config}: accounts.test.remote.oauth2_token_command: the command "
        "exited with status 7; run it in a shell to see why"
    ]
    assert "not-a-token" not in r.err


def _run(m: Mirror, *args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    status = main(["-c", str(m.config), *args], Environment(out, err, dict(os.environ)))
    return Result(status, out.getvalue(), err.getvalue())


def test_login_with_the_device_flow(
    oauth_account: Any,
    oauth_provider: Provider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = _oauth_mirror(
        oauth_account, tmp_path, oauth_provider, device_url=oauth_provider.url + "/device"
    )
    waits: list[float] = []

    def wait(seconds: float) -> None:
        # the user enters the code while mirrorsync waits its second poll
        waits.append(seconds)
        if len(waits) == 2:
            oauth_provider.approve(oauth_account.user)

    monkeypatch.setattr(oauth, "sleep", wait)
    r = _run(m, "login", "test")
    assert r.status == 0, r
    assert f"open {oauth_provider.url}/activate and enter the code ABCD-EFGH" in r.out
    assert "test: signed in; refresh token kept in" in r.out
    assert "test: logged in to" in r.out
    assert waits == [1.0, 1.0]  # a poll answered pending, then one approved
    assert _stored(m) in oauth_provider.refresh
    oauth.forget()  # a later run: from the stored refresh token alone
    m.sync()


def test_login_with_the_code_flow_and_pkce(
    oauth_account: Any,
    oauth_provider: Provider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = _oauth_mirror(
        oauth_account, tmp_path, oauth_provider, auth_url=oauth_provider.url + "/authorize"
    )
    visits: list[str] = []

    def browse(url: str) -> None:
        """The user's browser: signs in at the provider, which redirects back."""
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        assert query["code_challenge_method"] == "S256"
        redirect = query["redirect_uri"]
        assert redirect.startswith("http://127.0.0.1:")
        code = oauth_provider.code_for(oauth_account.user, query["code_challenge"], redirect)
        back = f"{redirect}?code={code}&state={query['state']}"

        def visit() -> None:
            with urllib.request.urlopen(back, timeout=10) as page:
                visits.append(page.read().decode())

        threading.Thread(target=visit).start()

    monkeypatch.setattr(oauth, "browser", browse)
    r = _run(m, "login", "test")
    assert r.status == 0, r
    assert f"open this URL in a browser:\n{oauth_provider.url}/authorize?" in r.out
    assert visits and "you can close this tab" in visits[0]
    assert _stored(m) in oauth_provider.refresh


def test_no_secret_in_output_logs_caches_or_files(
    oauth_account: Any,
    oauth_provider: Provider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every run a user makes, at -vv, successful or not: the output and every file
    mirrorsync wrote (state, Maildir, config cache) holds no access token, refresh
    token, client secret or password. The refresh token's own file is the one
    place a refresh token may be."""
    cache = Path(os.environ["XDG_CACHE_HOME"])
    m = _oauth_mirror(oauth_account, tmp_path / "a", oauth_provider)
    monkeypatch.setattr(oauth, "sleep", lambda _s: oauth_provider.approve(oauth_account.user))
    data = yaml.safe_load(m.config.read_text())
    data["accounts"]["test"]["remote"]["oauth2"]["device_url"] = oauth_provider.url + "/device"
    m.config.write_text(yaml.safe_dump(data))
    c = oauth_account.client()
    c.append("INBOX", message(1))
    c.logout()
    outputs = [_run(m, "-vv", "login", "test")]
    outputs.append(_run(m, "-vv", "sync"))
    oauth_provider.expire_all()  # refused once, then refreshed
    outputs.append(_run(m, "-vv", "sync"))
    outputs.append(_run(m, "-vv", "status"))
    outputs.append(_run(m, "-vv", "check-config"))
    oauth.forget()
    outputs.append(m.run_process("-vv", "sync"))
    oauth_provider.revoke(_stored(m))
    oauth.forget()
    outputs.append(_run(m, "-vv", "sync"))  # refused: an error message
    # a password account on the same server, at -vv, for the password
    p = Mirror(oauth_account, tmp_path / "p")
    data = yaml.safe_load(p.config.read_text())
    del data["accounts"]["test"]["remote"]["password"]
    data["accounts"]["test"]["remote"]["password_env"] = "OAUTH_TEST_PASSWORD"
    p.config.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("OAUTH_TEST_PASSWORD", oauth_account.password)
    outputs.append(_run(p, "-vv", "sync"))
    assert [r.status for r in outputs] == [0, 0, 0, 0, 0, 0, 3, 0], outputs

    secrets = [
        *oauth_provider.issued,
        CLIENT_SECRET,
        oauth_account.password,
    ]
    assert len(secrets) > 6
    texts = {f"output {i}": r.out + r.err for i, r in enumerate(outputs)}
    for root in (tmp_path, cache):
        for path in root.rglob("*"):
            if path.is_file() and path.name != "oauth2-refresh-token":
                if path.name == "config.yaml":
                    continue  # the user's own file, holding the client secret
                texts[str(path)] = path.read_bytes().decode("latin-1")
    assert len(texts) > 10
    found = [(where, s) for where, text in texts.items() for s in secrets if s in text]
    assert found == []
    # the -vv output did show the IMAP conversation after the login
    assert "ENABLE QRESYNC" in outputs[1].err


@pytest.mark.parametrize("auth", ["xoauth2", "oauthbearer"])
def test_push_connection_signs_in_and_retries_a_refused_token(
    oauth_account: Any, oauth_provider: Provider, tmp_path: Path, auth: str
) -> None:
    """The daemon's push connection (mirrorsync.imap.idle) signs in as the store does,
    with one more try when the token it held was refused."""
    from mirrorsync.config import load
    from mirrorsync.errors import AuthenticationFailed
    from mirrorsync.imap.idle import ImapConnection

    m = _oauth_mirror(oauth_account, tmp_path, oauth_provider, auth)
    _signed_in(m, oauth_provider)
    remote = load(m.config, dict(os.environ)).accounts["test"].remote
    conn = ImapConnection.open(remote, oauth.access_token(remote, dict(os.environ)))
    assert "IDLE" in conn.capabilities
    conn.close()
    oauth_provider.expire_all()
    refused = oauth_provider.refused_introspections
    ImapConnection.open(remote, "").close()
    assert oauth_provider.refused_introspections == refused + 1
    # a user name the token was not issued for: refused twice, then one error
    other = dataclasses.replace(remote, username=oauth_account.user + "x")
    with pytest.raises(AuthenticationFailed) as e:
        ImapConnection.open(other, "")
    assert str(e.value) == (
        f"login refused for {other.username} at {other.host}:{other.port}; check the "
        "username: it must be the account the token was issued for"
    )
