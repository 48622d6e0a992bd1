"""One way to open an IMAP session, for every client in `mirrorsync.imap`.

The store talks through imapclient, push through a socket of its own; both reach a
logged-in session by the same steps and in the same words, here: the tls setting
checked, the TLS context made, STARTTLS when asked for, a server that says
LOGINDISABLED refused, the sign-in itself (`login`, the one function every client
calls: LOGIN with a password, or AUTHENTICATE with an OAuth2 token through
`mirrorsync.oauth.sign_in`), throttling told apart from a refusal, the capabilities
read again after it, ENABLE (`enable`) and the personal namespace
(`personal_prefix_of`). A client provides the few primitives (`Session`); the
policy and the error wording stay here.

Imported by the quick check too (`is_loopback`), so it imports nothing at the top
but the wire: ssl, socket, logging and the error types come when a function needs
them.
"""

from __future__ import annotations

from mirrorsync.imap.wire import decode_mutf7

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    import ssl
    from typing import Protocol

    from mirrorsync.config import RemoteConfig
    from mirrorsync.errors import ConnectionFailed

    class Session(Protocol):
        """What `login` and `enable` need of a client's connection."""

        address: str

        def current_capabilities(self) -> frozenset[str]:
            """The server's capabilities now (asked again after STARTTLS and LOGIN)."""

        def starttls(self, context: ssl.SSLContext) -> None: ...

        def send_login(self, username: str, password: str) -> None:
            """LOGIN; `LoginRefused` for a NO, `LoginUnavailable` for a NO
            [UNAVAILABLE], `LoginLost` for a connection lost meanwhile."""

        def send_authenticate(self, mechanism: str, initial: bytes) -> None:
            """AUTHENTICATE `mechanism` with the initial response `initial` (a
            token: never in a log or trace), an empty response to any further
            challenge; errors as `send_login`'s."""

        def send_enable(self, extension: str) -> frozenset[str]:
            """ENABLE `extension`; what the server says it enabled. `Refused` for a
            NO or BAD."""


TLS_SETTINGS = ("imaps", "starttls", "none")


class Refused(Exception):
    """The server answered a command with NO or BAD (its words in the message)."""


class LoginRefused(Refused):
    """The server refused the LOGIN: wrong user name or password."""


class LoginUnavailable(Refused):
    """The server cannot log the user in right now (NO [UNAVAILABLE])."""


class LoginLost(Exception):
    """The connection broke during LOGIN (the reason in the message)."""


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (where clear text never leaves it): the only
    place `tls: none` is not worth a warning."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "127" and all(p.isdigit() for p in parts):
        return True
    return name in ("::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1")


def check_tls_setting(remote: RemoteConfig) -> ssl.SSLContext | None:
    """The TLS context for `remote` (None for tls: none, with the warning that a
    clear-text password to another machine deserves); ConfigError for an unknown
    setting, ConnectionFailed for a ca_file that cannot be used."""
    from mirrorsync.errors import ConfigError

    if remote.tls not in TLS_SETTINGS:
        raise ConfigError(
            f"unknown tls setting {remote.tls!r}", key="tls", hint="use imaps, starttls or none"
        )
    if remote.tls != "none":
        return tls_context(remote)
    if not is_loopback(remote.host):
        import logging

        logging.getLogger(__name__).warning(
            "%s: tls: none sends the password and all mail unencrypted to %s; "
            "use tls: imaps or tls: starttls",
            remote.source_key or "remote",
            remote.host,
        )
    return None


def tls_context(remote: RemoteConfig) -> ssl.SSLContext:
    """The default context, trusting `ca_file` instead of the system's CAs if set."""
    import ssl

    from mirrorsync.errors import ConnectionFailed

    try:
        return ssl.create_default_context(
            cafile=str(remote.ca_file) if remote.ca_file is not None else None
        )
    except (OSError, ValueError) as exc:  # missing file, or not PEM (ssl.SSLError)
        raise ConnectionFailed(
            f"cannot use ca_file {remote.ca_file} for {remote.host}:{remote.port} "
            f"({server_text(exc)})",
            hint="point ca_file at a readable PEM certificate",
        ) from exc


