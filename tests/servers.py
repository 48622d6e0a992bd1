"""IMAP servers other than Dovecot, started by the tests on loopback: Cyrus IMAP 3.6
(with '/' or '.' as separator), Courier-IMAP 5.0 and pymap (pure Python, in memory).

Each class offers what the tests use of `devtools.devserver.Dovecot`: `start()`,
`add_user()`, `cleanup()`, `host` and `port`, plus `prefix` (what every personal
folder name starts with: Courier's `INBOX.`) and `separator`. Debian cannot install
Cyrus or Courier next to Dovecot (each conflicts with `imap-server`), so scripts/setup
unpacks their packages into SERVERS_DIR and the binaries run from there; see
/work/shared/notes/servers.md for how each was made to run.

A server that is not installed raises `Unavailable`; the fixtures (tests/conftest.py)
turn that into a skip, except under CI (CI=true), where it is a failure, so a broken
install cannot hide behind skipped tests.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from devtools.devserver import HOST, Dovecot, _free_port

SERVERS_DIR = Path(os.environ.get("MIRRORSYNC_TEST_SERVERS", "/var/cache/mirrorsync-test-servers"))


class Server(Protocol):
    """What the fixtures and tests/harness.py use of a server, Dovecot included."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    def add_user(self, name: str, password: str = "secret") -> None: ...


def prefix_of(server: object) -> str:
    """What every personal folder name starts with on `server` ("" but on Courier)."""
    return str(getattr(server, "prefix", ""))


def separator_of(server: object) -> str:
    """The server's hierarchy separator (Dovecot's fixtures use '/')."""
    return str(getattr(server, "separator", "/"))


class Unavailable(RuntimeError):
    """The server is not installed here (or cannot run here); the text says why."""


