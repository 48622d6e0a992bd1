"""OAuth2 sign-in: where access tokens come from, and the SASL exchange that uses them.

An account with `auth: xoauth2` or `auth: oauthbearer` signs in with an access token
instead of a password. The token comes from `oauth2_token_command` (a helper the user
already has) or from mirrorsync's own client (`oauth2:`), which trades the refresh
token that `mirrorsync login` obtained for a fresh access token at the provider's
token endpoint. Access tokens live in this process only, each until shortly before
the provider said it expires; the refresh token is kept in the account's state
directory with mode 0600, or in the system keyring when chosen.

Every place that logs in calls `sign_in` with a function that makes one attempt on
its own connection; `sign_in` picks the secret and, when the server refuses a token,
fetches a new one and tries once more (a token can be revoked or expire early).

No secret (token, refresh token, client secret) is ever put into a message: errors
name the provider's host and its RFC 6749 error code, never a request or an answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from mirrorsync.config import OAuth2Config, RemoteConfig, run_secret_command
from mirrorsync.errors import AuthenticationFailed, ConfigError, ConnectionFailed

# A token command's token is asked for again after this long (the command does not
# say when its token expires; the big providers' tokens live an hour).
TOKEN_COMMAND_LIFETIME = 300.0
# A refreshed token is replaced this long before the provider said it expires, so
# that a run or a reconnect does not start with a token about to lapse.
EXPIRY_MARGIN = 120.0
HTTP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0
KEYRING_SERVICE = "mirrorsync"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 6749 error codes are words; anything else a provider answers is not repeated.
_ERROR_CODE = re.compile(r"[a-z_]{1,40}")

clock: Callable[[], float] = time.monotonic  # the tests move it forward
sleep: Callable[[float], None] = time.sleep  # between device-flow polls; the tests' own
# Handed the sign-in URL of the code flow, after it is printed: the tests act as the
# browser through it. mirrorsync itself only prints the URL.
browser: Callable[[str], None] | None = None


class TokenRefused(AuthenticationFailed):
    """The provider refused the stored refresh token (revoked, expired, or the app's
    access removed): only a new `mirrorsync login` helps."""


class NotSignedIn(AuthenticationFailed):
    """No refresh token stored yet."""


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float  # on `clock`


_lock = threading.Lock()  # the daemon's account loops sign in from several threads
_tokens: dict[tuple[str, str], _Token] = {}
_envs: dict[tuple[str, str], Mapping[str, str]] = {}


def forget() -> None:
    """Drop every access token held (the tests start each run afresh)."""
    with _lock:
        _tokens.clear()
        _envs.clear()


def access_token(
    remote: RemoteConfig, env: Mapping[str, str] | None = None, *, refused: str | None = None
) -> str:
    """The access token to sign in to `remote` with: the one held while it is fresh
    and not the `refused` one, else a new one. `env` (for the commands) is kept from
    the first call, so logins deep in a run need not pass it."""
    key = (remote.source_file, remote.source_key)
    with _lock:
        if env is not None:
            _envs[key] = env
        env = _envs.get(key, os.environ)
        held = _tokens.get(key)
        if held is not None and held.value != refused and clock() < held.renew_at:
            return held.value
        _tokens.pop(key, None)
        if remote.oauth2_token_command is not None:
            token = _Token(_from_command(remote, env), clock() + TOKEN_COMMAND_LIFETIME)
        elif remote.oauth2 is not None:
            token = _refreshed(remote, remote.oauth2, env)
        else:  # the configuration's loader makes this impossible
            raise ConfigError("no token source", path=remote.source_file, key=remote.source_key)
        _tokens[key] = token
        return token.value


def _failer(remote: RemoteConfig, key: str) -> Callable[[str, str, str], NoReturn]:
    def fail(_key: str, message: str, hint: str = "") -> NoReturn:
        raise ConfigError(message, path=remote.source_file, key=key, hint=hint)

    return fail


def _from_command(remote: RemoteConfig, env: Mapping[str, str]) -> str:
    assert remote.oauth2_token_command is not None
    key = f"{remote.source_key}.oauth2_token_command"
    return run_secret_command(
        remote.oauth2_token_command,
        env,
        COMMAND_TIMEOUT,
        _failer(remote, key),
        key=key,
        what="token",
    )


# -- the provider's token endpoint ---------------------------------------------------


def _client_secret(remote: RemoteConfig, cfg: OAuth2Config, env: Mapping[str, str]) -> str | None:
    if cfg.client_secret_command is not None:
        key = f"{remote.source_key}.oauth2.client_secret_command"
        return run_secret_command(
            cfg.client_secret_command,
            env,
            COMMAND_TIMEOUT,
            _failer(remote, key),
            key=key,
            what="client secret",
        )
    return cfg.client_secret


def _host(url: str) -> str:
    import urllib.parse

    return urllib.parse.urlsplit(url).netloc


def _post(url: str, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """POST a form, read a JSON object: (HTTP status, the object). A provider that
    cannot be reached is a ConnectionFailed naming its host only."""
    import urllib.error
    import urllib.parse
    import urllib.request

    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Accept": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConnectionFailed(
            f"cannot reach the OAuth2 provider at {_host(url)} ({reason})",
            hint="check the network and the oauth2 endpoints in the configuration",
        ) from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ConnectionFailed(
            f"the OAuth2 provider at {_host(url)} answered HTTP {status} without a JSON object",
            hint="check the oauth2 endpoints in the configuration",
        )
    return status, answer


def _error_code(answer: Mapping[str, Any]) -> str:
    code = answer.get("error")
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else "no error code"


def _client_form(
    remote: RemoteConfig, cfg: OAuth2Config, env: Mapping[str, str], **fields: str
) -> dict[str, str]:
    form = {"client_id": cfg.client_id, **fields}
    secret = _client_secret(remote, cfg, env)
    if secret is not None:
        form["client_secret"] = secret
    return form


def _token_from(cfg: OAuth2Config, answer: Mapping[str, Any]) -> _Token:
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise ConnectionFailed(
            f"the OAuth2 provider at {_host(cfg.token_url)} answered without an access token",
            hint="check oauth2.token_url",
        )
    lifetime = answer.get("expires_in", 3600)
    if isinstance(lifetime, str) and lifetime.isdigit():  # Microsoft's v1 endpoint
        lifetime = int(lifetime)
    if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool):
        lifetime = 3600
    return _Token(token, clock() + max(0.0, float(lifetime) - EXPIRY_MARGIN))


def _refreshed(remote: RemoteConfig, cfg: OAuth2Config, env: Mapping[str, str]) -> _Token:
    refresh = load_refresh_token(cfg)
    if refresh is None:
        raise NotSignedIn(
            f"account {cfg.account} has not signed in yet (no refresh token)",
            hint=f"run: mirrorsync login {cfg.account}",
        )
    form = _client_form(
        remote, cfg, env, grant_type="refresh_token", refresh_token=refresh, scope=cfg.scope
    )
    status, answer = _post(cfg.token_url, form)
    if status != 200:
        code = _error_code(answer)
        if code == "invalid_grant":
            raise TokenRefused(
                f"account {cfg.account}: {_host(cfg.token_url)} refused the stored refresh "
                "token (invalid_grant: revoked or expired)",
                hint=f"sign in again with: mirrorsync login {cfg.account}",
            )
        raise AuthenticationFailed(
            f"account {cfg.account}: {_host(cfg.token_url)} refused to refresh the access "
            f"token (HTTP {status}, {code})",
            hint="check oauth2.client_id, client_secret and scope",
        )
    token = _token_from(cfg, answer)
    rotated = answer.get("refresh_token")
    if isinstance(rotated, str) and rotated and rotated != refresh:
        save_refresh_token(cfg, rotated)  # Microsoft rotates them; the old one lapses
    return token


# -- the refresh token's store ---------------------------------------------------------


def _keyring(cfg: OAuth2Config) -> Any:
    try:
        import keyring  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigError(
            "token_store: keyring needs the Python package keyring",
            key=f"accounts.{cfg.account}.remote.oauth2.token_store",
            hint="install it (pip install keyring), or use token_store: file",
        ) from None
    return keyring


def load_refresh_token(cfg: OAuth2Config) -> str | None:
    if cfg.token_store == "keyring":
        found = _keyring(cfg).get_password(KEYRING_SERVICE, cfg.account)
        return found or None
    try:
        text = cfg.token_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuthenticationFailed(
            f"cannot read the refresh token of account {cfg.account} from {cfg.token_file} "
            f"({e.strerror or e})",
            hint="check the state directory's permissions",
        ) from None
    return text or None


def save_refresh_token(cfg: OAuth2Config, token: str) -> str:
    """Keep `token`; where it went, in words."""
    if cfg.token_store == "keyring":
        _keyring(cfg).set_password(KEYRING_SERVICE, cfg.account, token)
        return f"the system keyring (service {KEYRING_SERVICE}, entry {cfg.account})"
    path = cfg.token_file
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Created 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return f"{path} (mode 0600)"


# -- SASL ------------------------------------------------------------------------------


def initial_response(mechanism: str, user: str, token: str, host: str, port: int) -> bytes:
    """The client's first (and only) SASL message: XOAUTH2 as Google and Microsoft
    document it, OAUTHBEARER as RFC 7628 section 3.1 has it."""
    if mechanism == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    name = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={name},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


def responder(initial: bytes) -> Callable[[bytes], bytes]:
    """imaplib's authobject: the initial response first, then an empty one to the
    error challenge a refusing server sends (RFC 7628 section 3.2.3), after which
    the server answers NO."""
    sent = False

    def respond(_challenge: bytes) -> bytes:
        nonlocal sent
        if sent:
            return b""
        sent = True
        return initial

    return respond


def mechanism(remote: RemoteConfig) -> str | None:
    """The SASL mechanism of `remote`, None for a password LOGIN."""
    return None if remote.auth == "password" else remote.auth.upper()


def refusal_hint(remote: RemoteConfig) -> str:
    if remote.auth == "password":
        return "check username and password"
    return "check the username: it must be the account the token was issued for"


def sign_in(
    remote: RemoteConfig, password: str, attempt: Callable[[str | None, str], None]
) -> None:
    """Log in with `attempt(mechanism, secret)`, which makes one try on the caller's
    connection and raises AuthenticationFailed when the server refuses. With a
    token, a refusal gets one more try with a new token, on the same connection
    (a refused AUTHENTICATE leaves it not yet authenticated)."""
    mech = mechanism(remote)
    if mech is None:
        attempt(None, password)
        return
    token = access_token(remote)
    try:
        attempt(mech, token)
    except AuthenticationFailed:
        attempt(mech, access_token(remote, refused=token))


# -- mirrorsync login ------------------------------------------------------------------


def login(
    remote: RemoteConfig,
    env: Mapping[str, str],
    show: Callable[[str], None],
) -> str:
    """Get the first refresh token: the device flow where the provider has one,
    else the authorization code flow with PKCE. `show` prints a line for the user
    (the URL to open, the code to enter). Returns where the token was stored."""
    cfg = remote.oauth2
    if cfg is None:
        raise ConfigError(
            "mirrorsync login is for accounts with an oauth2: section",
            path=remote.source_file,
            key=remote.source_key,
            hint="accounts with oauth2_token_command get their tokens from that command",
        )
    if cfg.device_url is not None:
        answer = _device_flow(remote, cfg, env, show)
    elif cfg.auth_url is not None:
        answer = _code_flow(remote, cfg, env, show)
    else:
        raise ConfigError(
            "neither device_url nor auth_url is set",
            path=remote.source_file,
            key=f"{remote.source_key}.oauth2",
            hint="set the provider's device_url (device flow) or auth_url",
        )
    token = _token_from(cfg, answer)
    refresh = answer.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise AuthenticationFailed(
            f"{_host(cfg.token_url)} signed in but gave no refresh token",
            hint="add the provider's offline-access scope to oauth2.scope "
            "(offline_access at Microsoft)",
        )
    where = save_refresh_token(cfg, refresh)
    with _lock:
        _tokens[(remote.source_file, remote.source_key)] = token
    return where


def _device_flow(
    remote: RemoteConfig,
    cfg: OAuth2Config,
    env: Mapping[str, str],
    show: Callable[[str], None],
) -> dict[str, Any]:
    """RFC 8628: ask for a user code, show it, poll the token endpoint."""
    assert cfg.device_url is not None
    status, start = _post(cfg.device_url, {"client_id": cfg.client_id, "scope": cfg.scope})
    code = start.get("device_code")
    uri = start.get("verification_uri") or start.get("verification_url")  # Google's spelling
    user_code = start.get("user_code")
    if status != 200 or not all(isinstance(v, str) for v in (code, uri, user_code)):
        raise AuthenticationFailed(
            f"{_host(cfg.device_url)} refused to start a device sign-in "
            f"(HTTP {status}, {_error_code(start)})",
            hint="check oauth2.client_id and scope",
        )
    show(f"To sign in account {cfg.account}, open {uri} and enter the code {user_code}")
    interval = float(start.get("interval", 5))
    deadline = clock() + float(start.get("expires_in", 900))
    while clock() < deadline:
        sleep(interval)
        form = _client_form(remote, cfg, env, grant_type=DEVICE_GRANT, device_code=str(code))
        status, answer = _post(cfg.token_url, form)
        if status == 200:
            return answer
        error = _error_code(answer)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5  # RFC 8628 section 3.5
            continue
        raise AuthenticationFailed(
            f"sign-in of account {cfg.account} did not complete ({error})",
            hint=f"run mirrorsync login {cfg.account} again",
        )
    raise AuthenticationFailed(
        f"sign-in of account {cfg.account} timed out: the code was not entered in time",
        hint=f"run mirrorsync login {cfg.account} again",
    )


def _code_flow(
    remote: RemoteConfig,
    cfg: OAuth2Config,
    env: Mapping[str, str],
    show: Callable[[str], None],
) -> dict[str, Any]:
    """RFC 6749 section 4.1 with PKCE (RFC 7636, S256) and a loopback redirect
    (RFC 8252 section 7.3): the browser comes back to a one-shot HTTP server on
    127.0.0.1, whose port the provider accepts whatever it is."""
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, HTTPServer

    assert cfg.auth_url is not None
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state = secrets.token_urlsafe(16)
    got: dict[str, str] = {}

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # the query holds the code: never logged

        def do_GET(self) -> None:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            if query.get("state") == state and ("code" in query or "error" in query):
                got.update(query)
            body = b"mirrorsync: you can close this tab and return to the terminal.\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class OneShot(HTTPServer):
        timeout = 600.0
        timed_out = False

        def handle_timeout(self) -> None:
            self.timed_out = True

    with OneShot(("127.0.0.1", 0), Redirect) as server:
        redirect = f"http://127.0.0.1:{server.server_address[1]}/"
        query = {
            "response_type": "code",
            "client_id": cfg.client_id,
            "redirect_uri": redirect,
            "scope": cfg.scope,
            "state": state,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
            # Google gives a refresh token only for offline access, and again only
            # with consent asked anew.
            "access_type": "offline",
            "prompt": "consent",
        }
        sep = "&" if "?" in cfg.auth_url else "?"
        url = cfg.auth_url + sep + urllib.parse.urlencode(query)
        show(f"To sign in account {cfg.account}, open this URL in a browser:\n{url}")
        if browser is not None:
            browser(url)
        while not got:
            server.handle_request()
            if server.timed_out:
                raise AuthenticationFailed(
                    f"sign-in of account {cfg.account} timed out waiting for the browser",
                    hint=f"run mirrorsync login {cfg.account} again",
                )
    if "code" not in got:
        error = got.get("error", "")
        raise AuthenticationFailed(
            f"sign-in of account {cfg.account} was not granted "
            f"({error if _ERROR_CODE.fullmatch(error) else 'no reason given'})",
            hint=f"run mirrorsync login {cfg.account} again",
        )
    form = _client_form(
        remote,
        cfg,
        env,
        grant_type="authorization_code",
        code=got["code"],
        redirect_uri=redirect,
        code_verifier=verifier,
    )
    status, answer = _post(cfg.token_url, form)
    if status != 200:
        raise AuthenticationFailed(
            f"{_host(cfg.token_url)} refused the sign-in code (HTTP {status}, "
            f"{_error_code(answer)})",
            hint=f"run mirrorsync login {cfg.account} again",
        )
    return answer
