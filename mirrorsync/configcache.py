"""The parsed-config cache: what `mirrorsync.quick` needs of the configuration,
written by a full run so that a no-op run need not import YAML to learn it, and the
whole parsed configuration (pickled), so that the next full run need not either.

Parsing the file costs more than the whole quick check (PyYAML alone takes longer
to import than a LIST-STATUS round trip), so every run that loads the configuration
successfully leaves the facts the quick check needs in
``$XDG_CACHE_HOME/mirrorsync/config-<crc32 of the path>.marshal`` (mode 0600, in a
0700 directory, replaced atomically). Only plain values are stored, with `marshal`,
which costs no import; the pickled configuration is one of them, as bytes, unpickled
only by the full path and only by the code that wrote it (the version and the
`config` module's size and mtime must match). The file is the user's own, like the
configuration file, which can name a password command anyway.

The cache is never trusted beyond what it can prove: it is used only when the
configuration file is provably the one it was made from (same device, inode, size,
mtime and ctime, taken *before* the file was read, and written only once the file's
times had settled, so that an edit in the same clock tick cannot go unseen), when
every environment variable the loading consulted (HOME, XDG_STATE_HOME, the $VARS of
paths) has the value it had, and when its format version is this one. Anything else,
and any error at all, means "no cache": the full path runs and writes a new one. A
cache that cannot be written is silently skipped, never an error.
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Iterator, Mapping

from mirrorsync import xdg
from mirrorsync.names import special_use_patterns

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    from mirrorsync.config import AccountConfig, Config

# Bump whenever what is stored, or what it means, changes.
FORMAT_VERSION = 2

# One account's facts, as stored: plain values only (marshal).
Facts = dict[str, object]


def key_for(config_file: str) -> str:
    """The cache key of a configuration file named on the command line (or the
    default one): its absolute path, made as `Path.absolute()` makes it (no `..`
    resolved), since relative paths in the file are taken from that directory."""
    return os.path.join(os.getcwd(), config_file)


def cache_file(env: Mapping[str, str], key: str) -> str:
    import binascii  # a built-in module: no cost

    crc = binascii.crc32(os.fsencode(key))
    return os.path.join(xdg.cache_dir(env), f"config-{crc:08x}.marshal")


def file_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What tells the configuration file apart from any edited version of it."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class RecordingEnv(Mapping[str, str]):
    """The environment as `config.load` sees it, noting every variable it looks up
    (and whether it was set), so that the cache can be tied to those values: a
    different HOME or $VAR in a path would load a different configuration."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.seen: dict[str, str | None] = {}
        self.enumerated = False  # the whole environment was read: cannot be recorded

    def __getitem__(self, name: str) -> str:
        try:
            value = self._env[name]
        except KeyError:
            self.seen[name] = None
            raise
        self.seen[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        self.enumerated = True
        return iter(self._env)

    def __len__(self) -> int:
        self.enumerated = True
        return len(self._env)


def _account_facts(account: AccountConfig) -> Facts:
    remote = account.remote
    # Only a password written in the file itself can be cached: a password command
    # or variable must be asked afresh every run, which is the full path's job.
    literal = remote.password is not None
    return {
        "name": account.name,
        # The quick check lists folders as the layout spells them in UTF-8; with
        # modified UTF-7 names every run takes the full path. So does one whose
        # folder patterns name a special use ("\\Junk"), which the quick check's
        # listing does not resolve, or renames folders (folders.rename). A pre_sync
        # or post_sync hook runs at every sync, which the quick check does not do
        # (mirrorsync/hooks.py).
        "quick": literal
        and account.local.folder_names == "utf-8"
        and not account.local.rename
        and not special_use_patterns(account.folders.include + account.folders.exclude)
        and not account.hooks.every_run,
        "host": remote.host,
        "port": remote.port,
        "tls": remote.tls,
        "username": remote.username,
        "password": remote.password if literal else None,
        "ca_file": None if remote.ca_file is None else str(remote.ca_file),
        "timeout": float(remote.timeout),
        "namespace_prefix": remote.namespace_prefix,
        "state_dir": str(account.state_dir),
        "path": str(account.local.path),
        "layout": account.local.layout,
        "include": tuple(account.folders.include),
        "exclude": tuple(account.folders.exclude),
        "local_only": tuple(account.local.local_only),
    }


def store(
    cfg: Config,
    key: str,
    identity: tuple[int, int, int, int, int],
    settled: bool,
    recorded: RecordingEnv,
    env: Mapping[str, str],
) -> None:
    """Write the cache for `cfg`, loaded from the file `key` whose `identity` was
    taken before it was read. Skipped when the file's times had not `settled` (an
    edit in the same clock tick could then keep the identity) or the loading read
    the whole environment. Never raises: the cache is an optimisation."""
    if not settled or recorded.enumerated:
        return
    if any(
        a.remote.oauth2 is not None and a.remote.oauth2.client_secret is not None
        for a in cfg.accounts.values()
    ):
        return  # an OAuth2 client secret is never copied anywhere: parsed every run
    import pickle

    try:
        data = marshal.dumps(
            {
                "version": FORMAT_VERSION,
                "config": key,
                "identity": identity,
                "uid": os.getuid(),
                "env": dict(recorded.seen),
                "accounts": [_account_facts(a) for a in cfg.accounts.values()],
                # the whole configuration for the full path, which then need not
                # import and run YAML either; only for the code that pickled it
                "code": code_identity(),
                "pickled": pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL),
            }
        )
        path = cache_file(env, key)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return  # already there: spare the disk a write per run
        except OSError:
            pass
        directory = os.path.dirname(path)
        xdg.private_makedirs(directory)
        if os.stat(directory).st_mode & 0o077:
            os.chmod(directory, 0o700)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            import contextlib  # only here: the quick path reads this module too

            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except Exception:
        return