def _wait_greeting(port: int, what: str, log: Path, timeout: float = 20.0) -> None:
    """Wait until the port answers with an IMAP greeting: the server is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                if s.recv(200).startswith(b"* OK"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not accept connections on port {port}; see {log}")


def _kill_wait(pid: int, wait: float = 10.0) -> None:
    """SIGTERM the process, then SIGKILL it if it is still there after `wait` s."""
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
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pidfile: Path) -> bool:
    """Whether the process named in `pidfile` runs (no pgrep: procps may be missing)."""
    try:
        os.kill(int(pidfile.read_text().split()[0]), 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Unavailable(f"{what} needs root here (run the tests as root)")


# -- Dovecot with capabilities taken away ----------------------------------------------

# Dovecot 2.3's own list, from which the variants below take extensions away.
_DOVECOT_BASE = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ NAMESPACE CHILDREN"

DOVECOT_VARIANTS: dict[str, str] = {
    # Gmail: CONDSTORE but no QRESYNC (so no VANISHED); MOVE, UIDPLUS, LIST-STATUS.
    "condstore-only": f"{_DOVECOT_BASE} UNSELECT UIDPLUS MOVE CONDSTORE ESEARCH "
    "LIST-EXTENDED LIST-STATUS SPECIAL-USE",
    # Courier or Outlook: UIDPLUS, but no MOVE, CONDSTORE, QRESYNC or LIST-STATUS.
    "uidplus-only": f"{_DOVECOT_BASE} UNSELECT UIDPLUS",
}


def dovecot_variant(name: str) -> Dovecot:
    return Dovecot(capabilities=DOVECOT_VARIANTS[name])


# -- Cyrus IMAP ------------------------------------------------------------------------


@dataclass
class Cyrus:
    """One Cyrus IMAP 3.6 instance: users in its own sasldb, mail under `base`.

    `separator` '/' is `unixhierarchysep: yes`; '.' is Cyrus's traditional netnews
    style. `altnamespace: yes` puts the user's folders at the top level, next to
    INBOX, as Dovecot does.
    """

    separator: str = "/"
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mirrorsync-cyrus-")))
    port: int = 0
    prefix: str = ""
    _tree: Path = field(default=SERVERS_DIR / "cyrus-imapd")

    host = HOST

    def _conf(self) -> str:
        b = self.base
        keys = {
            "configdirectory": b / "config",
            "partition-default": b / "spool",
            "defaultpartition": "default",
            "sievedir": b / "sieve",
            "lmtpsocket": b / "socket" / "lmtp",
            "idlesocket": b / "socket" / "idle",
            "notifysocket": b / "socket" / "notify",
            "servername": "localhost",
            "admins": "cyrusadmin",
            "altnamespace": "yes",
            "unixhierarchysep": "yes" if self.separator == "/" else "no",
            "allowplaintext": "yes",
            "sasl_pwcheck_method": "auxprop",
            "sasl_auxprop_plugin": "sasldb",
            "sasl_sasldb_path": b / "sasldb2",
            "sasl_mech_list": "PLAIN LOGIN",
            "autocreate_quota": "0",
            "syslog_prefix": f"mirrorsync-cyrus-{self.port}",
        }
        if os.geteuid() == 0:
            keys["cyrus_user"] = "cyrus"
        return "".join(f"{k}: {v}\n" for k, v in keys.items())

    def start(self) -> Cyrus:
        master = Path("/usr/lib/cyrus/bin/master")
        imapd = self._tree / "usr/lib/cyrus/bin/imapd"
        if not master.exists() or not imapd.exists() or shutil.which("saslpasswd2") is None:
            raise Unavailable(
                f"Cyrus is not installed ({master}, {imapd} or saslpasswd2 missing); "
                "run scripts/setup"
            )
        self.port = self.port or _free_port()
        for sub in ("config", "spool", "sieve", "socket"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        conf = self.base / "imapd.conf"
        conf.write_text(self._conf())
        (self.base / "cyrus.conf").write_text(
            "START {\n"
            f'  recover cmd="ctl_cyrusdb -C {conf} -r"\n'
            "}\n"
            "SERVICES {\n"
            f'  imap cmd="{imapd} -C {conf} -U 30" listen="{HOST}:{self.port}" prefork=1\n'
            "}\n"
            "EVENTS {\n}\n"
        )
        self._chown()
        log = self.base / "master.log"
        with log.open("w") as out:
            res = subprocess.run(
                [str(master), "-C", str(conf), "-M", str(self.base / "cyrus.conf"),
                 "-p", str(self.base / "master.pid"), "-d"],
                stdout=out, stderr=out,
            )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"cyrus master failed to start: {log.read_text().strip()}")
        _wait_greeting(self.port, "cyrus", log)
        return self

    def _chown(self) -> None:
        if os.geteuid() != 0:
            return
        uid, gid = pwd.getpwnam("cyrus").pw_uid, grp.getgrnam("mail").gr_gid
        os.chown(self.base, uid, gid)
        for p in self.base.rglob("*"):
            os.lchown(p, uid, gid)

    def add_user(self, name: str, password: str = "secret") -> None:
        db = self.base / "sasldb2"
        subprocess.run(
            ["saslpasswd2", "-f", str(db), "-p", "-c", "-u", "localhost", name],
            input=password.encode(), check=True, capture_output=True,
        )  # fmt: skip
        if os.geteuid() == 0:
            os.chown(db, pwd.getpwnam("cyrus").pw_uid, grp.getgrnam("mail").gr_gid)

    def stop(self) -> None:
        try:
            pid = int((self.base / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return
        _kill_wait(pid)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


# -- Courier-IMAP ----------------------------------------------------------------------

_AUTHDAEMONRC = Path("/etc/courier/authdaemonrc")
_USERDB = Path("/etc/courier/userdb")


@dataclass
class Courier:
    """One Courier-IMAP 5.0 instance, under couriertcpd, logins through the system's
    authdaemond and its userdb (the socket path is compiled in, hence root).

    It changes the machine's Courier setup: `authmodulelist="authuserdb"` in
    /etc/courier/authdaemonrc, and its users in /etc/courier/userdb (removed again by
    `cleanup()`). Their Maildirs live under `base`, owned by `mail`.
    """

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mirrorsync-courier-")))
    port: int = 0
    prefix: str = "INBOX."
    separator: str = "."
    _tree: Path = field(default=SERVERS_DIR / "courier-imap")
    _users: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None
    _started_authdaemond: bool = False

    host = HOST

    def start(self) -> Courier:
        imapd = self._tree / "usr/bin/imapd"
        imaplogin = self._tree / "usr/lib/courier/courier/imaplogin"
        tools = ("couriertcpd", "authdaemond", "userdb", "userdbpw", "makeuserdb", "maildirmake")
        missing = [t for t in tools if shutil.which(t, path="/usr/sbin:/usr/bin") is None]
        if not imapd.exists() or missing:
            raise Unavailable(
                f"Courier-IMAP is not installed ({imapd} or {', '.join(missing)} missing); "
                "run scripts/setup"
            )
        _need_root("Courier's authdaemond")
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self._started_authdaemond = self._authdaemond()
        self.port = self.port or _free_port()
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            # Debian's default list (its /etc/courier/imapd), without the TLS parts.
            "IMAP_CAPABILITY": "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE "
            "THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE",
            "IMAP_STARTTLS": "NO",
            "IMAP_TLS_REQUIRED": "0",
            "IMAP_EMPTYTRASH": "",
            "IMAP_KEYWORDS": "1",
            "IMAP_ACL": "1",
            "IMAP_IDLE_TIMEOUT": "60",
            "IMAP_MAILBOX_SANITY_CHECK": "1",
            "IMAP_USELOCKS": "1",
            "IMAP_MOVE_EXPUNGE_TO_TRASH": "0",
            "IMAP_DISABLETHREADSORT": "0",
        }
        log = self.base / "imapd.log"
        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                ["couriertcpd", f"-address={HOST}", "-nodnslookup", "-noidentlookup",
                 "-maxprocs=40", "-maxperip=40", str(self.port),
                 str(imaplogin), str(imapd), "Maildir"],
                env=env, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        _wait_greeting(self.port, "courier", log)
        return self

    @staticmethod
    def _authdaemond() -> bool:
        """Make the system's authdaemond answer from the userdb: set its module list
        (Debian's default is PAM) and (re)start it if it runs with another; whether
        it was started here (and is to be stopped afterwards)."""
        text = _AUTHDAEMONRC.read_text()
        wanted = 'authmodulelist="authuserdb"'
        lines = text.splitlines()
        changed = False
        if wanted not in lines:
            lines = [wanted if ln.startswith("authmodulelist=") else ln for ln in lines]
            _AUTHDAEMONRC.write_text("\n".join(lines) + "\n")
            changed = True
        if not _USERDB.exists():
            _USERDB.touch(mode=0o600)
            subprocess.run(["makeuserdb"], check=True, capture_output=True)
        running = Path("/run/courier/authdaemon/socket").exists() and _alive(
            Path("/run/courier/authdaemon/pid")
        )
        if running and not changed:
            return False
        if running:
            subprocess.run(["authdaemond", "stop"], check=False, capture_output=True)
        run = Path("/run/courier/authdaemon")
        if not run.exists():  # made at boot by tmpfiles.d, which a container may skip
            run.mkdir(mode=0o750, parents=True)
            shutil.chown(run, "courier", "courier")
        subprocess.run(["authdaemond", "start"], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while not Path("/run/courier/authdaemon/socket").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("authdaemond did not create its socket")
            time.sleep(0.05)
        return True

    def add_user(self, name: str, password: str = "secret") -> None:
        user = pwd.getpwnam("mail")
        home = self.base / name
        home.mkdir()
        os.chown(home, user.pw_uid, user.pw_gid)
        subprocess.run(
            ["maildirmake", str(home / "Maildir")], check=True, capture_output=True,
            user=user.pw_uid, group=user.pw_gid,
        )  # fmt: skip
        subprocess.run(
            ["userdb", name, "set", f"uid={user.pw_uid}", f"gid={user.pw_gid}",
             f"home={home}", f"mail={home}/Maildir"],
            check=True, capture_output=True,
        )  # fmt: skip
        hashed = subprocess.run(
            ["userdbpw", "-md5"], input=f"{password}\n{password}\n".encode(),
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        subprocess.run(
            ["userdb", name, "set", "systempw"], input=hashed, check=True, capture_output=True
        )
        subprocess.run(["makeuserdb"], check=True, capture_output=True)
        self._users.append(name)

    def stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
            self._proc = None

    def cleanup(self) -> None:
        self.stop()
        for name in self._users:
            subprocess.run(["userdb", name, "del"], check=False, capture_output=True)
        if self._users:
            subprocess.run(["makeuserdb"], check=False, capture_output=True)
        self._users.clear()
        if self._started_authdaemond:
            subprocess.run(["authdaemond", "stop"], check=False, capture_output=True)
            self._started_authdaemond = False
        shutil.rmtree(self.base, ignore_errors=True)


# -- pymap -----------------------------------------------------------------------------

# pymap's dict backend knows one user, given on the command line. This launcher lets it
# know every user listed (one `name password` a line) in the file named by argv[1],
# read at each login, the way the Dovecot fixture uses a passwd-file; the rest of the
# command line is pymap's own. Passwords are kept in clear: pymap's default hash
# (500000 rounds of PBKDF2) made each login take 2 s here.
_PYMAP_LAUNCHER = """
import sys
from pathlib import Path
from pysasl.hashing import Cleartext
from pymap.backend.dict import Config, Login
from pymap.exceptions import UserNotFound
from pymap.main import main
from pymap.user import Passwords, UserMetadata

users_file = Path(sys.argv.pop(1))
authenticate = Login.authenticate

async def with_users_file(self, credentials):
    known = dict(line.split(" ", 1) for line in users_file.read_text().splitlines())
    name = credentials.authcid
    if name in known and name not in self.users_dict:
        hashed = await Passwords(self.config).hash_password(known[name])
        self.users_dict[name] = UserMetadata(self.config, name, password=hashed)
    return await authenticate(self, credentials)

Login.authenticate = with_users_file
Config._get_hash_context = classmethod(lambda cls, passlib_cfg: Cleartext())
sys.argv[0] = "pymap"
main()
"""


@dataclass
class Pymap:
    """One pymap process with its in-memory dict backend, no TLS."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mirrorsync-pymap-")))
    port: int = 0
    prefix: str = ""
    separator: str = "/"
    _proc: subprocess.Popen[bytes] | None = None

    host = HOST

    def start(self) -> Pymap:
        try:
            import pymap  # noqa: F401
        except ImportError as e:
            raise Unavailable(
                f"pymap is not installed ({e}); run scripts/setup (pymap needs Python 3.11)"
            ) from e
        self.port = self.port or _free_port()
        users = self.base / "users"
        users.touch()
        log = self.base / "pymap.log"
        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _PYMAP_LAUNCHER, str(users),
                 "--host", HOST, "--port", str(self.port), "--no-service", "admin",
                 "dict", "--demo-user", "nobody-demo", "--demo-password", os.urandom(8).hex()],
                stdout=out, stderr=out,
            )  # fmt: skip
        _wait_greeting(self.port, "pymap", log)
        return self

    def add_user(self, name: str, password: str = "secret") -> None:
        with (self.base / "users").open("a") as f:
            f.write(f"{name} {password}\n")

    def stop(self) -> None:
        if self._proc is not None:
            # It keeps nothing; and on SIGTERM it waits for its clients to leave.
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
