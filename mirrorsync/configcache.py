"""The config digest: what `mirrorsync.quick` needs to know of the configuration
file, written by the full path so that a no-op run need not validate the file.

Per account: its name, its state directory (where its no-op proof is, see `proof`),
the fingerprint of its settings (`fingerprint`, which the proof must carry too),
whether the quick check can serve it at all, and where its password comes from:
the kind of source, for `password_env` the variable's name, and for a password or
password command in the file, where its value starts (`source_at`), when the full
path found that `scalar_at` reads it back from there exactly: the quick check then
reads it from the file without PyYAML. Never a password, nor a password command
(which may hold one): no secret is written anywhere the user did not put it, and a
cache directory is often backed up or synced.

Every full run that loads the configuration leaves the digest in
``$XDG_CACHE_HOME/mirrorsync/config-<crc32 of the path>.marshal`` (mode 0600, in a
0700 directory, replaced atomically; plain values in `marshal`, which costs no
import). That is the file name the parsed-config cache of earlier versions used,
which held the password: writing a digest replaces such a file, and removes those
left for other configuration files (`_remove_old_caches`).

It is used only while the configuration file is provably the one it was made from
(same device, inode, size, mtime and ctime, taken *before* the file was read, and
written only once the file's times had settled, so that an edit in the same clock
tick cannot go unseen), and while every environment variable the loading consulted
(HOME, XDG_STATE_HOME, the $VARS of paths) has the value it had. Not a hash of the
contents: the file may hold a password, and a hash of it would let anyone holding
the cache test guesses of that password offline. Anything else, and any error at
all, means "no digest": the full path runs and writes a new one. A digest that
cannot be written is skipped, never an error.
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

# Bump whenever what is stored, or what it means, changes. (Version 2 held the
# parsed configuration, password included; the next full run replaces its files.)
FORMAT_VERSION = 3

# One account's entry, as stored: plain values only (marshal).
Entry = dict[str, object]
Identity = tuple[int, int, int, int, int]


def key_for(config_file: str) -> str:
    """The cache key of a configuration file named on the command line (or the
    default one): its absolute path, made as `Path.absolute()` makes it (no `..`
    resolved), since relative paths in the file are taken from that directory."""
    return os.path.join(os.getcwd(), config_file)


def cache_file(env: Mapping[str, str], key: str) -> str:
    import binascii  # a built-in module: no cost

    crc = binascii.crc32(os.fsencode(key))
    return os.path.join(xdg.cache_dir(env), f"config-{crc:08x}.marshal")


def file_identity(st: os.stat_result) -> Identity:
    """What tells the configuration file apart from any edited version of it."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(st: os.stat_result, now: float) -> bool:
    """Whether the file's times are far enough behind `now` (taken before the stat)
    that any later write must change them: the same rule as a Maildir stamp's."""
    from mirrorsync.maildir import Stamp

    newest = max(st.st_mtime, st.st_ctime)
    fine = bool(st.st_mtime_ns % 1_000_000_000 or st.st_ctime_ns % 1_000_000_000)
    return Stamp("", newest=newest, taken=now, fine=fine).settled


