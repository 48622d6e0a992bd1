"""Configuration: the YAML file, validated into frozen dataclasses.

The dataclass types are shared with the other modules. `load` validates the whole file
up front and turns every mistake into one `ConfigError` naming the file and the dotted
key path, so a typo stops the run before any mail is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mirrorsync import xdg
from mirrorsync.errors import ConfigError
from mirrorsync.model import SEP, canonical_folder

# The pattern matcher lives in the import-light `names`, shared with `mirrorsync.quick`.
from mirrorsync.names import included, matches_any
from mirrorsync.names import match_pattern as _match

AUTH_METHODS = ("password", "xoauth2", "oauthbearer")


@dataclass(frozen=True)
class OAuth2Config:
    """mirrorsync's own OAuth2 client (see mirrorsync.oauth): the provider's endpoints
    and the app's registration. The refresh token itself is not configuration: it is
    kept in `token_file` (or the system keyring), written by `mirrorsync login`."""

    token_url: str
    client_id: str
    scope: str
    client_secret: str | None = field(default=None, repr=False)
    client_secret_command: str | None = None
    # RFC 8628's device authorization endpoint, where the provider has one
    # (Microsoft); without it `mirrorsync login` uses the authorization code flow.
    device_url: str | None = None
    auth_url: str | None = None  # the authorization endpoint (code flow)
    token_store: str = "file"  # "file" | "keyring"
    # Filled in from the account: where the refresh token lives, and whose it is.
    token_file: Path = field(default=Path(), compare=False)
    account: str = field(default="", compare=False)


@dataclass(frozen=True)
class RemoteConfig:
    host: str
    username: str
    port: int  # resolved: 993 for imaps, 143 otherwise, unless given
    tls: str = "imaps"  # "imaps" | "starttls" | "none"
    password: str | None = field(default=None, repr=False)
    password_command: str | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    timeout: float = 60.0  # seconds, for connect and for every read
    max_connections: int = 4
    # The personal namespace prefix left out of folder names (Courier's "INBOX."):
    # None is "auto" (the server's NAMESPACE answer), "" is "none".
    namespace_prefix: str | None = None
    # How to sign in (AUTH_METHODS); the OAuth2 ones take an access token from
    # `oauth2_token_command` or from mirrorsync's own client (`oauth2`).
    auth: str = "password"
    oauth2_token_command: str | None = None
    oauth2: OAuth2Config | None = None
    # Where this was configured, so password errors can name the file and key path.
    source_file: str = field(default="", compare=False, repr=False)
    source_key: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class LocalConfig:
    path: Path  # expanded (~ and $VARS)
    layout: str = "nested"  # "nested" | "maildir++"
    # How folder names are spelled in directory names: "utf-8", or "modified-utf-7"
    # (IMAP's, as mbsync and offlineimap write them) for someone who still runs one
    # of those tools on the same Maildir.
    folder_names: str = "utf-8"
    # Folder patterns (as in `folders`) of folders that exist only in the Maildir:
    # never created on the server, never synced. Moving mail into one frees server space.
    local_only: tuple[str, ...] = ()
    # folders.rename: (server name, local name) pairs, both canonical; a folder not
    # named here has the same name on both sides (see Maildir.dir_name).
    rename: tuple[tuple[str, str], ...] = ()

    def is_local_only(self, name: str) -> bool:
        """Whether `name` (canonical) is a local-only folder; same patterns as
        FolderFilter, so `Archive/*` means what it means in `folders.include`."""
        return matches_any(self.local_only, name)


@dataclass(frozen=True)
class FolderFilter:
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def matches(self, name: str, special: str = "") -> bool:
        """IMAP-style patterns over canonical names ("/"-separated): `*` matches
        anything, `%` anything but "/". Included and not excluded. A pattern such as
        "\\Junk" matches the folder whose special use (`special`, from the server's
        listing; see names.SPECIAL_USES) it names."""
        return included(self.include, self.exclude, name, special)


SYNC_MODES = ("mirror", "pull", "backup")


@dataclass(frozen=True)
class SyncConfig:
    # Deleting more than this share of a folder's messages in one run needs --force ...
    max_delete_share: float = 0.5
    # ... unless fewer than this many messages would go.
    guard_min: int = 5
    # How folders sync: "mirror" (two-way), "pull" or "backup"; see the README.
    mode: str = "mirror"
    # (pattern, mode) overrides in file order; the first pattern that matches wins.
    folder_modes: tuple[tuple[str, str], ...] = ()

    def mode_for(self, name: str) -> str:
        """The mode of folder `name`: the first matching `folder_modes` pattern's, else
        `mode`. First match (not most specific) so the file reads top to bottom."""
        name = canonical_folder(name)
        for pattern, mode in self.folder_modes:
            if _match(pattern, name):
                return mode
        return self.mode


ARCHIVE_ROOT = "Archive"


@dataclass(frozen=True)
class ArchiveRule:
    """Which server messages `mirrorsync archive` moves into a local-only folder.

    A message matches when it is in a folder matching `folder` and meets every
    criterion given (older_than AND larger_than), unless it is kept for being
    flagged or unread. The values are kept as written (`older_than` is relative to
    the moment the rule runs); `mirrorsync.archive_rules` interprets them."""

    folder: str  # a folder pattern
    older_than: str | None = None  # "1y", "6m", "30d", "2w", "12h" or a date "2024-01-31"
    larger_than: int | None = None  # bytes (RFC822.SIZE)
    keep_flagged: bool = True
    keep_unread: bool = True
    to: str | None = None  # a local-only folder; None: "Archive/<source folder>"

    def destination(self, source: str) -> str:
        """The local folder the messages of server folder `source` go to."""
        return self.to if self.to is not None else f"{ARCHIVE_ROOT}{SEP}{canonical_folder(source)}"


@dataclass(frozen=True)
class DaemonConfig:
    """Settings of `mirrorsync daemon`; only the daemon reads them."""

    # Folders watched with IDLE, one connection each, when the server lacks NOTIFY
    # (with NOTIFY one connection watches every folder and this is not used).
    idle_folders: tuple[str, ...] = ("INBOX",)
    # Seconds between full checks, which catch whatever push and the watcher missed.
    full_check_interval: float = 300.0
    # Seconds of quiet after a local change before syncing, so a mail reader's burst
    # of renames becomes one sync.
    debounce: float = 0.3
    # Seconds after which IDLE is re-issued: servers may drop a client after 30
    # minutes without a command (RFC 2177), so this must stay below that.
    idle_refresh: float = 1500.0


@dataclass(frozen=True)
class AccountConfig:
    name: str
    remote: RemoteConfig
    local: LocalConfig
    state_dir: Path
    folders: FolderFilter = field(default_factory=FolderFilter)
    sync: SyncConfig = field(default_factory=SyncConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    archive: tuple[ArchiveRule, ...] = ()
    hooks: HooksConfig = field(default_factory=lambda: HooksConfig())


@dataclass(frozen=True)
class HooksConfig:
    """Shell commands run around an account's syncs (see mirrorsync/hooks.py)."""

    pre_sync: str | None = None  # before each sync
    post_sync: str | None = None  # after each sync, told what changed
    new_mail: str | None = None  # after a sync that downloaded messages
    timeout: float = 30.0  # seconds a hook may take before it is killed

    @property
    def every_run(self) -> bool:
        """Whether a sync that changes nothing runs a hook too."""
        return self.pre_sync is not None or self.post_sync is not None


