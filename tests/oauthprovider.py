"""A small OAuth2 provider on loopback, for the sign-in tests: a token endpoint
(refresh_token, device_code and authorization_code grants), a device-authorization
endpoint (RFC 8628) and an introspection endpoint (RFC 7662) that Dovecot's `oauth2`
passdb asks about every token it is given.

The tests drive it directly: `approve(user)` stands in for the person who opens the
verification URL and says yes; `expire_all()` makes every access token handed out
so far refused, as when an hour has passed; `revoke(refresh_token)` is the user
removing the app's access. Tokens are random and counted, so a test can tell how
many refreshes a run made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
CLIENT_ID = "mirrorsync-test"
CLIENT_SECRET = "client-secret-" + "s3cr3t"


@dataclass
class Provider:
    """Start with `start()`, stop with `close()`. Tokens map to their user."""

    # live access and refresh tokens -> their user
    access: dict[str, str] = field(default_factory=dict)
    refresh: dict[str, str] = field(default_factory=dict)
    # device code -> its user once approved; authorization code -> user, challenge, redirect
    devices: dict[str, str | None] = field(default_factory=dict)
    codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # every token handed out, live or not: what must never show up anywhere
    issued: list[str] = field(default_factory=list)
    refreshes: int = 0
    introspections: int = 0
    refused_introspections: int = 0  # tokens Dovecot asked about that were not live
    # What the token endpoint says a token lives, in seconds.
    expires_in: int = 3600
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> Provider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                status, body = provider._answer(self.path, form, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- what the tests do

    def grant(self, user: str) -> str:
        """A refresh token for `user`, as if `mirrorsync login` had been run."""
        token = "rt-" + secrets.token_hex(12)
        self.refresh[token] = user
        self.issued.append(token)
        return token

    def token_for(self, user: str) -> str:
        """An access token for `user` (for a token command to print)."""
        token = "at-" + secrets.token_hex(12)
        self.access[token] = user
        self.issued.append(token)
        return token

    def approve(self, user: str) -> None:
        """Approve every pending device code for `user`."""
        for code, who in self.devices.items():
            if who is None:
                self.devices[code] = user

    def code_for(self, user: str, challenge: str, redirect: str) -> str:
        """The authorization code the provider would redirect the browser with."""
        code = "ac-" + secrets.token_hex(8)
        self.codes[code] = (user, challenge, redirect)
        return code

    def expire_all(self) -> None:
        self.access.clear()

    def revoke(self, refresh_token: str) -> None:
        self.refresh.pop(refresh_token, None)

    # -- the endpoints

    def _tokens(self, user: str) -> tuple[int, dict[str, object]]:
        access = self.token_for(user)
        refresh = self.grant(user)
        return 200, {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }

    def _answer(
        self, path: str, form: dict[str, str], authorization: str | None
    ) -> tuple[int, dict[str, object]]:
        if path == "/introspect":
            self.introspections += 1
            user = self.access.get(form.get("token", ""))
            if user is None:
                self.refused_introspections += 1
                return 200, {"active": "false"}
            return 200, {"active": "true", "username": user}
        if path == "/device":
            if form.get("client_id") != CLIENT_ID:
                return 401, {"error": "invalid_client"}
            code = "dc-" + secrets.token_hex(8)
            self.devices[code] = None
            return 200, {
                "device_code": code,
                "user_code": "ABCD-EFGH",
                "verification_uri": self.url + "/activate",
                "expires_in": 900,
                "interval": 1,
            }
        if path != "/token":
            return 404, {"error": "not_found"}
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return 401, {"error": "invalid_client"}
        grant = form.get("grant_type")
        if grant == "refresh_token":
            user = self.refresh.get(form.get("refresh_token", ""))
            if user is None:
                return 400, {"error": "invalid_grant", "error_description": "revoked"}
            self.refreshes += 1
            self.refresh.pop(form["refresh_token"])  # rotated, as Microsoft does
            return self._tokens(user)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            code = form.get("device_code", "")
            if code not in self.devices:
                return 400, {"error": "expired_token"}
            user = self.devices[code]
            if user is None:
                return 400, {"error": "authorization_pending"}
            del self.devices[code]
            return self._tokens(user)
        if grant == "authorization_code":
            found = self.codes.pop(form.get("code", ""), None)
            if found is None:
                return 400, {"error": "invalid_grant"}
            user, challenge, redirect = found
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != challenge:
                return 400, {"error": "invalid_grant", "error_description": "PKCE"}
            if form.get("redirect_uri") != redirect:
                return 400, {"error": "invalid_grant", "error_description": "redirect_uri"}
            return self._tokens(user)
        return 400, {"error": "unsupported_grant_type"}