def fingerprint(account: AccountConfig) -> str:
    """A hash of every setting of `account` but its secrets' sources: a proof made
    under other settings (another server, other folders, another mode) proves
    nothing about a run under these. The password source is left out, so that the
    hash cannot be used to test guesses of a password or a command."""
    import dataclasses
    import hashlib

    remote = dataclasses.replace(
        account.remote,
        password=None,
        password_command=None,
        password_env=None,
        oauth2=account.remote.oauth2
        and dataclasses.replace(
            account.remote.oauth2, client_secret=None, client_secret_command=None
        ),
    )
    text = repr(dataclasses.replace(account, remote=remote))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RecordingEnv(Mapping[str, str]):
    """The environment as `config.load` sees it, noting every variable it looks up
    (and whether it was set), so that the digest can be tied to those values: a
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


def scalar_at(text: str, index: int) -> str | None:
    """The one-line YAML scalar that starts at `index` of `text`, read the simple
    way: plain up to a comment or the end of the line, single-quoted with '' for a
    quote, double-quoted without escapes; None for anything else. Only ever trusted
    where the full path found that it reads back exactly what the strict parse gave
    (`_secret_positions`), for a file that has not changed since."""
    end = text.find("\n", index)
    line = text[index : len(text) if end < 0 else end].removesuffix("\r")
    if line.startswith("'"):
        value: list[str] = []
        i = 1
        while i < len(line):
            if line[i] == "'":
                if line[i + 1 : i + 2] != "'":
                    return "".join(value)
                i += 1
            value.append(line[i])
            i += 1
        return None
    if line.startswith('"'):
        close = line.find('"', 1)
        if close < 0 or "\\" in line[:close]:
            return None
        return line[1:close]
    comment = line.find(" #")
    return (line if comment < 0 else line[:comment]).rstrip(" \t") or None


def _secret_positions(cfg: Config, key: str, identity: Identity) -> dict[str, int]:
    """Account name -> where its password (or password command) starts in the file,
    for the accounts whose value `scalar_at` reads back exactly as the strict parse
    gave it. The file is read again and must still be the one `cfg` was loaded
    from; it is composed (not constructed) for the positions of the values."""
    import yaml

    with open(key, "rb") as f:
        data = f.read()
        if file_identity(os.fstat(f.fileno())) != identity:
            return {}
    text = data.decode("utf-8")
    root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))

    def child(node: object, name: str) -> object:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == name:
                    return v
        return None

    found: dict[str, int] = {}
    for name, account in cfg.accounts.items():
        remote = account.remote
        field = "password" if remote.password is not None else "password_command"
        value = remote.password if remote.password is not None else remote.password_command
        node = child(child(child(child(root, "accounts"), name), "remote"), field)
        if isinstance(node, yaml.ScalarNode) and value is not None:
            index = node.start_mark.index
            if scalar_at(text, index) == value:
                found[name] = index
    return found


def entry(account: AccountConfig, source_at: int | None = None) -> Entry:
    """What the digest says of `account` (see the module's docstring); `source_at`
    is where its password or password command starts in the file, when the quick
    check may read it from there (`scalar_at`)."""
    remote = account.remote
    if remote.password is not None:
        source = "password"
    elif remote.password_env is not None:
        source = "password_env"
    else:
        source = "password_command"
    return {
        "name": account.name,
        # The quick check lists folders as the layout spells them in UTF-8; with
        # modified UTF-7 names every run takes the full path. So does one whose
        # folder patterns name a special use ("\\Junk"), which the quick check's
        # listing does not resolve, one that renames folders (folders.rename), one
        # that signs in with an OAuth2 token (mirrorsync/oauth.py), and one with a
        # pre_sync or post_sync hook, which runs at every sync (mirrorsync/hooks.py).
        "quick": account.local.folder_names == "utf-8"
        and remote.auth == "password"
        and not account.local.rename
        and not special_use_patterns(account.folders.include + account.folders.exclude)
        and not account.hooks.every_run,
        "state_dir": str(account.state_dir),
        "settings": fingerprint(account),
        "password_source": source,
        "password_env": remote.password_env,
        # where a password command's failure is worded from (`config.resolve_password`)
        "password_from": (remote.source_file, remote.source_key),
        "source_at": source_at,
    }


def store(
    cfg: Config,
    key: str,
    identity: Identity,
    settled: bool,
    recorded: RecordingEnv,
    env: Mapping[str, str],
) -> None:
    """Write the digest of `cfg`, loaded from the file `key` whose `identity` was
    taken before it was read. Skipped when the file's times had not `settled` (an
    edit in the same clock tick could then keep the identity) or the loading read
    the whole environment. Never raises: the digest is an optimisation."""
    if not settled or recorded.enumerated:
        return
    try:
        at = _secret_positions(cfg, key, identity)
        data = marshal.dumps(
            {
                "version": FORMAT_VERSION,
                "config": key,
                "identity": identity,
                "uid": os.getuid(),
                "env": dict(recorded.seen),
                "accounts": [entry(a, at.get(a.name)) for a in cfg.accounts.values()],
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
        xdg.replace_private(path, data)
        _remove_old_caches(directory)
    except Exception:
        return


def _remove_old_caches(directory: str) -> None:
    """Delete the parsed-config caches of earlier versions (format 2 and before), of
    any configuration file: they held the whole configuration, password included.
    Run whenever a digest is written, which is rare."""
    for name in os.listdir(directory):
        if not (name.startswith("config-") and name.endswith(".marshal")):
            continue
        path = os.path.join(directory, name)
        raw = xdg.read_private(path)
        try:
            old = raw is not None and marshal.loads(raw).get("version") < FORMAT_VERSION
        except Exception:
            continue  # not one of ours to judge
        if old:
            os.unlink(path)


def load(key: str, identity: Identity, env: Mapping[str, str]) -> list[Entry] | None:
    """The accounts' entries (in the file's order) if the digest describes the
    configuration file `key`, whose `file_identity` is now `identity`, else None."""
    raw = xdg.read_private(cache_file(env, key))
    if raw is None:
        return None
    try:
        data = marshal.loads(raw)
        if not (
            isinstance(data, dict)
            and data.get("version") == FORMAT_VERSION
            and data.get("config") == key
            and data.get("uid") == os.getuid()
            and data.get("identity") == identity
        ):
            return None
        recorded = data["env"]
        if any(env.get(name) != value for name, value in recorded.items()):
            return None
        accounts = data["accounts"]
        if not isinstance(accounts, list) or not all(isinstance(a, dict) for a in accounts):
            return None
        return accounts
    except Exception:
        return None