@dataclass(frozen=True)
class Config:
    path: Path
    accounts: dict[str, AccountConfig]
    # `sync` of several accounts runs this many at once (each on its own connection)
    parallel_accounts: int = 4


# --------------------------------------------------------------------------------------
# Loading
#
# Validation is strict on purpose: a typo in a key of a sync tool that deletes mail
# must stop the run, not silently fall back to a default. Every error names the file
# and the dotted key path so the user can find the line without reading a traceback.

_TLS_MODES = ("imaps", "starttls", "none")
_DEFAULT_PORTS = {"imaps": 993, "starttls": 143, "none": 143}
_LAYOUTS = ("nested", "maildir++")
_FOLDER_NAMES = ("utf-8", "modified-utf-7")
_PASSWORD_SOURCES = ("password", "password_command", "password_env")
_PASSWORD_COMMAND_TIMEOUT = 30.0
_MAX_CONNECTIONS = 32

_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_HOST_WITH_PORT = re.compile(r"[^:\[\]]+:[0-9]+")

_TOP_KEYS = ("accounts", "parallel_accounts")
_ACCOUNT_KEYS = (
    "remote",
    "local",
    "state_dir",
    "folders",
    "sync",
    "daemon",
    "archive",
    "hooks",
)
_TOKEN_SOURCES = ("oauth2_token_command", "oauth2")
_HOOK_KEYS = ("pre_sync", "post_sync", "new_mail", "timeout")
_REMOTE_KEYS = (
    "host",
    "port",
    "tls",
    "username",
    *_PASSWORD_SOURCES,
    "ca_file",
    "timeout",
    "max_connections",
    "namespace_prefix",
    "auth",
    *_TOKEN_SOURCES,
    "provider",  # applied before the section is read (see mirrorsync.providers)
)
_OAUTH2_KEYS = (
    "token_url",
    "client_id",
    "client_secret",
    "client_secret_command",
    "scope",
    "device_url",
    "auth_url",
    "token_store",
)
_TOKEN_STORES = ("file", "keyring")
# The refresh token's file in the account's state directory (mode 0600).
REFRESH_TOKEN_FILE = "oauth2-refresh-token"
_LOCAL_KEYS = ("path", "layout", "local_only", "folder_names")
_FOLDERS_KEYS = ("include", "exclude", "rename")
_SYNC_KEYS = ("max_delete_share", "guard_min", "mode", "folder_modes")
_ARCHIVE_KEYS = ("folder", "older_than", "larger_than", "keep_flagged", "keep_unread", "to")
_DAEMON_KEYS = ("idle_folders", "full_check_interval", "debounce", "idle_refresh")
_IDLE_REFRESH_MAX = 29 * 60  # RFC 2177: re-issue IDLE at least every 29 minutes
_DEBOUNCE_MAX = 60.0

_SAMPLE_HINT = "'mirrorsync sample-config' prints a commented file with every option"


def _xdg_dir(env: Mapping[str, str], var: str, fallback: str) -> Path:
    """See `xdg.xdg_dir` (shared with the quick check, which must not import pathlib)."""
    return Path(xdg.xdg_dir(env, var, fallback))


_home = xdg.home


def default_path(env: Mapping[str, str]) -> Path:
    """Where the config lives when none is named: $XDG_CONFIG_HOME/mirrorsync/config.yaml."""
    return Path(xdg.default_config(env))


_loaders: tuple[Any, Any] | None = None


