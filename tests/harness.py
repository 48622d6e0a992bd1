"""Helpers for end-to-end tests: a config for a fresh server user, the CLI run in
process (or as a real subprocess, for kill tests), and snapshots of both sides.

Snapshots name folders the local way ("A/B", INBOX as INBOX) whatever the server
calls them, so that both sides compare: the server's separator becomes "/" and its
personal namespace prefix (Courier's "INBOX.") is dropped. Locally, a folder under
"INBOX/" on such a server counts as the same folder as one without that prefix (two
spellings of one server folder, added up, so a copy kept under both shows as a
duplicate).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mirrorsync import flags as flagmod
from mirrorsync.cli import Environment, main
from mirrorsync.content import content_hash, to_lf
from tests.servers import prefix_of, separator_of

Snapshot = dict[str, Counter[tuple[str, str]]]  # folder -> multiset of (hash, flag letters)


def message(n: int | str, subject: str = "", body: str = "", extra: str = "") -> bytes:
    return (
        f"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\n"
        f"Subject: {subject or f'message {n}'}\r\nMessage-ID: <{n}@example.org>\r\n"
        f"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n{extra}\r\n"
        f"{body or f'body of {n}'}\r\nsecond line\r\n"
    ).encode()


@dataclass
class Result:
    status: int
    out: str
    err: str


class Mirror:
    """One account: a fresh server user, a local root, a config, and ways to look."""

    def __init__(self, account: Any, tmp: Path, **overrides: Any) -> None:
        self.account = account
        self.root = tmp / "Mail"
        self.state_dir = tmp / "state"
        self.config = tmp / "config.yaml"
        tmp.mkdir(parents=True, exist_ok=True)
        acct: dict[str, Any] = {
            "remote": {
                "host": account.host,
                "port": account.port,
                "tls": "none",
                "username": account.user,
                "password": account.password,
                "timeout": 20,
            },
            "local": {"path": str(self.root), "layout": overrides.pop("layout", "nested")},
            "state_dir": str(self.state_dir),
        }
        acct.update(overrides)
        self.config.write_text(yaml.safe_dump({"accounts": {"test": acct}}, allow_unicode=True))
        self._client: Any = None
        self.prefix = prefix_of(account.server)
        self.separator = separator_of(account.server)

    # -- running

    def run(self, *args: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        env = Environment(stdout=out, stderr=err, environ=dict(os.environ))
        status = main(["-c", str(self.config), *args], env)
        return Result(status, out.getvalue(), err.getvalue())

    def sync(self, *args: str) -> Result:
        r = self.run("sync", *args)
        assert r.status == 0, r
        return r

    def run_process(self, *args: str, env: dict[str, str] | None = None) -> Result:
        p = subprocess.run(
            [sys.executable, "-m", "mirrorsync", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=120,
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def run_killed(self, command: str, kill_at: int) -> bool:
        """Run `command` in a process that dies before its `kill_at`-th state commit,
        then (if it did die) run it again to completion; whether it died. When the
        run has fewer commits it simply completes, so a caller counts up until False."""
        from mirrorsync.state import KILL_ENV

        r = self.run_process(command, env={KILL_ENV: str(kill_at)})
        killed = r.status in (137, -9)
        assert killed or r.status == 0, r
        if killed:
            again = self.run_process(command)
            assert again.status == 0, again
        return killed

    # -- the server, as another client

    def server_name(self, folder: str) -> str:
        """The server's name of local folder `folder` ("A/B" -> "INBOX.A.B" on Courier)."""
        if folder.upper() == "INBOX":
            return "INBOX"
        return self.prefix + folder.replace("/", self.separator)

    def folder_of(self, server_name: str) -> str:
        """The local way of naming server folder `server_name` (see the module's text)."""
        if server_name.upper() == "INBOX":
            return "INBOX"
        if self.prefix and server_name.startswith(self.prefix):
            server_name = server_name[len(self.prefix) :]
        return server_name.replace(self.separator, "/")

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.account.client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.logout()
            self._client = None

    def server(self) -> Snapshot:
        c = self.client
        snap: Snapshot = {}
        for attrs, _delim, name in c.list_folders():
            if {b"\\Noselect", b"\\NonExistent"} & set(attrs):
                continue
            c.select_folder(name, readonly=True)
            uids = c.search("ALL")
            got: Counter[tuple[str, str]] = Counter()
            if uids:
                for data in c.fetch(uids, ["BODY.PEEK[]", "FLAGS"]).values():
                    got[
                        (
                            content_hash(to_lf(data[b"BODY[]"])),
                            flagmod.to_letters(flagmod.normalize(data[b"FLAGS"])),
                        )
                    ] += 1
            snap[self.folder_of(name)] = got
        return snap

    def server_uids(self, folder: str) -> dict[int, frozenset[str]]:
        self.client.select_folder(folder, readonly=True)
        uids = self.client.search("ALL")
        if not uids:
            return {}
        return {
            u: frozenset(f.decode() for f in d[b"FLAGS"])
            for u, d in self.client.fetch(uids, ["FLAGS"]).items()
        }

    # -- the Maildir

    def folder_dir(self, name: str) -> Path:
        """Where local folder `name` is; on a server with a namespace prefix, under
        INBOX/ if mirrorsync put it there."""
        direct = self.root / name
        if self.prefix and not direct.exists() and (self.root / "INBOX" / name).exists():
            return self.root / "INBOX" / name
        return direct

    def local(self) -> Snapshot:
        snap: Snapshot = {}
        if not self.root.exists():
            return snap
        for cur in sorted(self.root.rglob("cur")):
            folder = cur.parent
            name = folder.relative_to(self.root).as_posix()
            if self.prefix and name.startswith("INBOX/"):
                name = name[len("INBOX/") :]
            got = snap.setdefault(name, Counter())
            for sub in ("cur", "new"):
                for f in (folder / sub).iterdir():
                    letters = f.name.split(":2,", 1)[1] if ":2," in f.name else ""
                    flags = flagmod.to_letters(flagmod.from_letters(letters))
                    got[(content_hash(f.read_bytes()), flags)] += 1
        return snap

    def files(self, folder: str) -> list[Path]:
        d = self.folder_dir(folder)
        return sorted(p for sub in ("cur", "new") for p in (d / sub).iterdir())

    def assert_mirrored(self) -> Snapshot:
        server, local = self.server(), self.local()
        assert server == local, (server, local)
        return server


class QuickRuns:
    """Counts the runs the quick check finished (its outcome had a status), by a spy
    on `quick.try_quick`, which the CLI looks up at every run."""

    def __init__(self, monkeypatch: Any) -> None:
        from mirrorsync import quick

        self.finished = 0
        self.outcomes: list[Any] = []
        real = quick.try_quick

        def spy(argv: Any, env: Any) -> Any:
            outcome = real(argv, env)
            self.outcomes.append(outcome)
            self.finished += outcome.status is not None
            return outcome

        monkeypatch.setattr(quick, "try_quick", spy)
