"""`RemoteStore` against a real IMAP server, on top of imapclient.

imapclient does the connection, TLS, login, quoting and most commands; `Client`
(mirrorsync.imap.client) adds what imapclient 4.1 cannot send, and is the one place
that reaches into imaplib. What the engine needs on top, by layer (see
`mirrorsync.imap.base`):

* APPENDUID, read from the tagged APPEND response text; without UIDPLUS the new UID is
  found by UIDNEXT, Message-ID and size. COPYUID, of a MOVE (untagged) or a COPY
  (tagged, where imapclient drops it), from imaplib's table. MULTIAPPEND, many
  messages in one APPEND (`appending`).
* Exact expunge without UIDPLUS (only when no other client's \\Deleted messages would
  go), conditional STORE, MOVE or COPY + expunge (`messages`).
* The fast paths, so that a sync costs what changed: LIST-STATUS (one command for the
  numbers of every folder, `folders`), SELECT with QRESYNC (changes and VANISHED come
  with the SELECT), CONDSTORE's CHANGEDSINCE, SEARCH in pipelined windows
  (`selection`), partial body fetches. The answers are read by the lean parsers of
  `mirrorsync.imap.parse`.
* Bounded reads (`client.ReadGuard`): each command gets a deadline that grows with
  the bytes received, and a literal larger than the command can expect is refused
  unread (a read of one folder then fails that folder, and the run goes on over a
  new connection: `Selection._refused`).
* One error vocabulary: every imapclient, imaplib, socket and ssl exception leaves the
  store as a `mirrorsync.errors` type with a one-line message naming host:port, the
  operation and the folder (`StoreBase._translate`). After a `ConnectionFailed` the
  store is unusable: close it.

The connection is not thread-safe (imapclient is not); use one store per thread.
"""

from __future__ import annotations

import imaplib
import logging
import ssl
from collections.abc import Iterable
from typing import Any

import imapclient

from mirrorsync import quickimap
from mirrorsync.config import RemoteConfig
from mirrorsync.imap.appending import Appending
from mirrorsync.imap.base import TRANSPORT_ERRORS
from mirrorsync.imap.client import Client
from mirrorsync.imap.connection import (
    LoginLost,
    LoginRefused,
    LoginUnavailable,
    Refused,
    check_tls_setting,
    connect_error,
    enable,
    login,
    server_text,
    sync_extension,
)
from mirrorsync.imap.parse import (
    text_of,
)

log = logging.getLogger(__name__)