def _yaml_loaders() -> tuple[Any, Any]:
    """(fast, strict): loaders that reject duplicate keys (PyYAML keeps the last one
    silently, which would let a forgotten second `path:` or `password:` win without
    anyone noticing). The fast one parses with libyaml (the 10 kB sample file in 0.6
    ms, 15 times faster) when PyYAML has it, else it is the strict one: the pure-Python
    SafeLoader, whose error messages name the problem (libyaml's often do not), so a
    file the fast one refuses is parsed again by it for the words. Made on first
    use: PyYAML is imported only when a file is parsed."""
    global _loaders
    if _loaders is not None:
        return _loaders
    import yaml

    class NoDuplicates:
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                    key_node, yaml.ScalarNode
                ):
                    continue
                key = self.construct_object(key_node)  # type: ignore[attr-defined]
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)  # type: ignore[misc]

    class Strict(NoDuplicates, yaml.SafeLoader):
        pass

    fast: Any = Strict
    if getattr(yaml, "CSafeLoader", None) is not None:

        class Fast(NoDuplicates, yaml.CSafeLoader):
            pass

        fast = Fast
    _loaders = (fast, Strict)
    return _loaders


@dataclass(frozen=True)
class _Ctx:
    """What every check needs to word its error and resolve paths."""

    file: str
    base_dir: Path
    env: Mapping[str, str]

    def fail(self, key: str, message: str, hint: str = "") -> NoReturn:
        raise ConfigError(message, path=self.file, key=key, hint=hint)


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _describe(value: object, secret: bool = False) -> str:
    """Name a wrong value for a message; secrets are described by type only."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if secret:
        return f"a value of type {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _section(
    ctx: _Ctx, value: object, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, object]:
    """A mapping with only known keys: an unknown key is almost always a typo or a
    wrong indentation, and ignoring it would silently apply a default instead."""
    if not isinstance(value, dict):
        ctx.fail(key or "(top level)", f"expected a mapping, got {_describe(value)}", _SAMPLE_HINT)
    for name in value:
        if not isinstance(name, str):
            ctx.fail(_join(key, str(name)), "unknown key", f"expected one of {', '.join(allowed)}")
        if name not in allowed:
            import difflib  # only for this hint: kept out of every run's start-up

            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"did you mean {close[0]}?" if close else f"expected one of {', '.join(allowed)}"
            ctx.fail(_join(key, name), "unknown key", hint)
    for name in required:
        if name not in value:
            ctx.fail(_join(key, name), "required key is missing")
    return value


def _string(ctx: _Ctx, value: object, key: str, secret: bool = False) -> str:
    if not isinstance(value, str):
        hint = "" if value is None or isinstance(value, (dict, list)) else "quote it"
        ctx.fail(key, f"expected a string, got {_describe(value, secret)}", hint)
    if not value:
        ctx.fail(key, "must not be empty")
    return value


def _integer(ctx: _Ctx, value: object, key: str, low: int, high: int | None) -> int:
    # bool is an int subclass in Python; `port: yes` must not become port 1.
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        wanted = f"{low}-{high}" if high is not None else f">= {low}"
        ctx.fail(key, f"expected an integer {wanted}, got {_describe(value)}")
    return value


def _number(ctx: _Ctx, value: object, key: str, wanted: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        ctx.fail(key, f"expected {wanted}, got {_describe(value)}")
    return float(value)


def _choice(ctx: _Ctx, value: object, key: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        ctx.fail(key, f"expected one of {', '.join(choices)}, got {_describe(value)}")
    return value


def _patterns(ctx: _Ctx, value: object, key: str) -> tuple[str, ...]:
    """A list only: a lone string is rejected rather than wrapped, so the file has one
    spelling and `include: INBOX, Sent` is not mistaken for one folder name."""
    return _strings(ctx, value, key, "folder patterns")


def _strings(ctx: _Ctx, value: object, key: str, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        ctx.fail(
            key,
            f"expected a list of {what}, got a string ({_describe(value)})",
            f"write it as a list: [{json.dumps(value)}]",
        )
    if not isinstance(value, list):
        ctx.fail(key, f"expected a list of {what}, got {_describe(value)}")
    return tuple(_string(ctx, item, f"{key}[{i}]") for i, item in enumerate(value))


def _expand_path(ctx: _Ctx, value: object, key: str) -> Path:
    """Expand ~ and $VARS from ctx.env (not os.environ, so tests control it); an unset
    variable is an error because a literal "$FOO" directory is never what was meant.
    Relative paths are taken from the config file's directory, not the current one,
    so the same file works from cron and from a shell."""
    raw = _string(ctx, value, key)
    text = raw
    if text.startswith("~"):
        user, sep, rest = text[1:].partition("/")
        if user:
            try:
                home = pwd.getpwnam(user).pw_dir
            except KeyError:
                ctx.fail(key, f"unknown user in {raw!r}")
        else:
            home = _home(ctx.env)
        text = home + sep + rest

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in ctx.env:
            ctx.fail(
                key, f"${name} in {raw!r} is not set in the environment", "set it or edit the path"
            )
        return ctx.env[name]

    text = _ENV_REF.sub(substitute, text)
    path = Path(text)
    if not path.is_absolute():
        path = ctx.base_dir / path
    return Path(os.path.normpath(path))


def _load_remote(ctx: _Ctx, value: object, key: str) -> RemoteConfig:
    section = _section(ctx, value, key, _REMOTE_KEYS, required=("host", "username"))
    k = functools.partial(_join, key)

    host = _string(ctx, section["host"], k("host"))
    if any(c.isspace() for c in host) or "/" in host:
        ctx.fail(k("host"), f"expected a host name or address, got {host!r}")
    if _HOST_WITH_PORT.fullmatch(host):
        ctx.fail(
            k("host"), f"expected a host name without a port, got {host!r}", "set port: separately"
        )

    tls = _choice(ctx, section.get("tls", "imaps"), k("tls"), _TLS_MODES)
    port = (
        _integer(ctx, section["port"], k("port"), 1, 65535)
        if "port" in section
        else _DEFAULT_PORTS[tls]
    )
    username = _string(ctx, section["username"], k("username"))
    auth = _choice(ctx, section.get("auth", "password"), k("auth"), AUTH_METHODS)
    sign_in = (
        _password_source(ctx, section, key)
        if auth == "password"
        else _token_source(ctx, section, key, auth)
    )
    return RemoteConfig(
        host=host,
        username=username,
        port=port,
        tls=tls,
        auth=auth,
        **sign_in,
        **_connection_settings(ctx, section, key, tls),
        source_file=ctx.file,
        source_key=key,
    )


def _password_source(ctx: _Ctx, section: dict[str, object], key: str) -> dict[str, Any]:
    """Exactly one of password, password_command, password_env."""
    k = functools.partial(_join, key)
    given = [name for name in _PASSWORD_SOURCES if name in section]
    if not given:
        ctx.fail(
            k("password"),
            "no password source",
            "set exactly one of password, password_command, password_env",
        )
    if len(given) > 1:
        both = f"{given[0]} and {given[1]} are both set"
        every = "password, password_command and password_env are all set"
        ctx.fail(
            key,
            both if len(given) == 2 else every,
            "set exactly one of password, password_command, password_env",
        )
    password = password_command = password_env = None
    if "password" in section:
        password = _string(ctx, section["password"], k("password"), secret=True)
    if "password_command" in section:
        password_command = _string(ctx, section["password_command"], k("password_command"))
    if "password_env" in section:
        password_env = _string(ctx, section["password_env"], k("password_env"))
        if not _ENV_NAME.fullmatch(password_env):
            ctx.fail(
                k("password_env"),
                f"expected an environment variable name, got {password_env!r}",
                "give the name only, without $",
            )
    for name in _TOKEN_SOURCES:
        if name in section:
            ctx.fail(k(name), "is only used with auth: xoauth2 or auth: oauthbearer")
    return {
        "password": password,
        "password_command": password_command,
        "password_env": password_env,
    }


def _token_source(ctx: _Ctx, section: dict[str, object], key: str, auth: str) -> dict[str, Any]:
    """A remote that signs in with an OAuth2 access token: from exactly one of a
    token command or mirrorsync's own client, and no password."""
    k = functools.partial(_join, key)
    for name in _PASSWORD_SOURCES:
        if name in section:
            ctx.fail(
                k(name),
                f"auth: {auth} signs in with a token, not a password",
                "remove it, or set auth: password",
            )
    given = [name for name in _TOKEN_SOURCES if name in section]
    if len(given) != 1:
        ctx.fail(
            key if given else k("oauth2"),
            "oauth2_token_command and oauth2 are both set" if given else "no token source",
            "set exactly one of oauth2_token_command, oauth2 (see mirrorsync login)",
        )
    command = oauth2 = None
    if "oauth2_token_command" in section:
        command = _string(ctx, section["oauth2_token_command"], k("oauth2_token_command"))
    else:
        oauth2 = _load_oauth2(ctx, section["oauth2"], k("oauth2"))
    return {"oauth2_token_command": command, "oauth2": oauth2}