def load(key: str, env: Mapping[str, str]) -> list[Facts] | None:
    """The accounts' facts (in the file's order) if the cache provably describes the
    configuration file `key` as it is now, else None."""
    data = _read(key, env)
    if data is None:
        return None
    accounts = data.get("accounts")
    if not isinstance(accounts, list) or not all(isinstance(a, dict) for a in accounts):
        return None
    return accounts


def load_config(key: str, env: Mapping[str, str]) -> Config | None:
    """The whole configuration, as `config.load` would return it for the file `key`
    now, when the cache provably describes that file and was written by this very
    code (`code_identity`); else None."""
    data = _read(key, env)
    if data is None or data.get("code") != code_identity():
        return None
    blob = data.get("pickled")
    if not isinstance(blob, bytes):
        return None
    try:
        import pickle

        from mirrorsync.config import Config

        cfg = pickle.loads(blob)
    except Exception:
        return None
    return cfg if isinstance(cfg, Config) else None


def code_identity() -> tuple[str, int, int]:
    """The version and the `config` module's file, whose classes a pickled
    configuration is made of: an upgrade or an edit of it voids the pickle."""
    from mirrorsync import __version__, config

    st = os.stat(config.__file__)
    return (__version__, st.st_size, st.st_mtime_ns)


def _read(key: str, env: Mapping[str, str]) -> dict[str, object] | None:
    """The cache's contents if they provably describe the configuration file `key`
    as it is now (see the module's docstring), else None."""
    try:
        fd = os.open(cache_file(env, key), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        # Someone else's (or a world-writable) file could point us at another server.
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = marshal.loads(f.read())
    except Exception:
        return None
    finally:
        os.close(fd)
    try:
        if not (
            isinstance(data, dict)
            and data.get("version") == FORMAT_VERSION
            and data.get("config") == key
            and data.get("uid") == os.getuid()
        ):
            return None
        if data.get("identity") != file_identity(os.stat(key)):
            return None
        recorded = data["env"]
        if any(env.get(name) != value for name, value in recorded.items()):
            return None
        return data
    except Exception:
        return None


def settled(st: os.stat_result, now: float) -> bool:
    """Whether the file's times are far enough behind `now` (taken before the stat)
    that any later write must change them: the same rule as a Maildir stamp's."""
    from mirrorsync.maildir import Stamp

    newest = max(st.st_mtime, st.st_ctime)
    fine = bool(st.st_mtime_ns % 1_000_000_000 or st.st_ctime_ns % 1_000_000_000)
    return Stamp("", newest=newest, taken=now, fine=fine).settled
