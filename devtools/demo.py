"""`python3 -m devtools.demo`: watch mirrorsync do its main job, start to finish.

It starts a throw-away Dovecot on loopback, fills one user's mailbox with realistic
mail (flags, nested and non-ASCII folders, an attachment), writes a config for it and
then runs the real command line as a separate process, exactly as a user would: a
first `sync`, a look at the Maildir it made, `status`, and a second `sync` that must
find nothing to do. Nothing outside one temporary directory is touched, and that
directory (with the server) is removed at the end, also on errors and Ctrl-C, unless
`--keep` asks to leave it for poking around.

The demo doubles as a smoke test: it exits non-zero if any mirrorsync command fails,
if a folder's message count differs between the server and the Maildir, or if the
second sync changes anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

import mirrorsync
from devtools.devserver import Dovecot
from mirrorsync.layout import NESTED, folder_path

ACCOUNT = "demo"
USER = "demo"
PASSWORD = "demo-password"

SEEN = b"\\Seen"
FLAGGED = b"\\Flagged"
ANSWERED = b"\\Answered"
DRAFT = b"\\Draft"
FORWARDED = b"$Forwarded"

# A 1x1 transparent PNG: small enough to read in the Maildir file, real enough for a
# mail reader to show as a picture.
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)

ME = "Dana Demo <dana@example.org>"


class DemoFailed(Exception):
    """A step did not do what the demo shows it doing; the message says which."""


@dataclass(frozen=True)
class Sample:
    """One message to put on the server: where, with which flags, and its content."""

    folder: str
    flags: tuple[bytes, ...]
    sender: str
    subject: str
    body: str
    attachment: tuple[str, bytes] | None = None
    list_id: str | None = None
    in_reply_to: str | None = None


# Folders are created parents first; "Lists" and "Archiv/2025" are never created, so
# the server shows them as non-selectable parents (\Noselect), as real servers often do.
FOLDERS = ("Work", "Work/Projects", "Lists/python-dev", "Entwürfe", "Archiv/2025/Überträge")

SAMPLES: tuple[Sample, ...] = (
    Sample("INBOX", (SEEN,), "Ops <ops@example.org>", "Welcome to your new mailbox",
           "Hi Dana,\n\nyour mailbox is ready. Enjoy!\n\n-- Ops"),
    Sample("INBOX", (SEEN, FLAGGED), "Chris Boss <chris@example.org>", "Report due Friday",
           "Please send me the numbers by Friday noon.\n\nThanks,\nChris"),
    Sample("INBOX", (SEEN, ANSWERED), "Sam Friend <sam@example.net>", "Lunch on Thursday?",
           "Pizza at the usual place, 12:30?\n\nSam"),
    Sample("INBOX", (SEEN, FORWARDED), "Billing <billing@example.com>", "Your invoice 2025-0042",
           "Invoice 2025-0042: 19.99 EUR, due in 14 days."),
    Sample("INBOX", (SEEN, DRAFT), ME, "Re: Lunch on Thursday?",
           "Sounds good, see you th", in_reply_to="inbox-3"),
    Sample("INBOX", (SEEN,), "Sam Friend <sam@example.net>", "Photo from the trip",
           "Here is the picture I promised.\n\nSam", attachment=("tiny.png", TINY_PNG)),
    Sample("INBOX", (SEEN,), "News <news@example.com>", "Weekly digest #12",
           "Top stories this week:\n\n1. Maildir turns 30\n2. IMAP still going strong"),
    Sample("INBOX", (), "Alex New <alex@example.net>", "Are you coming to the meetup?",
           "It starts at 7pm. Let me know!\n\nAlex"),
    Sample("Work", (SEEN,), "Chris Boss <chris@example.org>", "Team offsite agenda",
           "Day 1: planning. Day 2: hiking."),
    Sample("Work", (SEEN, FLAGGED), "HR <hr@example.org>", "Please confirm your holidays",
           "Reply with your dates before the end of the month."),
    Sample("Work/Projects", (SEEN,), "Robin Dev <robin@example.org>", "mirrorsync: release plan",
           "Release 0.1 once the end-to-end tests pass."),
    Sample("Work/Projects", (), "CI <ci@example.org>", "Build #128 passed",
           "All checks passed in 4m 12s."),
    Sample("Lists/python-dev", (SEEN,), "Guido <guido@example.org>", "[Python-Dev] PEP 9999",
           "A modest proposal.", list_id="python-dev.python.org"),
    Sample("Lists/python-dev", (SEEN,), "Barry <barry@example.org>", "Re: [Python-Dev] PEP 9999",
           "+1 from me.", list_id="python-dev.python.org", in_reply_to="lists-python-dev-1"),
    Sample("Lists/python-dev", (), "Brett <brett@example.org>", "Re: [Python-Dev] PEP 9999",
           "Needs a reference implementation.", list_id="python-dev.python.org",
           in_reply_to="lists-python-dev-1"),
    Sample("Entwürfe", (SEEN, DRAFT), ME, "Grüße aus Köln",
           "Liebe Grüße aus Köln,\nbis bald!\n\nDana"),
    Sample("Archiv/2025/Überträge", (SEEN,), "Bank <bank@example.de>", "Überweisung ausgeführt",
           "Ihre Überweisung über 250,00 € wurde ausgeführt."),
    Sample("Archiv/2025/Überträge", (SEEN, FLAGGED), "Bank <bank@example.de>",
           "Dauerauftrag geändert", "Ihr Dauerauftrag wurde geändert."),
)  # fmt: skip


# --- output helpers -----------------------------------------------------------------


def heading(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def indent(text: str, prefix: str = "    ") -> str:
    return "".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n")) if text else ""


# --- the mail ----------------------------------------------------------------------


def message_id(sample: Sample, n: int) -> str:
    """Stable ids (no host name or random part), so every run shows the same mail."""
    ascii_name = unicodedata.normalize("NFKD", sample.folder).encode("ascii", "ignore").decode()
    slug = ascii_name.lower().replace("/", "-") or "x"
    return f"{slug}-{n}"


def build_message(sample: Sample, n: int, date: datetime) -> bytes:
    """A small RFC 5322 message, CRLF-terminated as IMAP APPEND wants it. EmailMessage
    encodes non-ASCII subjects (RFC 2047) and bodies and the attachment (base64)."""
    msg = EmailMessage()
    msg["From"] = sample.sender
    msg["To"] = ME if sample.sender != ME else "Sam Friend <sam@example.net>"
    msg["Subject"] = sample.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = f"<{message_id(sample, n)}@example.org>"
    if sample.in_reply_to:
        msg["In-Reply-To"] = f"<{sample.in_reply_to}@example.org>"
    if sample.list_id:
        msg["List-Id"] = f"<{sample.list_id}>"
    msg.set_content(sample.body + "\n")
    if sample.attachment:
        filename, data = sample.attachment
        msg.add_attachment(data, maintype="image", subtype="png", filename=filename)
        msg.set_boundary(f"=-{message_id(sample, n)}-part")  # fixed, not random
    return msg.as_bytes(policy=SMTP)


def fill_mailbox(server: Dovecot) -> dict[str, tuple[int, int]]:
    """Create the folders and append the samples through IMAP, as another mail client
    would. Returns what the server then holds: folder -> (messages, unseen)."""
    import imapclient  # imported here so `--help` works without it

    client: Any = imapclient.IMAPClient(server.host, server.port, ssl=False, timeout=30)
    try:
        client.login(USER, PASSWORD)
        for name in FOLDERS:
            client.create_folder(name)  # imapclient encodes it to modified UTF-7
        start = datetime(2025, 3, 3, 9, 15, tzinfo=timezone(timedelta(hours=1)))
        counters: dict[str, int] = {}
        for i, sample in enumerate(SAMPLES):
            n = counters[sample.folder] = counters.get(sample.folder, 0) + 1
            date = start + timedelta(days=i, minutes=37 * i)
            client.append(
                sample.folder, build_message(sample, n, date), flags=sample.flags, msg_time=date
            )
        held: dict[str, tuple[int, int]] = {}
        for flags, _sep, name in client.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            st = client.folder_status(name, [b"MESSAGES", b"UNSEEN"])
            held[name] = (int(st[b"MESSAGES"]), int(st[b"UNSEEN"]))
        return held
    finally:
        # The demo goes on if the goodbye fails; the server is thrown away anyway.
        with contextlib.suppress(Exception):
            client.logout()


def write_config(tmp: Path, server: Dovecot) -> Path:
    """The same kind of file a user writes (see sample-config.yaml)."""
    config = {
        "accounts": {
            ACCOUNT: {
                "remote": {
                    "host": server.host,
                    "port": server.port,
                    "tls": "none",  # loopback only; real servers use imaps or starttls
                    "username": USER,
                    "password": PASSWORD,
                },
                "local": {"path": str(tmp / "Mail"), "layout": NESTED},
                "state_dir": str(tmp / "state"),
            }
        }
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    path.chmod(0o600)  # it holds a password
    return path


# --- running mirrorsync --------------------------------------------------------------


def mirrorsync_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mirrorsync", "-c", str(config), *args]


def cache_dir(config: Path) -> Path:
    """The demo's runs keep their parsed-config cache (which holds the demo's password,
    as its config file does) in the demo's directory, removed with it: never in the
    user's ~/.cache, where it would outlive the demo."""
    return config.parent / "cache"