def _url(ctx: _Ctx, value: object, key: str) -> str:
    """An endpoint: https, or http only on loopback (a local test provider), since
    tokens and client secrets travel in these requests."""
    import urllib.parse  # only for a configuration that names endpoints

    url = _string(ctx, value, key)
    parsed = urllib.parse.urlsplit(url)
    loopback = parsed.hostname in ("127.0.0.1", "::1", "localhost")
    if not parsed.hostname or not (
        parsed.scheme == "https" or (parsed.scheme == "http" and loopback)
    ):
        ctx.fail(key, f"expected an https:// URL, got {url!r}")
    return url


def _load_oauth2(ctx: _Ctx, value: object, key: str) -> OAuth2Config:
    section = _section(ctx, value, key, _OAUTH2_KEYS, required=("token_url", "client_id", "scope"))
    k = functools.partial(_join, key)
    if "client_secret" in section and "client_secret_command" in section:
        ctx.fail(
            key,
            "client_secret and client_secret_command are both set",
            "set at most one of them (a public client has neither)",
        )
    device_url, auth_url = (
        _url(ctx, section[name], k(name)) if name in section else None
        for name in ("device_url", "auth_url")
    )
    return OAuth2Config(
        token_url=_url(ctx, section["token_url"], k("token_url")),
        client_id=_string(ctx, section["client_id"], k("client_id")),
        scope=_string(ctx, section["scope"], k("scope")),
        client_secret=(
            _string(ctx, section["client_secret"], k("client_secret"), secret=True)
            if "client_secret" in section
            else None
        ),
        client_secret_command=(
            _string(ctx, section["client_secret_command"], k("client_secret_command"))
            if "client_secret_command" in section
            else None
        ),
        token_store=_choice(
            ctx, section.get("token_store", "file"), k("token_store"), _TOKEN_STORES
        ),
        device_url=device_url,
        auth_url=auth_url,
    )