def login(
    session: Session,
    remote: RemoteConfig,
    password: str,
    context: ssl.SSLContext | None,
) -> frozenset[str]:
    """STARTTLS (for tls: starttls), then the sign-in (`oauth.sign_in`: LOGIN with
    the password, or AUTHENTICATE with a token, tried once more with a new token
    when refused), refusing a server that says LOGINDISABLED; the capabilities
    after login. The one place mirrorsync signs in: every client calls this."""
    from mirrorsync import oauth

    address = session.address
    if remote.tls == "starttls":
        if "STARTTLS" not in session.current_capabilities():
            raise ConnectionFailed(
                f"{address} does not offer STARTTLS",
                hint="use tls: imaps (usually port 993), or tls: none only on a trusted network",
            )
        assert context is not None
        session.starttls(context)
    if "LOGINDISABLED" in session.current_capabilities():
        raise ConnectionFailed(
            f"{address} refuses to log in without TLS", hint="set tls: imaps or tls: starttls"
        )
    oauth.sign_in(remote, password, lambda mech, secret: _attempt(session, remote, mech, secret))
    return session.current_capabilities()


def _attempt(session: Session, remote: RemoteConfig, mechanism: str | None, secret: str) -> None:
    """One sign-in try for `oauth.sign_in`, its failures in mirrorsync's words
    (AuthenticationFailed for a refusal, which `sign_in` may try again)."""
    from mirrorsync import oauth, throttle
    from mirrorsync.errors import AuthenticationFailed, ConnectionFailed

    address = session.address
    try:
        if mechanism is None:
            session.send_login(remote.username, secret)
        else:
            initial = oauth.initial_response(
                mechanism, remote.username, secret, remote.host, remote.port
            )
            session.send_authenticate(mechanism, initial)
    except LoginLost as exc:
        if throttle.is_throttled(server_text(exc)):  # BYE after throttling (Outlook)
            raise throttle.Throttled(address, server_text(exc)) from exc
        raise ConnectionFailed(
            f"connection to {address} lost during login ({server_text(exc)})",
            hint="check the network and the tls setting, and run again",
        ) from exc
    except Refused as exc:
        text = server_text(exc)
        if throttle.is_throttled(text):  # NO "Request is throttled" (Outlook)
            raise throttle.Throttled(address, text) from exc
        if isinstance(exc, LoginUnavailable):
            raise ConnectionFailed(
                f"{address} cannot log in {remote.username} right now ({text})",
                hint="try again later",
            ) from exc
        raise AuthenticationFailed(
            f"login refused for {remote.username} at {address}",
            hint=oauth.refusal_hint(remote),
        ) from exc


def enable(session: Session, caps: frozenset[str], wanted: str | None) -> frozenset[str]:
    """ENABLE `wanted` (QRESYNC or CONDSTORE) when the server has ENABLE, and return
    the capabilities the client may rely on: QRESYNC only counts once it is enabled,
    since it changes how the server reports expunges. CONDSTORE stays usable without
    ENABLE (a STATUS HIGHESTMODSEQ or FETCH MODSEQ turns it on), so a refusal only
    costs the HIGHESTMODSEQ in SELECT; it is logged as a warning."""
    if "ENABLE" not in caps:
        return caps - {"QRESYNC"}
    if wanted is None:
        return caps
    try:
        enabled = session.send_enable(wanted)
    except Refused as exc:
        import logging

        logging.getLogger(__name__).warning(
            "the server refused ENABLE %s: %s", wanted, server_text(exc)
        )
        enabled = frozenset()
    if "QRESYNC" not in enabled:
        caps = caps - {"QRESYNC"}
    return caps


def sync_extension(caps: frozenset[str]) -> str | None:
    """What the store ENABLEs: QRESYNC (which implies CONDSTORE), else CONDSTORE."""
    return "QRESYNC" if "QRESYNC" in caps else "CONDSTORE" if "CONDSTORE" in caps else None


def status_items(caps: frozenset[str]) -> list[str]:
    """What STATUS and LIST-STATUS ask of a folder: HIGHESTMODSEQ only with CONDSTORE."""
    items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
    if "CONDSTORE" in caps:
        items.append("HIGHESTMODSEQ")
    return items


