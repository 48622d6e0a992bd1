"""Checking an account's configured directories before a run uses them.

A `local.path` under a file, a path that is a file, a parent we may not write or a
`state_dir` that cannot be made are mistakes in the configuration (or the machine),
not failures of a folder: without this check they surfaced as an OS error deep in
the lock, the state or the Maildir, reported as an internal error. Here each becomes
one line naming the key, the path and what to do, with exit status 2.
"""

from __future__ import annotations

import os

from mirrorsync.errors import LocalPathError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mirrorsync.config import AccountConfig


def check_account_paths(account: AccountConfig) -> None:
    """The state directory must be (or be made) a writable directory; the Maildir
    root a directory or makeable. An existing root is not required to be writable:
    its folders may be, and each folder that is not fails alone, named."""
    usable_dir(f"accounts.{account.name}.state_dir", os.fspath(account.state_dir), True)
    usable_dir(f"accounts.{account.name}.local.path", os.fspath(account.local.path), False)


def usable_dir(key: str, path: str, writable: bool) -> None:
    """Raise LocalPathError unless `path` is a directory (writable, if asked) or can
    be made as one."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        if writable and not os.access(path, os.W_OK | os.X_OK):
            raise LocalPathError(
                key,
                path,
                "is not writable",
                f"make it writable (chmod u+rwx) or point {key} elsewhere",
            )
        return
    if os.path.lexists(path):
        raise LocalPathError(
            key, path, "is a file, not a directory", f"move the file aside or point {key} elsewhere"
        )
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise LocalPathError(
            key,
            path,
            f"cannot be made: {parent} is a file",
            f"point {key} at a path whose parents are directories",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LocalPathError(
            key,
            path,
            f"cannot be made: no permission to write in {parent}",
            f"create it yourself with the right owner, or point {key} elsewhere",
        )