def _connection_settings(
    ctx: _Ctx, section: dict[str, object], key: str, tls: str
) -> dict[str, Any]:
    """The settings every remote has, whatever its way of signing in."""
    k = functools.partial(_join, key)
    ca_file = None
    if "ca_file" in section:
        if tls == "none":
            ctx.fail(k("ca_file"), "has no effect with tls: none", "use tls: imaps or starttls")
        ca_file = _expand_path(ctx, section["ca_file"], k("ca_file"))

    timeout = 60.0
    if "timeout" in section:
        timeout = _number(ctx, section["timeout"], k("timeout"), "a number of seconds > 0")
        if timeout <= 0:
            ctx.fail(k("timeout"), f"expected a number of seconds > 0, got {section['timeout']!r}")
    max_connections = 4
    if "max_connections" in section:
        max_connections = _integer(
            ctx, section["max_connections"], k("max_connections"), 1, _MAX_CONNECTIONS
        )

    namespace_prefix: str | None = None
    if "namespace_prefix" in section:
        given_prefix = _string(ctx, section["namespace_prefix"], k("namespace_prefix"))
        if given_prefix != "auto":
            namespace_prefix = "" if given_prefix == "none" else given_prefix
    return {
        "ca_file": ca_file,
        "timeout": timeout,
        "max_connections": max_connections,
        "namespace_prefix": namespace_prefix,
    }


def _load_local(ctx: _Ctx, value: object, key: str) -> LocalConfig:
    section = _section(ctx, value, key, _LOCAL_KEYS, required=("path",))
    path = _expand_path(ctx, section["path"], _join(key, "path"))
    layout = _choice(ctx, section.get("layout", "nested"), _join(key, "layout"), _LAYOUTS)
    folder_names = _choice(
        ctx, section.get("folder_names", "utf-8"), _join(key, "folder_names"), _FOLDER_NAMES
    )
    local_only: tuple[str, ...] = ()
    if "local_only" in section:
        k = _join(key, "local_only")
        local_only = _patterns(ctx, section["local_only"], k)
        for i, pattern in enumerate(local_only):
            # INBOX is where the server delivers: keeping it local-only would stop all
            # new mail, which no one means by "keep these folders off the server".
            if _match(pattern, "INBOX"):
                ctx.fail(
                    f"{k}[{i}]",
                    f"{pattern!r} matches INBOX, which cannot be local-only",
                    'use a narrower pattern such as "Archive/*"',
                )
    return LocalConfig(path=path, layout=layout, local_only=local_only, folder_names=folder_names)


def _folder_patterns(ctx: _Ctx, value: object, key: str) -> tuple[str, ...]:
    """`_patterns`, where a pattern may also name a special use ("\\Junk")."""
    from mirrorsync.names import SPECIAL_USES

    patterns = _patterns(ctx, value, key)
    for i, pattern in enumerate(patterns):
        if pattern.startswith("\\") and pattern.lower() not in {u.lower() for u in SPECIAL_USES}:
            ctx.fail(
                f"{key}[{i}]",
                f"{pattern!r} is not a special-use attribute",
                f'use one of {", ".join(SPECIAL_USES)} (in YAML double quotes: "\\\\Junk")',
            )
    return patterns


def _load_folders(ctx: _Ctx, value: object, key: str) -> FolderFilter:
    section = _section(ctx, value, key, _FOLDERS_KEYS)
    include = FolderFilter.include
    if "include" in section:
        include = _folder_patterns(ctx, section["include"], _join(key, "include"))
        if not include:
            ctx.fail(
                _join(key, "include"),
                "an empty list selects no folders",
                'remove the key to sync every folder (["*"])',
            )
    exclude = FolderFilter.exclude
    if "exclude" in section:
        exclude = _folder_patterns(ctx, section["exclude"], _join(key, "exclude"))
    return FolderFilter(include=include, exclude=exclude)


def _load_rename(ctx: _Ctx, value: object, key: str) -> tuple[tuple[str, str], ...]:
    """`folders.rename`, server name -> local name, checked both ways: two server
    folders cannot share one local name (their mail would be mixed), and INBOX keeps
    its name on both sides."""
    if not isinstance(value, dict):
        ctx.fail(
            key,
            f"expected a mapping of server folder names to local ones, got {_describe(value)}",
            'e.g. rename: {"[Gmail]/Sent Mail": Sent}',
        )
    pairs: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for server, local in value.items():
        k = _join(key, str(server))
        server_name = _folder_name(ctx, server, k)
        local_name = _folder_name(ctx, local, k)
        if "INBOX" in (server_name, local_name):
            ctx.fail(k, "INBOX cannot be renamed, nor another folder renamed to INBOX")
        if local_name in taken:
            ctx.fail(
                k,
                f"{taken[local_name]!r} and {server_name!r} are both renamed to {local_name!r}",
                "give each server folder its own local name",
            )
        taken[local_name] = server_name
        if server_name != local_name:
            pairs.append((server_name, local_name))
    return tuple(pairs)


def _load_sync(ctx: _Ctx, value: object, key: str) -> SyncConfig:
    section = _section(ctx, value, key, _SYNC_KEYS)
    share = SyncConfig.max_delete_share
    if "max_delete_share" in section:
        k = _join(key, "max_delete_share")
        wanted = "a number greater than 0 and at most 1"
        share = _number(ctx, section["max_delete_share"], k, wanted)
        if not 0 < share <= 1:
            ctx.fail(k, f"expected {wanted}, got {section['max_delete_share']!r}")
    guard_min = SyncConfig.guard_min
    if "guard_min" in section:
        guard_min = _integer(ctx, section["guard_min"], _join(key, "guard_min"), 0, None)
    mode = _choice(ctx, section.get("mode", SyncConfig.mode), _join(key, "mode"), SYNC_MODES)
    folder_modes: list[tuple[str, str]] = []
    if "folder_modes" in section:
        k = _join(key, "folder_modes")
        raw = section["folder_modes"]
        if not isinstance(raw, dict):
            ctx.fail(
                k,
                f"expected a mapping of folder patterns to modes, got {_describe(raw)}",
                'e.g. folder_modes: {"Lists/*": pull}',
            )
        for pattern, value in raw.items():
            if not isinstance(pattern, str) or not pattern:
                ctx.fail(_join(k, str(pattern)), "expected a folder pattern (a string)")
            folder_modes.append((pattern, _choice(ctx, value, _join(k, pattern), SYNC_MODES)))
    return SyncConfig(
        max_delete_share=share, guard_min=guard_min, mode=mode, folder_modes=tuple(folder_modes)
    )


