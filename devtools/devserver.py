"""A throw-away Dovecot on loopback, for the tests, the demo and the benchmark.

Everything lives under one temporary directory. It runs as root on these machines
only with the settings below (see the project's notes on Dovecot): internal and mail
users are `dovecot`, users come from a passwd-file with empty uid/gid, and the
login/anvil services are not chrooted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _chown_dovecot(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "dovecot", "dovecot")


@dataclass
class Dovecot:
    """One Dovecot instance. `start()` then `add_user()`; `stop()` when done.

    `capabilities`, when given, replaces the advertised IMAP capability list, so the
    fallbacks for servers without CONDSTORE, QRESYNC, UIDPLUS or MOVE can be tested
    against the real server. `separator` and `prefix` shape the folder names as
    other servers have them.
    """

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mirrorsync-dovecot-")))
    capabilities: str | None = None
    quota: bool = False
    # The inbox namespace: "." with prefix "INBOX." is how Courier names folders
    # (every one under INBOX.), and "." alone how Cyrus does with unixhierarchysep: no.
    separator: str = "/"
    prefix: str = ""
    # Dovecot's own Maildir layout: maildir++ (the default) refuses "." in names with
    # the "/" separator; LAYOUT=fs allows it, for folders such as "lists.debian.org".
    layout_fs: bool = False
    # An OAuth2 provider's introspection endpoint (RFC 7662): when set, Dovecot also
    # takes XOAUTH2 and OAUTHBEARER and asks there whether a token is live and whose.
    oauth2_introspection: str | None = None
    # Special-use folders (RFC 6154) as "name": "\\Junk", marked in LIST answers.
    special_use: dict[str, str] = field(default_factory=dict)
    port: int = 0
    imaps_port: int = 0
    _proc_started: bool = False

    @property
    def host(self) -> str:
        return HOST

    @property
    def cert(self) -> Path:
        return self.base / "cert.pem"

    @property
    def passwd(self) -> Path:
        return self.base / "users"

    def maildir_of(self, user: str) -> Path:
        return self.base / "mail" / user / "Maildir"

    def _config(self) -> str:
        lines = [
            f"base_dir = {self.base}/run",
            f"state_dir = {self.base}/state",
            f"log_path = {self.base}/dovecot.log",
            f"info_log_path = {self.base}/dovecot.log",
            "protocols = imap",
            f"listen = {HOST}",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login"
            + (" xoauth2 oauthbearer" if self.oauth2_introspection else ""),
            "default_login_user = dovenull",
            "default_internal_user = dovecot",
            "default_internal_group = dovecot",
            "mail_uid = dovecot",
            "mail_gid = dovecot",
            "first_valid_uid = 1",
            "ssl = yes",
            f"ssl_cert = <{self.cert}",
            f"ssl_key = <{self.base}/key.pem",
            f"mail_location = maildir:{self.base}/mail/%u/Maildir"
            + (":LAYOUT=fs" if self.layout_fs else ""),
            "mail_fsync = never",
            # One passwd-file per user: Dovecot re-reads a shared file only when its
            # mtime changes, which misses users added within the same second.
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN {self.passwd}/%u",
            *(["  mechanisms = plain login"] if self.oauth2_introspection else []),
            "}",
            *(self._oauth2_passdb() if self.oauth2_introspection else []),
            "userdb {",
            "  driver = passwd-file",
            f"  args = {self.passwd}/%u",
            "}",
            "auth_failure_delay = 0",
            "namespace inbox {",
            "  inbox = yes",
            f"  separator = {self.separator}",
            *([f"  prefix = {self.prefix}"] if self.prefix else []),
            *(
                line
                for name, use in self.special_use.items()
                for line in (f'  mailbox "{name}" {{', f"    special_use = {use}", "  }")
            ),
            "}",
            "service imap-login {",
            "  chroot =",
            "  inet_listener imap {",
            f"    port = {self.port}",
            "  }",
            "  inet_listener imaps {",
            f"    port = {self.imaps_port}",
            "    ssl = yes",
            "  }",
            "}",
            "service anvil {",
            "  chroot =",
            "}",
            "service stats {",
            "  unix_listener stats-reader {",
            "    user = dovecot",
            "  }",
            "  unix_listener stats-writer {",
            "    user = dovecot",
            "  }",
            "}",
        ]
        if self.capabilities is not None:
            lines += ["protocol imap {", f"  imap_capability = {self.capabilities}", "}"]
        if self.quota:
            lines += [
                "mail_plugins = $mail_plugins quota",
                "protocol imap {",
                "  mail_plugins = $mail_plugins imap_quota",
                "}",
                "plugin {",
                "  quota = maildir:User quota",
                "  quota_rule = *:storage=1G",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def _oauth2_passdb(self) -> list[str]:
        """Dovecot's oauth2 passdb, posting each token to the introspection URL and
        taking it when the answer says active and names the user logging in."""
        conf = self.base / "oauth2.conf.ext"
        conf.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {self.oauth2_introspection}\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
        )
        return [
            # Refused tokens are what these tests are about: without this, Dovecot's
            # auth penalty slows every later login from 127.0.0.1 by seconds.
            "service anvil {",
            "  unix_listener anvil-auth-penalty {",
            "    mode = 0",
            "  }",
            "}",
            "passdb {",
            "  driver = oauth2",
            "  mechanisms = xoauth2 oauthbearer",
            f"  args = {conf}",
            "}",
        ]

    def start(self) -> Dovecot:
        if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
            raise RuntimeError(
                "dovecot is not installed; install Debian's dovecot-imapd "
                "(apt-get install -y dovecot-imapd)"
            )
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        for sub in ("run", "state", "mail"):
            (self.base / sub).mkdir(exist_ok=True)
        _chown_dovecot(self.base / "mail")
        if not self.cert.exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST},DNS:localhost",
                 "-keyout", str(self.base / "key.pem"), "-out", str(self.cert)],
                check=True, capture_output=True,
            )  # fmt: skip
        self.passwd.mkdir(exist_ok=True)
        self.port = self.port or _free_port()
        self.imaps_port = self.imaps_port or _free_port()
        conf = self.base / "dovecot.conf"
        conf.write_text(self._config())
        dovecot = shutil.which("dovecot") or "/usr/sbin/dovecot"
        # The daemonised master inherits our stdout/stderr: give it a file, not a pipe,
        # or run() would wait for the pipe to close, that is, for Dovecot to exit.
        with (self.base / "start.log").open("w+") as out:
            res = subprocess.run([dovecot, "-c", str(conf)], stdout=out, stderr=out)
            if res.returncode != 0:
                out.seek(0)
                raise RuntimeError(f"dovecot failed to start: {out.read().strip()}")
        self._proc_started = True
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    if s.recv(200).startswith(b"* OK"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not accept connections; see {self.base}/dovecot.log")

    def add_user(self, name: str, password: str = "secret", mail: str = "") -> None:
        """A user; `mail` is a mail_location of its own (a Maildir elsewhere)."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad user name {name!r}")
        extra = f":userdb_mail={mail}" if mail else ""
        (self.passwd / name).write_text(f"{name}:{{PLAIN}}{password}:::::{extra}\n")

    def pid(self) -> int | None:
        try:
            return int((self.base / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, wait: float = 10.0) -> None:
        """Stop the master and wait until it is gone, so a restart on the same base works."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
