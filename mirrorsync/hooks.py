"""Hooks: the user's commands run around an account's syncs (`hooks:` in the config).

* ``pre_sync`` runs before each sync of the account;
* ``post_sync`` after each sync, told what changed;
* ``new_mail`` after a sync that downloaded messages (``notmuch new``,
  ``notify-send``).

Each runs with ``sh -c``, by `sync` and by the daemon alike, and is told what happened
twice over: in environment variables (``MIRRORSYNC_ACCOUNT``, ``MIRRORSYNC_HOOK``,
``MIRRORSYNC_STATUS``, ``MIRRORSYNC_NEW``, and ``MIRRORSYNC_NEW_FOLDERS``, one
"COUNT<tab>FOLDER" line per folder with new mail) and as one JSON document on its
standard input. A hook is the user's code, not the sync's: one that fails or outlives
`hooks.timeout` (killed, with its whole process group) is reported in one line and
the sync goes on with the same exit status. Its output is not ours (it would break
`--json` and wake cron): it is logged under -v only. It never sees a secret: the
password variables of every account and anything named like a password, token or
secret are taken out of its environment, and the document holds none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from mirrorsync.config import AccountConfig

log = logging.getLogger(__name__)

# Variables whose names say they hold a secret, whatever their account.
_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|CREDENTIAL|API_?KEY|PRIVATE", re.IGNORECASE)


def scrubbed(environ: Mapping[str, str], accounts: Iterable[AccountConfig]) -> dict[str, str]:
    """The environment without the accounts' `password_env` variables and anything
    named like a secret."""
    named = {a.remote.password_env for a in accounts if a.remote.password_env}
    return {k: v for k, v in environ.items() if k not in named and not _SECRET_NAME.search(k)}


def new_mail(folders: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Messages downloaded per folder, from the per-folder counts of a sync report."""
    return {name: n for name, done in folders.items() if (n := done.get("downloaded", 0))}


def run_hooks(
    which: Iterable[str],
    account: AccountConfig,
    environ: Mapping[str, str],
    status: int | None = None,
    done: Mapping[str, Mapping[str, int]] | None = None,
    failed: Mapping[str, str] | None = None,
    error: str | None = None,
) -> dict[str, str | None]:
    """Run the account's hooks named in `which` (those configured; ``new_mail`` only
    when something was downloaded), in that order; per hook run, None or why it
    failed (also logged as a warning)."""
    done = done or {}
    new = new_mail(done)
    results: dict[str, str | None] = {}
    for hook in which:
        command = getattr(account.hooks, hook)
        if command is None or (hook == "new_mail" and not new):
            continue
        document = {
            "hook": hook,
            "account": account.name,
            "status": status,
            "new": new,
            "done": {name: dict(counts) for name, counts in done.items() if counts},
            "failed": dict(failed or {}),
            "error": error,  # why the whole account's sync failed
        }
        env = {
            **environ,
            "MIRRORSYNC_ACCOUNT": account.name,
            "MIRRORSYNC_HOOK": hook,
            "MIRRORSYNC_STATUS": "" if status is None else str(status),
            "MIRRORSYNC_NEW": str(sum(new.values())),
            "MIRRORSYNC_NEW_FOLDERS": "".join(f"{n}\t{name}\n" for name, n in new.items()),
        }
        why = run_one(command, env, json.dumps(document), account.hooks.timeout)
        if why is not None:
            # an error, not a warning: shown under -q too, where cron mails it
            log.error("[%s] hook %s failed: %s", account.name, hook, why)
        results[hook] = why
    return results


def run_one(command: str, env: Mapping[str, str], stdin: str, timeout: float) -> str | None:
    """Run one hook to its end or its timeout; None, or why it failed."""
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except OSError as e:
        return f"could not start /bin/sh: {e.strerror or e}"
    try:
        out, _ = proc.communicate(stdin.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return f"timed out after {timeout:g}s and was stopped ({command})"
    except BrokenPipeError:  # it did not read its input: that is its right
        out = proc.stdout.read() if proc.stdout else b""
        proc.wait()
    text = out.decode("utf-8", "replace").strip()
    if text:
        log.info("hook output: %s", text)
    if proc.returncode:
        last = text.splitlines()[-1] if text else ""
        how = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exited with status {proc.returncode}"
        )
        return f"{how} ({command})" + (f": {last}" if last else "")
    return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # not read to its end: a grandchild that left the group may hold it open
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.stdin is not None:
        proc.stdin.close()