def _bool(ctx: _Ctx, value: object, key: str) -> bool:
    if not isinstance(value, bool):
        ctx.fail(key, f"expected true or false, got {_describe(value)}")
    return value


def _folder_name(ctx: _Ctx, value: object, key: str) -> str:
    """One folder (not a pattern), in canonical form."""
    name = _string(ctx, value, key)
    if "*" in name or "%" in name:
        ctx.fail(key, f"expected a folder name, not a pattern: {name!r}")
    name = canonical_folder(name.strip(SEP))
    if not name or any(not part for part in name.split(SEP)):
        ctx.fail(key, f"expected a folder name, got {value!r}")
    return name


def _load_archive(
    ctx: _Ctx, value: object, key: str, local: LocalConfig, local_key: str
) -> tuple[ArchiveRule, ...]:
    """`archive:` rules. Ages and sizes are checked here with the same parser that
    applies them, so a rule that loads is a rule that runs."""
    from mirrorsync import archive_rules

    if not isinstance(value, list):
        ctx.fail(key, f"expected a list of rules, got {_describe(value)}", _SAMPLE_HINT)
    rules = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        section = _section(ctx, item, k, _ARCHIVE_KEYS, required=("folder",))
        folder = _string(ctx, section["folder"], _join(k, "folder"))
        older_than = None
        if "older_than" in section:
            raw = section["older_than"]
            # YAML reads an unquoted 2024-01-31 as a date: take it as the date it is.
            text = raw.isoformat() if isinstance(raw, datetime.date) else raw
            older_than = _string(ctx, text, _join(k, "older_than"))
            try:
                archive_rules.parse_age(older_than)
            except ValueError as e:
                ctx.fail(_join(k, "older_than"), str(e))
        larger_than = None
        if "larger_than" in section:
            raw = section["larger_than"]
            try:
                if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                    raise ValueError(f"expected a size such as 5M, got {_describe(raw)}")
                larger_than = archive_rules.parse_size(raw)
            except ValueError as e:
                ctx.fail(_join(k, "larger_than"), str(e))
        if older_than is None and larger_than is None:
            ctx.fail(
                k,
                "a rule needs older_than or larger_than (or both)",
                "without either it would archive the whole folder",
            )
        keep_flagged = _bool(ctx, section.get("keep_flagged", True), _join(k, "keep_flagged"))
        keep_unread = _bool(ctx, section.get("keep_unread", True), _join(k, "keep_unread"))
        to = _folder_name(ctx, section["to"], _join(k, "to")) if "to" in section else None
        rule = ArchiveRule(folder, older_than, larger_than, keep_flagged, keep_unread, to)
        # The default destination depends on the source folder; the pattern itself
        # stands in for every folder it matches (exact for the usual "Archive/*").
        dest = rule.destination(folder)
        if not local.is_local_only(dest):
            ctx.fail(
                _join(k, "to") if to is not None else k,
                f"archives into {dest!r}, which is not a local-only folder",
                f"add a pattern for it to {_join(local_key, 'local_only')} "
                f'(e.g. ["{ARCHIVE_ROOT}", "{ARCHIVE_ROOT}/*"])',
            )
        if "*" not in folder and "%" not in folder and local.is_local_only(folder):
            ctx.fail(_join(k, "folder"), f"{folder!r} is local-only: it has no server copies")
        rules.append(rule)
    return tuple(rules)


def _seconds(
    ctx: _Ctx,
    section: dict[str, object],
    key: str,
    name: str,
    default: float,
    low: float,
    high: float | None,
    low_open: bool,
) -> float:
    """A number of seconds in a range; `low_open` excludes `low` itself."""
    if name not in section:
        return default
    k = _join(key, name)
    wanted = f"a number of seconds {'>' if low_open else '>='} {low:g}" + (
        f" and <= {high:g}" if high is not None else ""
    )
    value = _number(ctx, section[name], k, wanted)
    if (value <= low if low_open else value < low) or (high is not None and value > high):
        ctx.fail(k, f"expected {wanted}, got {section[name]!r}")
    return value


def _load_daemon(ctx: _Ctx, value: object, key: str) -> DaemonConfig:
    section = _section(ctx, value, key, _DAEMON_KEYS)
    idle_folders = DaemonConfig.idle_folders
    if "idle_folders" in section:
        k = _join(key, "idle_folders")
        names = []
        for i, name in enumerate(_strings(ctx, section["idle_folders"], k, "folder names")):
            if "*" in name or "%" in name:
                ctx.fail(f"{k}[{i}]", f"expected a folder name, not a pattern: {name!r}")
            names.append(canonical_folder(name.strip(SEP)))
        idle_folders = tuple(dict.fromkeys(names))
    interval = _seconds(
        ctx, section, key, "full_check_interval", DaemonConfig.full_check_interval, 0, None, True
    )
    debounce = _seconds(
        ctx, section, key, "debounce", DaemonConfig.debounce, 0, _DEBOUNCE_MAX, False
    )
    refresh = _seconds(
        ctx, section, key, "idle_refresh", DaemonConfig.idle_refresh, 0, _IDLE_REFRESH_MAX, True
    )
    return DaemonConfig(
        idle_folders=idle_folders,
        full_check_interval=interval,
        debounce=debounce,
        idle_refresh=refresh,
    )


