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