class ImapStore(Appending):
    """One logged-in IMAP connection, implementing `mirrorsync.remote.RemoteStore`.
    Create with `ImapStore.connect`."""

    @classmethod
    def connect(
        cls,
        remote: RemoteConfig,
        password: str,
        *,
        disable: Iterable[str] = (),
        learned: quickimap.Learned | None = None,
    ) -> ImapStore:
        """Connect, secure, log in and ENABLE QRESYNC (or CONDSTORE) when offered.

        `disable` names extensions not to use even when the server offers them (as
        "QRESYNC", "ESEARCH"): a way around a server's broken implementation, and how
        the tests run the CONDSTORE-only paths against a server that has QRESYNC.
        `learned` is what the quick check just learned the hard way (a timed-out
        connection, a refused login): reported again, not tried again."""
        context = check_tls_setting(remote)
        disabled = frozenset(disable)
        store = cls._open(remote, password, context, disabled, learned or quickimap.Learned())
        # A read whose answer had to be refused unread (`StoreBase._renew`) goes on
        # over a new connection; the password stays in this closure, never in a log
        # or error.
        store._reconnect = lambda: cls._open(
            remote, password, context, disabled, quickimap.Learned()
        )
        return store

    @classmethod
    def _open(
        cls,
        remote: RemoteConfig,
        password: str,
        context: ssl.SSLContext | None,
        disable: frozenset[str],
        learned: quickimap.Learned,
    ) -> ImapStore:
        """Connect, secure and log in (the checks and warnings are `connect`'s)."""
        try:
            waited = learned.timed_out.get((remote.host, remote.port))
            if waited is not None:
                raise waited  # the quick check just waited for it in vain: once is enough
            client = Client(
                remote.host,
                remote.port,
                ssl=remote.tls == "imaps",
                ssl_context=context,
                timeout=remote.timeout,
            )
        except TRANSPORT_ERRORS as exc:
            raise connect_error(exc, remote) from exc
        try:
            return cls._login(client, remote, password, context, disable, learned)
        except BaseException:
            _shutdown(client)
            raise

    @classmethod
    def _login(
        cls,
        client: Client,
        remote: RemoteConfig,
        password: str,
        context: ssl.SSLContext | None,
        disable: frozenset[str] = frozenset(),
        learned: quickimap.Learned | None = None,
    ) -> ImapStore:
        session = _ClientSession(client, remote, learned or quickimap.Learned())
        try:
            offered = login(session, remote, password, context)
            unwanted = {d.upper() for d in disable}
            if "CONDSTORE" in unwanted:
                unwanted.add("QRESYNC")  # QRESYNC is CONDSTORE and more
            usable = offered - unwanted
            caps = enable(session, usable, sync_extension(usable))
        except TRANSPORT_ERRORS as exc:
            raise connect_error(exc, remote) from exc
        return cls(client, session.address, caps, remote.timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.logout()
        except Exception:
            _shutdown(self._client)

    def __enter__(self) -> ImapStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ClientSession:
    """`connection.Session` over imapclient: the primitives of `connection.login`
    and `connection.enable`, with imapclient's errors turned into theirs."""

    def __init__(self, client: Any, remote: RemoteConfig, learned: quickimap.Learned) -> None:
        self.client = client
        self.remote = remote
        self.learned = learned
        self.address = f"{remote.host}:{remote.port}"

    def current_capabilities(self) -> frozenset[str]:
        return frozenset(text_of(c).upper() for c in self.client.capabilities())

    def starttls(self, context: ssl.SSLContext) -> None:
        self.client.starttls(context)

    def send_login(self, username: str, password: str) -> None:
        remote = self.remote
        if (remote.host, remote.port, remote.username) in self.learned.refused:
            raise LoginRefused("refused")  # the quick check was just refused: not again
        try:
            self.client.login(username, password)
        except imapclient.exceptions.LoginError as exc:
            # imapclient wraps every IMAP4.error, a dropped connection included
            cause = exc.__context__
            raise _login_failure(cause if isinstance(cause, imaplib.IMAP4.abort) else exc) from exc

    def send_authenticate(self, mechanism: str, initial: bytes) -> None:
        # imapclient's own call, as its oauth2_login makes it, but answering the
        # error challenge with an empty response (`oauth.responder`)
        from mirrorsync import oauth

        imap = self.client._imap
        # imaplib logs the continuation line, which is the token, in full, and
        # imapclient's redaction only knows the command line: silence it meanwhile
        debug, imap.debug = imap.debug, 0
        try:
            self.client._command_and_check("authenticate", mechanism, oauth.responder(initial))
        except imaplib.IMAP4.error as exc:
            raise _login_failure(exc) from exc
        finally:
            imap.debug = debug

    def send_enable(self, extension: str) -> frozenset[str]:
        try:
            return frozenset(text_of(c).upper() for c in self.client.enable(extension))
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise Refused(server_text(exc)) from exc


def _login_failure(exc: BaseException) -> Exception:
    """`connection.login`'s word for why a LOGIN or AUTHENTICATE failed."""
    text = server_text(exc)
    if isinstance(exc, imaplib.IMAP4.abort):
        return LoginLost(text)
    if "[UNAVAILABLE]" in text.upper():
        return LoginUnavailable(text)
    return LoginRefused(text)


def _shutdown(client: Any) -> None:
    try:
        client.shutdown()
    except Exception:
        log.debug("closing the connection failed", exc_info=True)