def _load_hooks(ctx: _Ctx, value: object, key: str) -> HooksConfig:
    section = _section(ctx, value, key, _HOOK_KEYS)
    commands = {
        name: _string(ctx, section[name], _join(key, name))
        for name in ("pre_sync", "post_sync", "new_mail")
        if name in section
    }
    timeout = _seconds(ctx, section, key, "timeout", HooksConfig.timeout, 0, 3600, True)
    return HooksConfig(timeout=timeout, **commands)


def _load_account(ctx: _Ctx, name: object, value: object) -> AccountConfig:
    if not isinstance(name, str):
        ctx.fail(
            f"accounts.{name}",
            f"an account name must be a string, got {_describe(name)}",
            f"quote it: '{name}'",
        )
    key = f"accounts.{name}"
    if not _ACCOUNT_NAME.fullmatch(name) or name in (".", ".."):
        # The name becomes a directory name (state_dir) and a command-line argument.
        ctx.fail(key, "an account name may only use letters, digits, '_', '.' and '-'")
    section = _section(ctx, value, key, _ACCOUNT_KEYS, required=("remote", "local"))
    raw_remote, raw_folders = section["remote"], section.get("folders")
    if isinstance(raw_remote, dict) and "provider" in raw_remote:
        from mirrorsync import providers

        _choice(ctx, raw_remote["provider"], f"{key}.remote.provider", tuple(providers.PRESETS))
        raw_remote, raw_folders = providers.apply(raw_remote, raw_folders)
    remote = _load_remote(ctx, raw_remote, f"{key}.remote")
    local = _load_local(ctx, section["local"], f"{key}.local")
    if isinstance(raw_folders, dict) and "rename" in raw_folders:
        rename = _load_rename(ctx, raw_folders["rename"], f"{key}.folders.rename")
        local = dataclasses.replace(local, rename=rename)
    if "state_dir" in section:
        state_dir = _expand_path(ctx, section["state_dir"], f"{key}.state_dir")
    else:
        state_dir = _xdg_dir(ctx.env, "XDG_STATE_HOME", ".local/state") / "mirrorsync" / name
    if remote.oauth2 is not None:
        oauth2 = dataclasses.replace(
            remote.oauth2, token_file=state_dir / REFRESH_TOKEN_FILE, account=name
        )
        remote = dataclasses.replace(remote, oauth2=oauth2)
    folders = (
        _load_folders(ctx, raw_folders, f"{key}.folders")
        if raw_folders is not None
        else FolderFilter()
    )
    sync = _load_sync(ctx, section["sync"], f"{key}.sync") if "sync" in section else SyncConfig()
    daemon = (
        _load_daemon(ctx, section["daemon"], f"{key}.daemon")
        if "daemon" in section
        else DaemonConfig()
    )
    archive = (
        _load_archive(ctx, section["archive"], f"{key}.archive", local, f"{key}.local")
        if "archive" in section
        else ()
    )
    hooks = _load_hooks(ctx, section["hooks"], f"{key}.hooks") if "hooks" in section else None
    return AccountConfig(
        name=name,
        remote=remote,
        local=local,
        state_dir=state_dir,
        folders=folders,
        sync=sync,
        daemon=daemon,
        archive=archive,
        hooks=hooks or HooksConfig(),
    )


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _check_separate(ctx: _Ctx, accounts: dict[str, AccountConfig]) -> None:
    """Two accounts sharing a Maildir would sync each other's mail to both servers, and
    sharing state would let one account's run apply the other's deletions. A state
    directory inside a Maildir tree would itself be picked up as mail folders."""
    seen: list[tuple[str, AccountConfig]] = []
    for name, account in accounts.items():
        for other_name, other in seen:
            where = f"accounts.{other_name}"
            if _overlaps(account.local.path, other.local.path):
                relation = (
                    "is the same as" if account.local.path == other.local.path else "overlaps"
                )
                ctx.fail(
                    f"accounts.{name}.local.path",
                    f"{relation} {where}.local.path ({other.local.path})",
                    "give each account its own Maildir directory",
                )
            if account.state_dir == other.state_dir:
                ctx.fail(
                    f"accounts.{name}.state_dir",
                    f"is the same as {where}.state_dir ({other.state_dir})",
                    "give each account its own state_dir",
                )
        seen.append((name, account))
    for name, account in accounts.items():
        for other_name, other in accounts.items():
            if _overlaps(account.state_dir, other.local.path):
                ctx.fail(
                    f"accounts.{name}.state_dir",
                    f"overlaps accounts.{other_name}.local.path ({other.local.path})",
                    "keep the state directory outside every Maildir",
                )


def _read(path: Path) -> str:
    file = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", path=file, hint=f"create it; {_SAMPLE_HINT}") from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a configuration file", path=file) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", path=file) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError("not valid UTF-8", path=file, key=f"line {line}") from None


