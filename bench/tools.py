"""The tools under test: how to configure, run and measure each one.

Every tool gets its own server user, its own empty local Maildir (nested layout:
INBOX is MAIL/INBOX, "Lists/dev" is MAIL/Lists/dev) and a durable configuration (fsync
on). `timed_run` measures one run: its wall time, and the peak RSS and CPU time of
exactly the tool's process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.mail import without_header

REPO = Path(__file__).resolve().parent.parent
TOOL_NAMES = ("mirrorsync", "mbsync", "offlineimap")
# Debian package providing each peer's command.
PACKAGES = {"mbsync": "isync", "offlineimap": "offlineimap3", "time": "time"}
BENCH_VENV = Path("/var/tmp/mirrorsync-bench-venv")


@dataclass
class Server:
    host: str
    port: int


@dataclass
class RunResult:
    seconds: float
    max_rss_mb: float
    cpu_seconds: float
    returncode: int
    timed_out: bool
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class Tool:
    """One tool's user, directories and configuration. Subclasses fill in the rest."""

    name = ""

    def __init__(self, home: Path, server: Server, password: str = "secret") -> None:
        self.home = home
        self.server = server
        self.user = f"bench-{self.name}"
        self.password = password
        self.maildir = home / "Mail"
        self.config = home / "config"
        self.runs = 0

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.maildir.mkdir(exist_ok=True)
        self.write_config()

    def write_config(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def comparable(self, data: bytes) -> bytes:
        """The message as compared with the original: what the tool adds on purpose
        is taken out (see Mbsync)."""
        return data

    @property
    def cwd(self) -> Path:
        return self.home

    def run(self, label: str, timeout: float) -> RunResult:
        self.runs += 1
        log = self.home / "logs" / f"{self.runs:02d}-{label}.log"
        log.parent.mkdir(exist_ok=True)
        return timed_run(self.command(), log, self.env(), cwd=self.cwd, timeout=timeout)


class Mirrorsync(Tool):
    name = "mirrorsync"
    src = REPO  # the directory holding the `mirrorsync` package to run
    venv_dir = BENCH_VENV  # where `src` is installed (see installed_venv)

    def write_config(self) -> None:
        acct = {
            "remote": {
                "host": self.server.host,
                "port": self.server.port,
                "tls": "none",
                "username": self.user,
                "password": self.password,
            },
            "local": {"path": str(self.maildir), "layout": "nested"},
            "state_dir": str(self.home / "state"),
        }
        self.config = self.home / "config.yaml"
        self.config.write_text(yaml.safe_dump({"accounts": {"bench": acct}}, sort_keys=False))

    verify = False  # `sync --verify` (the "verify" phase) instead of a plain sync

    def command(self) -> list[str]:
        venv = installed_venv(self.src, self.venv_dir)
        extra = ["--verify"] if self.verify else []
        if venv is not None:
            return [str(venv / "bin" / "mirrorsync"), "-c", str(self.config), "sync", *extra]
        return [sys.executable, "-m", "mirrorsync", "-c", str(self.config), "sync", *extra]

    def env(self) -> dict[str, str]:
        if installed_venv(self.src, self.venv_dir) is not None:
            return dict(os.environ)
        # `src`'s mirrorsync, whatever is installed (with -m, the cwd comes first too).
        path = os.environ.get("PYTHONPATH", "")
        src = str(self.src)
        return {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{path}" if path else src}

    @property
    def cwd(self) -> Path:
        return self.src

    def module_file(self) -> str:
        """Which mirrorsync the runs will import (a check that `src` is really used)."""
        venv = installed_venv(self.src, self.venv_dir)
        python = str(venv / "bin" / "python") if venv else sys.executable
        p = subprocess.run(
            [python, "-c", "import mirrorsync; print(mirrorsync.__file__)"],
            # From the source tree, "import" would find the tree, not the install.
            cwd="/" if venv else self.cwd, env=self.env(), capture_output=True, text=True,
        )  # fmt: skip
        return p.stdout.strip() or p.stderr.strip()


_venvs: dict[tuple[Path, Path], Path | None] = {}


def installed_venv(src: Path, venv_dir: Path = BENCH_VENV) -> Path | None:
    """mirrorsync installed the way a user installs it (pip into its own virtual
    environment: compiled bytecode, the console script, no other site-packages),
    so the timings include a real start-up and not a source tree's. Falls back to
    running `src` in place when it is no project (an exported package directory).
    `venv_dir` lets a long-running measurement (bench/daemon_latency.py) use a venv
    of its own, which a concurrent bench/run.py cannot reinstall under it."""
    if (src, venv_dir) in _venvs:
        return _venvs[src, venv_dir]
    venv: Path | None = None
    if (src / "pyproject.toml").exists():
        venv = venv_dir
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade",
             "--force-reinstall", "--no-deps", str(src)],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(  # dependencies only once
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
            check=True, capture_output=True,
        )  # fmt: skip
    _venvs[src, venv_dir] = venv
    return venv


class Mbsync(Tool):
    name = "mbsync"

    def write_config(self) -> None:
        self.config = self.home / "mbsyncrc"
        # FSync defaults to yes; said explicitly so nobody wonders.
        self.config.write_text(
            f"""FSync yes

IMAPAccount bench
Host {self.server.host}
Port {self.server.port}
User {self.user}
Pass {self.password}
SSLType None
AuthMechs LOGIN

IMAPStore bench-remote
Account bench

MaildirStore bench-local
Path {self.maildir}/
Inbox {self.maildir}/INBOX
SubFolders Verbatim

Channel bench
Far :bench-remote:
Near :bench-local:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
"""
        )

    def command(self) -> list[str]:
        return ["mbsync", "-c", str(self.config), "bench"]

    def comparable(self, data: bytes) -> bytes:
        # mbsync 1.4 writes an "X-TUID:" header into every message it copies (it finds
        # its own copies by it after an interrupted run); it cannot be turned off.
        return without_header(data, b"X-TUID")


class OfflineImap(Tool):
    name = "offlineimap"
    connections = 1  # offlineimap's own default for maxconnections

    def write_config(self) -> None:
        self.config = self.home / "offlineimaprc"
        self.config.write_text(
            f"""[general]
accounts = bench
metadata = {self.home / "offlineimap-metadata"}
fsync = true

[Account bench]
localrepository = bench-local
remoterepository = bench-remote

[Repository bench-local]
type = Maildir
localfolders = {self.maildir}
sep = /

[Repository bench-remote]
type = IMAP
remotehost = {self.server.host}
remoteport = {self.server.port}
remoteuser = {self.user}
remotepass = {self.password}
ssl = no
starttls = no
maxconnections = {self.connections}
"""
        )

    def command(self) -> list[str]:
        # -o: one sync and exit (no autorefresh); -u basic: plain log lines, no curses.
        return ["offlineimap", "-c", str(self.config), "-o", "-u", "basic"]


class MirrorsyncBase(Mirrorsync):
    """A second mirrorsync, from `--baseline-src`: a before/after comparison in one run,
    where both see the same server load and the same machine drift."""

    name = "mirrorsync-base"
    venv_dir = BENCH_VENV.with_name(BENCH_VENV.name + "-base")


TOOL_CLASSES: dict[str, type[Tool]] = {
    "mirrorsync": Mirrorsync,
    "mirrorsync-base": MirrorsyncBase,
    "mbsync": Mbsync,
    "offlineimap": OfflineImap,
}


GNU_TIME = "/usr/bin/time"


def timed_run(
    cmd: list[str], log: Path, env: dict[str, str], cwd: Path, timeout: float
) -> RunResult:
    """Run `cmd` to completion with its output in `log`; wall time around it.

    Peak RSS and CPU time come from GNU time, which forks the tool and reads them with
    wait4() on exactly that pid. os.wait4 from here would not do: Linux starts a child's
    ru_maxrss at its parent's peak RSS (exec records the old address space's high-water
    mark), so every tool would report at least this benchmark's own size. GNU time is
    ~2 MB, below anything measured.

    The child gets its own session so a timeout can kill it and anything it started,
    by its process group id."""
    timed_out = threading.Event()
    usage_file = log.with_suffix(".rusage")
    usage_file.unlink(missing_ok=True)
    with log.open("wb") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(
            [GNU_TIME, "-o", str(usage_file), "-f", "%e %M %U %S", "--", *cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            returncode = proc.wait()
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
    rss_kb, cpu = 0.0, 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        # "Command exited with non-zero status N" may come first; the numbers are last.
        _wall, rss, user, system = usage_file.read_text().split("\n")[-2].split()
        rss_kb, cpu = float(rss), float(user) + float(system)
    return RunResult(
        seconds=seconds,
        max_rss_mb=rss_kb / 1024,
        cpu_seconds=cpu,
        returncode=returncode,
        timed_out=timed_out.is_set(),
        log=log,
    )


def missing_commands(tools: list[str]) -> list[str]:
    """What is missing of the selected peers' commands and GNU time ("time")."""
    want = {"mbsync": "mbsync", "offlineimap": "offlineimap"}
    missing = [t for t in tools if t in want and shutil.which(want[t]) is None]
    if not Path(GNU_TIME).exists():
        missing.append("time")
    return missing


def install_peers(tools: list[str]) -> None:
    """Install the Debian packages of what is missing (needs root and apt-get)."""
    missing = missing_commands(tools)
    if not missing:
        return
    packages = [PACKAGES[t] for t in missing]
    how = f"apt-get update && apt-get install -y {' '.join(packages)}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(
            f"bench: {', '.join(missing)} not installed; install with: {how} "
            "(or leave them out with --tools)"
        )
    print(f"bench: installing {' '.join(packages)} ({how})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)
    still = missing_commands(tools)
    if still:
        raise SystemExit(f"bench: {', '.join(still)} still missing after {how}")


def version_of(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else "unknown"
