"""Where mirrorsync's files live by default (XDG base directories), as plain strings.

Kept apart from `config` so that `mirrorsync.quick` finds the default configuration
file and the parsed-config cache with the same rules as a full run, without
importing YAML or pathlib.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    from collections.abc import Mapping


def home(env: Mapping[str, str]) -> str:
    """HOME from `env`; the passwd entry only if HOME is unset, as os.path.expanduser
    does, so cron jobs with a bare environment still find their files."""
    value = env.get("HOME", "")
    if value:
        return value
    import pwd

    return pwd.getpwuid(os.getuid()).pw_dir


def xdg_dir(env: Mapping[str, str], var: str, fallback: str) -> str:
    """The XDG spec says a relative (or empty) value must be ignored, not used relative
    to whatever the current directory happens to be."""
    value = env.get(var, "")
    if value and os.path.isabs(value):
        return value
    return os.path.join(home(env), fallback)


def default_config(env: Mapping[str, str]) -> str:
    """Where the config lives when none is named: $XDG_CONFIG_HOME/mirrorsync/config.yaml."""
    return os.path.join(xdg_dir(env, "XDG_CONFIG_HOME", ".config"), "mirrorsync", "config.yaml")


def cache_dir(env: Mapping[str, str]) -> str:
    """$XDG_CACHE_HOME/mirrorsync: files that can be deleted at any time (see
    `configcache`)."""
    return os.path.join(xdg_dir(env, "XDG_CACHE_HOME", ".cache"), "mirrorsync")


def private_makedirs(path: str | os.PathLike[str]) -> None:
    """Make `path` and each missing parent with mode 0700. `os.makedirs` gives its
    mode to the last level only, so under `umask 000` the parents it made were left
    world-writable around the user's mail, state and cache. Existing directories
    are left as they are."""
    missing = []
    current = os.fspath(path)
    while current and not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)  # a umask only ever takes bits away
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


def replace_private(path: str, data: bytes) -> None:
    """`data` in the file `path`, mode 0600, replacing it whole or not at all (a
    reader sees the old file or the new one)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        import contextlib  # only here: the quick check reads this module too

        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_private(path: str) -> bytes | None:
    """The bytes of the file `path` if it is the user's own and nobody else can
    write it (such a file could point a run at another server); else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)