def _parse(text: str, file: str) -> object:
    import yaml

    fast, strict = _yaml_loaders()
    try:
        return yaml.load(text, Loader=fast)
    except yaml.YAMLError:
        pass  # worded below
    try:
        return yaml.load(text, Loader=strict)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        message = f"invalid YAML: {e.problem or e.context}"
        if e.context and e.problem and e.context_mark and mark and e.context_mark.line != mark.line:
            message += f" ({e.context} at line {e.context_mark.line + 1})"
        hint = "indent with spaces; YAML does not allow tabs" if "'\\t'" in str(e.problem) else ""
        raise ConfigError(message, path=file, key=where, hint=hint) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(
            f"invalid YAML: character {e.character!r} is not allowed", path=file, key=f"line {line}"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", path=file) from None


def load(path: Path, env: Mapping[str, str], parsed: tuple[str, object] | None = None) -> Config:
    """Read and validate the whole file up front, so a mistake in any account is
    reported before anything touches mail. `parsed` is the file's text and what a
    plain YAML load made of it, when the quick check read it already: only a text
    this loader accepted before (see `configcache`), so the same document."""
    path = Path(path)
    file = str(path)
    if parsed is None:
        text = _read(path)
        data = _parse(text, file)
    else:
        _text, data = parsed
    ctx = _Ctx(file=file, base_dir=path.absolute().parent, env=env)
    if data is None:
        ctx.fail("", "the file is empty", f"add an accounts: section; {_SAMPLE_HINT}")
    top = _section(ctx, data, "", _TOP_KEYS, required=("accounts",))
    raw_accounts = top["accounts"]
    if raw_accounts is None or raw_accounts == {}:
        ctx.fail("accounts", "no accounts are defined", f"add one; {_SAMPLE_HINT}")
    if not isinstance(raw_accounts, dict):
        ctx.fail("accounts", f"expected a mapping of account names, got {_describe(raw_accounts)}")
    accounts = {}
    for name, value in raw_accounts.items():
        account = _load_account(ctx, name, value)
        accounts[account.name] = account
    _check_separate(ctx, accounts)
    parallel = Config.parallel_accounts
    if "parallel_accounts" in top:
        parallel = _integer(ctx, top["parallel_accounts"], "parallel_accounts", 1, 64)
    return Config(path=path, accounts=accounts, parallel_accounts=parallel)


def check_files(cfg: Config) -> None:
    """The files the configuration names must be there, checked on every run (the
    parsed-config cache cannot vouch for another file): a missing `ca_file` is a
    mistake in the configuration, said before anything connects, not a failed login."""
    for name, account in cfg.accounts.items():
        ca_file = account.remote.ca_file
        if ca_file is not None and not os.access(ca_file, os.R_OK):
            problem = "no such file" if not os.path.exists(ca_file) else "not readable"
            raise ConfigError(
                f"{problem}: {ca_file}",
                path=str(cfg.path),
                key=f"accounts.{name}.remote.ca_file",
                hint="point it at the PEM certificate (or CA) the server uses",
            )


# --------------------------------------------------------------------------------------
# Passwords


def resolve_password(
    remote: RemoteConfig, env: Mapping[str, str], *, timeout: float = _PASSWORD_COMMAND_TIMEOUT
) -> str:
    """Fetch the password only when connecting, so `load` never runs commands (and a
    locked password store does not break `--dry-run` on another account)."""
    base = remote.source_key

    def fail(key: str, message: str, hint: str = "") -> NoReturn:
        raise ConfigError(message, path=remote.source_file, key=_join(base, key), hint=hint)

    if remote.auth != "password":
        from mirrorsync import oauth

        # The token of the moment, which also proves the token source works before
        # anything starts; each login asks mirrorsync.oauth again (it may have expired).
        return oauth.access_token(remote, env)
    if remote.password is not None:
        return remote.password
    if remote.password_env is not None:
        name = remote.password_env
        value = env.get(name)
        if value is None:
            fail("password_env", f"environment variable {name} is not set", f"export {name}")
        if not value:
            fail("password_env", f"environment variable {name} is empty")
        return value
    if remote.password_command is not None:
        return run_secret_command(remote.password_command, env, timeout, fail)
    fail("password", "no password source", "set one of password, password_command, password_env")


def run_secret_command(
    command: str,
    env: Mapping[str, str],
    timeout: float,
    fail: Callable[[str, str, str], NoReturn],
    key: str = "password_command",
    what: str = "password",
) -> str:
    """Run through the shell (users write pipelines). stdin and stderr are inherited so
    a prompting tool still works and its complaints reach the user; stdout is captured
    and never quoted in errors, nor is the command itself, since either may hold the
    secret."""
    import signal
    import subprocess

    try:
        # A process group of its own, so that a hung command is ended whole: killing
        # only the shell would leave its children (a `sleep`, a stuck agent) orphaned.
        proc = subprocess.Popen(
            command, shell=True, stdout=subprocess.PIPE, env=dict(env), start_new_session=True
        )
    except OSError as e:
        fail(key, f"could not start the command: {e.strerror or e}", "")
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # End the whole group and stop reading: waiting for end-of-file could hang
        # forever when a grandchild still holds the pipe open.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
        fail(key, f"the command did not finish within {timeout:g} s", "check it runs without input")
    if proc.returncode < 0:
        try:
            signame = signal.Signals(-proc.returncode).name
        except ValueError:
            signame = f"signal {-proc.returncode}"
        fail(key, f"the command was killed by {signame}", "")
    if proc.returncode != 0:
        hint = {127: "command not found", 126: "command not executable"}.get(proc.returncode, "")
        hint = (hint + "; " if hint else "") + "run it in a shell to see why"
        fail(key, f"the command exited with status {proc.returncode}", hint)
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        fail(key, "the command printed something that is not UTF-8", "")
    first = text.split("\n", 1)[0].removesuffix("\r")
    if not first:
        fail(key, f"the command exited with status 0 but printed no {what}", "")
    return first