def run_mirrorsync(config: Path, *args: str) -> str:
    """Run the real CLI in its own process, as a user would, and show what it prints.
    Fails the demo on a non-zero exit status."""
    cmd = mirrorsync_command(config, *args)
    print(f"$ mirrorsync -c {shlex.quote(str(config))} {' '.join(args)}", flush=True)
    env = dict(os.environ)
    # Works from a source checkout too, without `pip install`.
    src = str(Path(mirrorsync.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["XDG_CACHE_HOME"] = str(cache_dir(config))
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600
    )
    sys.stdout.write(indent(proc.stdout))
    sys.stdout.write(indent(proc.stderr, "  ! "))
    sys.stdout.flush()
    if proc.returncode != 0:
        raise DemoFailed(f"'mirrorsync {' '.join(args)}' exited with status {proc.returncode}")
    return proc.stdout


# --- looking at the result -----------------------------------------------------------


def show_tree(tmp: Path, root: Path) -> int:
    """Print the Maildir like `find` does (each directory, then what is in it),
    relative to the demo directory, and return how many message files it holds."""
    files = 0

    def walk(path: Path) -> None:
        nonlocal files
        for entry in sorted(path.iterdir()):
            if entry.is_dir():
                print(f"{entry.relative_to(tmp)}/")
                walk(entry)
            else:
                print(entry.relative_to(tmp))
                files += path.name in ("cur", "new")

    print(f"{root.relative_to(tmp)}/")
    walk(root)
    return files


def compare_counts(root: Path, server: dict[str, tuple[int, int]]) -> None:
    """Each server folder must now be a local folder with as many message files."""
    width = max(len(n) for n in server)
    print(f"{'FOLDER'.ljust(width)}  SERVER  LOCAL  (new/ = unread, cur/ = seen)")
    wrong = []
    for name in sorted(server):
        path = folder_path(root, NESTED, name)
        new = len(list((path / "new").iterdir())) if (path / "new").is_dir() else 0
        cur = len(list((path / "cur").iterdir())) if (path / "cur").is_dir() else 0
        messages = server[name][0]
        mark = "" if new + cur == messages else "   <-- differs"
        print(f"{name.ljust(width)}  {messages:6}  {new + cur:5}  ({new} new, {cur} cur){mark}")
        if mark:
            wrong.append(name)
    if wrong:
        raise DemoFailed(f"the Maildir does not match the server in: {', '.join(wrong)}")


def show_message(root: Path, lines: int = 12) -> None:
    """Show the start of one file: the server's bytes, with LF line ends."""
    inbox_cur = folder_path(root, NESTED, "INBOX") / "cur"
    files = sorted(inbox_cur.iterdir()) if inbox_cur.is_dir() else []
    if not files:
        return
    first = files[0]
    print(f"{first.name}  (flags after ':2,' -> S=seen R=replied F=flagged P=passed D=draft)")
    text = first.read_bytes().decode("utf-8", "replace").split("\n")
    print(indent("\n".join(text[:lines]) + "\n..."), end="")


# --- the demo ------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM into an exception so the `finally` below still cleans up."""
    raise SystemExit(128 + signum)


def run_demo(tmp: Path, keep: bool) -> None:
    heading("1. Starting a throw-away Dovecot IMAP server on 127.0.0.1")
    server = Dovecot(base=tmp / "server")
    finished = False
    try:
        server.start()
        server.add_user(USER, PASSWORD)
        print(f"Dovecot listens on {server.host}:{server.port}; user {USER!r}")

        heading("2. Filling the mailbox with sample mail (through IMAP)")
        held = fill_mailbox(server)
        for name in sorted(held):
            messages, unseen = held[name]
            print(f"{name}: {plural(messages, 'message')}, {unseen} unread")
            for sample in SAMPLES:
                if sample.folder == name:
                    flags = " ".join(f.decode() for f in sample.flags) or "(unread)"
                    extra = "  + attachment" if sample.attachment else ""
                    print(f"    {flags:<20} {sample.subject}{extra}")

        heading("3. Writing a configuration file")
        config = write_config(tmp, server)
        print(f"{config}:")
        print(indent(config.read_text()), end="")

        heading("4. First sync: the server's mail comes down")
        run_mirrorsync(config, "sync")

        heading("5. The Maildir it made")
        root = tmp / "Mail"
        files = show_tree(tmp, root)
        print(f"({files} message files)")
        print()
        compare_counts(root, held)
        print()
        show_message(root)

        heading("6. mirrorsync status (offline: from the Maildir and the saved state)")
        run_mirrorsync(config, "status")

        heading("7. Second sync: nothing changed, so nothing to do")
        out = run_mirrorsync(config, "sync")
        if "no changes" not in out:
            raise DemoFailed("the second sync changed something; it should have found no changes")
        print("OK: the second sync found no changes (syncing is idempotent).")
        finished = True
    finally:
        if keep and finished:
            heading("Kept for you to explore")
            quoted = shlex.quote(str(tmp / "config.yaml"))
            cache = f"XDG_CACHE_HOME={shlex.quote(str(cache_dir(tmp / 'config.yaml')))}"
            print(f"Directory:  {tmp}")
            print(f"Dovecot is still running on {server.host}:{server.port}. Try:")
            print(f"  {cache} {shlex.join(mirrorsync_command(tmp / 'config.yaml', 'sync'))}")
            print(f"  {cache} {sys.executable} -m mirrorsync -c {quoted} status")
            print("When done:")
            print(f"  kill $(cat {shlex.quote(str(server.base / 'run' / 'master.pid'))})")
            print(f"  rm -rf {shlex.quote(str(tmp))}")
        else:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m devtools.demo",
        description="Sync a throw-away Dovecot full of sample mail to a Maildir, and show it.",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory and leave Dovecot running, to explore",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        # The throw-away Dovecot switches to the `dovecot` user for mail access.
        print("mirrorsync demo: must run as root (try: sudo scripts/demo)", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix="mirrorsync-demo-"))
    # Dovecot's mail user must be able to walk down to its mail folder.
    tmp.chmod(0o711)
    status = 1
    try:
        run_demo(tmp, args.keep)
        status = 0
    except DemoFailed as e:
        print(f"\nmirrorsync demo: FAILED: {e}", file=sys.stderr)
    except RuntimeError as e:  # the server would not start
        print(f"\nmirrorsync demo: FAILED: {e} (did scripts/setup run?)", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nmirrorsync demo: interrupted", file=sys.stderr)
        status = 130
    finally:
        if args.keep:
            if status != 0:
                print(f"mirrorsync demo: left everything in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if status == 0 and not args.keep:
        print("\nDone; the server and all files were removed (use --keep to explore them).")
    return status


if __name__ == "__main__":
    sys.exit(main())