def list_status_arguments(caps: frozenset[str], items: list[str]) -> str:
    """The arguments of the one ``LIST ... RETURN (STATUS (items))`` (RFC 5819) that
    lists every folder with its numbers: the store's and the quick check's, which
    must read the same answer. With LIST-EXTENDED the CHILDREN option too, for the
    \\HasChildren/\\HasNoChildren a plain LIST gives, so that the listing reads the
    same as one."""
    options = f"STATUS ({' '.join(items)})"
    if "LIST-EXTENDED" in caps:
        # and \Junk, \Sent, ... (RFC 6154), which a plain LIST gives too but
        # LIST-STATUS only when asked: folder patterns may name a special use
        special = "SPECIAL-USE " if "SPECIAL-USE" in caps else ""
        options = f"CHILDREN {special}{options}"
    return f'"" "*" RETURN ({options})'


def personal_prefix_of(personal: object) -> str:
    """The prefix of the first personal namespace in NAMESPACE's first list (RFC
    2342), "" when there is none: Courier answers "INBOX.", where every folder of
    the user is "INBOX.Name"."""
    if not isinstance(personal, tuple) or not personal or not personal[0]:
        return ""
    first = personal[0]
    raw = first[0] if isinstance(first, tuple) and first else None
    if isinstance(raw, bytes):
        return decode_mutf7(raw)
    return raw if isinstance(raw, str) else ""


def server_text(exc: BaseException) -> str:
    """The server's words, one line: without imapclient's "select failed: " prefix
    (our message names the operation already) and Dovecot's timings."""
    import re

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return without_timing(
        re.sub(r"^(?:[A-Za-z]+ failed|[A-Za-z ]+ command error): (?:BAD )?", "", text)
    )


def without_timing(text: str) -> str:
    """`text` without the "(0.001 + 0.000 secs)." Dovecot appends to its answers:
    noise in an error message."""
    import re

    return re.sub(r"\s*\([0-9.+ ]+secs\)\.?", "", text).strip()


def connect_error(exc: BaseException, remote: RemoteConfig) -> ConnectionFailed:
    """Words for a failure before or during login, when the cause is most often
    configuration: host, port, the tls setting or the CA."""
    import socket
    import ssl

    from mirrorsync.errors import ConnectionFailed

    address = f"{remote.host}:{remote.port}"
    if isinstance(exc, socket.gaierror):
        return ConnectionFailed(
            f"cannot resolve host {remote.host} ({exc.strerror or exc})",
            hint="check the host name and the network",
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailed(
            f"connection to {address} refused",
            hint="check host and port, and that the IMAP server is running",
        )
    if isinstance(exc, TimeoutError):
        return ConnectionFailed(
            f"no answer from {address} within {remote.timeout:g}s",
            hint="check host, port, firewall and the tls setting (an imaps port "
            "stays silent to a plain-text client)",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        ca = f"ca_file {remote.ca_file}" if remote.ca_file else "the system CA store"
        return ConnectionFailed(
            f"TLS certificate of {address} not trusted by {ca} ({reason})",
            hint="set ca_file to the certificate (or CA) the server uses, or fix the "
            "server's certificate",
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectionFailed(
            f"TLS handshake with {address} failed ({exc.reason or exc})",
            hint="check the tls setting: imaps needs an implicit-TLS port (993), "
            "starttls a plain one (143)",
        )
    return _other_connect_error(exc, remote)


def _other_connect_error(exc: BaseException, remote: RemoteConfig) -> ConnectionFailed:
    import imaplib

    from mirrorsync.errors import ConnectionFailed

    address = f"{remote.host}:{remote.port}"
    if isinstance(exc, (imaplib.IMAP4.error, Refused)):
        return ConnectionFailed(
            f"{address} did not behave as an IMAP server ({server_text(exc)})",
            hint="check host, port and the tls setting",
        )
    if isinstance(exc, OSError):
        return ConnectionFailed(
            f"cannot connect to {address} ({exc.strerror or exc})",
            hint="check host, port and the network",
        )
    return ConnectionFailed(
        f"cannot connect to {address} ({type(exc).__name__}: {server_text(exc)})",
        hint="check host, port and the tls setting",
    )
