"""The benchmark's mail: a deterministic corpus, generated once and cached.

`ensure_corpus` writes N messages straight into a Dovecot-style Maildir++ tree (INBOX
is the root, folder "A/B" is ".A.B", as Dovecot's default maildir layout with the "/"
namespace separator stores it) plus a manifest (folder, Message-ID, flags, file of each
message). Everything comes from one seeded `random.Random`, so the same seed and N give
byte-identical mail on every machine and every run. The tree is then copied to one
server user per tool with `install_for_user`.

Sizes are log-normal around a ~5 KB median, 0.5% of the messages carry a 200-600 KB
base64 attachment, ~70% are \\Seen, some are \\Flagged or \\Answered, and the drafts
folder holds \\Draft messages.
"""

from __future__ import annotations

import base64
import email.header
import email.utils
import json
import math
import os
import random
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

GENERATOR_VERSION = 1
MANIFEST = "manifest.json"

# The ten selectable folders and the share of the messages each holds. "Lists/dev" is
# nested; its parent "Lists" is not a mailbox itself (Dovecot lists it \Noselect).
FOLDERS: tuple[tuple[str, float], ...] = (
    ("INBOX", 0.28),
    ("Archive", 0.22),
    ("Lists/dev", 0.14),
    ("Sent", 0.10),
    ("Work", 0.08),
    ("Receipts", 0.05),
    ("Travel", 0.04),
    ("Junk", 0.04),
    ("Trash", 0.04),
    ("Drafts", 0.01),
)

MEDIAN_BODY = 3500  # bytes of text; with headers (and HTML parts) the median message is ~5 KB
BODY_SIGMA = 0.5
ATTACHMENT_SHARE = 0.005
ATTACHMENT_RANGE = (200_000, 600_000)  # base64 bytes
START = datetime(2022, 1, 1, tzinfo=timezone.utc)
SPAN = timedelta(days=3 * 365)
ME = ("Robin Bench", "robin@bench.example")


@dataclass(frozen=True)
class Message:
    folder: str
    mid: str
    flags: str  # sorted Maildir info letters
    path: str  # relative to the corpus Maildir root


@dataclass
class Corpus:
    root: Path
    seed: int
    messages: list[Message]
    total_bytes: int

    @property
    def maildir(self) -> Path:
        return self.root / "Maildir"

    @property
    def folders(self) -> list[str]:
        return [f for f, _ in FOLDERS]

    def content(self, m: Message) -> bytes:
        return (self.maildir / m.path).read_bytes()


def dovecot_dir(root: Path, folder: str) -> Path:
    """Where Dovecot's default maildir layout keeps a folder ("/"-separated name)."""
    return root if folder == "INBOX" else root / ("." + folder.replace("/", "."))


# --- message text ---------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


_FIRST = _words(
    "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy "
    "Rupert Sybil Trent Victor Walter Zoë Ingrid Jürgen Amélie Søren Chidi Priya Kenji"
)
_LAST = _words(
    "Smith Jones Müller García Rossi Novak Kowalski Tanaka Okafor Silva Larsen Dubois "
    "Nguyen Schmidt Moreau Ivanova Haddad Kaur Murphy O'Brien Fischer Bauer Costa"
)
_DOMAINS = _words(
    "example.org example.net lists.example.org corp.example shop.example travel.example "
    "university.example mail.example.com bank.example news.example"
)
_SUBJECT_WORDS = _words(
    "meeting report update invoice question release draft review plan budget "
    "schedule ticket build failure patch proposal notes minutes reminder trip booking "
    "order receipt newsletter weekly summary migration outage benchmark feedback"
)
_MAILERS = ("Mutt/2.2.9", "Thunderbird 115.6", "aerc 0.17", "Apple Mail (2.3731)", "K-9 Mail")


class TextSource:
    """A pool of plain-text lines from made-up words; bodies are slices of it. Much
    faster than drawing every word, and still deterministic."""

    def __init__(self, rng: random.Random, lines: int = 20000) -> None:
        syll = "ka lo mi ne ru sa te vo zi bar den fol gim hap jus ker lum mor nid pel quo rist"
        sylls = syll.split()
        words = ["".join(rng.choice(sylls) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
        words += _words("the a of and to in is for on that with as it be at by this") * 40
        pool: list[str] = []
        while len(pool) < lines:
            para = " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
            para = para[0].upper() + para[1:] + "."
            pool.extend(textwrap.wrap(para, width=rng.randint(64, 76)))
            pool.append("")
        self.lines = pool

    def body(self, rng: random.Random, size: int, quote: bool = False) -> str:
        out: list[str] = []
        n = 0
        i = rng.randrange(len(self.lines))
        while n < size:
            line = self.lines[i % len(self.lines)]
            if quote and line and n < size // 3:
                line = "> " + line
            out.append(line)
            n += len(line) + 1
            i += 1
        return "\n".join(out) + "\n"


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    addr = f"{first}.{last}".lower().replace("'", "").encode("ascii", "ignore").decode()
    return f"{first} {last}", f"{addr}@{rng.choice(_DOMAINS)}"


def _addr(name: str, addr: str) -> str:
    return email.utils.formataddr((name, addr), charset="utf-8")


def make_message(
    text: TextSource,
    rng: random.Random,
    mid: str,
    folder: str,
    when: datetime,
    attachment: bool = False,
    tag: str = "",
) -> bytes:
    """One RFC 5322 message with LF line ends, as Dovecot stores it on disk."""
    sender = ME if folder in ("Sent", "Drafts") else _person(rng)
    rcpt = _person(rng) if folder in ("Sent", "Drafts") else ME
    subject = " ".join(rng.choice(_SUBJECT_WORDS) for _ in range(rng.randint(2, 7))).capitalize()
    if rng.random() < 0.08:
        subject = email.header.Header(subject + " – Überprüfung", "utf-8").encode()
    reply = rng.random() < 0.3
    if reply:
        subject = "Re: " + subject
    relay = rng.randint(1, 250)
    stamp = email.utils.format_datetime(when)
    headers = [
        f"Return-Path: <{sender[1]}>",
        f"Received: from mx{relay}.example.net (mx{relay}.example.net [192.0.2.{relay}])\n"
        f"\tby mail.bench.example (Postfix) with ESMTPS id {rng.getrandbits(40):010X}\n"
        f"\tfor <{ME[1]}>; {stamp}",
        f"Received: from [198.51.100.{relay}] by mx{relay}.example.net with ESMTPSA; {stamp}",
        f"From: {_addr(*sender)}",
        f"To: {_addr(*rcpt)}",
    ]
    if rng.random() < 0.2:
        headers.append(f"Cc: {_addr(*_person(rng))}, {_addr(*_person(rng))}")
    headers += [f"Subject: {subject}", f"Date: {stamp}", f"Message-ID: {mid}"]
    if reply:
        parent = f"<{rng.getrandbits(64):016x}@{rng.choice(_DOMAINS)}>"
        headers += [f"In-Reply-To: {parent}", f"References: {parent}"]
    if folder == "Lists/dev":
        headers += [
            "List-Id: Developers <dev.lists.example.org>",
            "List-Unsubscribe: <mailto:dev-unsubscribe@lists.example.org>",
            "Precedence: list",
        ]
    if rng.random() < 0.5:
        headers.append(f"X-Mailer: {rng.choice(_MAILERS)}")
    headers.append("MIME-Version: 1.0")

    size = int(rng.lognormvariate(math.log(MEDIAN_BODY), BODY_SIGMA))
    size = max(200, min(size, 250_000))
    plain = (f"[{tag}]\n" if tag else "") + text.body(rng, size, quote=reply)
    if attachment:
        boundary = f"=-=bench-{rng.getrandbits(48):012x}=-="
        raw = rng.randbytes(rng.randint(*ATTACHMENT_RANGE) * 3 // 4)
        b64 = base64.encodebytes(raw).decode("ascii")
        kind, name = rng.choice((("application/pdf", "report.pdf"), ("image/jpeg", "photo.jpg")))
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        body = (
            "This is a multi-part message in MIME format.\n\n"
            f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n"
            f"Content-Transfer-Encoding: 8bit\n\n{plain}\n"
            f"--{boundary}\nContent-Type: {kind}; name={name}\n"
            f"Content-Disposition: attachment; filename={name}\n"
            f"Content-Transfer-Encoding: base64\n\n{b64}\n--{boundary}--\n"
        )
    elif rng.random() < 0.2:
        boundary = f"=-=alt-{rng.getrandbits(48):012x}=-="
        html = "".join(f"<p>{p}</p>\n" for p in plain.split("\n\n") if p.strip())
        headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        body = (
            f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n"
            f"Content-Transfer-Encoding: 8bit\n\n{plain}\n"
            f"--{boundary}\nContent-Type: text/html; charset=utf-8\n"
            f"Content-Transfer-Encoding: 8bit\n\n<html><body>\n{html}</body></html>\n"
            f"--{boundary}--\n"
        )
    else:
        headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
        body = plain
    return ("\n".join(headers) + "\n\n" + body).encode("utf-8")


def _flags_for(rng: random.Random, folder: str) -> str:
    if folder == "Drafts":
        return "D" if rng.random() < 0.7 else "DS"
    if folder == "Sent":
        return "S"
    letters = set()
    if rng.random() < 0.70 or folder in ("Archive", "Trash"):
        letters.add("S")
        if folder in ("INBOX", "Archive", "Work") and rng.random() < 0.12:
            letters.add("R")
    if folder != "Junk" and rng.random() < 0.03:
        letters.add("F")
    return "".join(sorted(letters))


def _folder_counts(n: int) -> list[tuple[str, int]]:
    counts = [(f, int(n * share)) for f, share in FOLDERS]
    rest = n - sum(c for _, c in counts)
    return [(f, c + (rest if f == "INBOX" else 0)) for f, c in counts]


def message_id_for(rng: random.Random, index: int, when: datetime, prefix: str = "m") -> str:
    return (
        f"<{when:%Y%m%d%H%M%S}.{prefix}{index:07d}.{rng.getrandbits(32):08x}"
        f"@{rng.choice(_DOMAINS)}>"
    )


def dovecot_filename(index: int, when: datetime, data: bytes, letters: str) -> str:
    """Dovecot's own maildir naming, with S= (file size) and W= (size with CRLF), which
    Dovecot then trusts instead of reading every file to learn the sizes."""
    ts = int(when.timestamp())
    vsize = len(data) + data.count(b"\n")
    return f"{ts}.M{index % 1000000}P{index}Q0.bench,S={len(data)},W={vsize}:2,{letters}"


def _generate(dest: Path, n: int, seed: int, log: bool = True) -> Corpus:
    rng = random.Random(seed)
    text = TextSource(rng)
    maildir = dest / "Maildir"
    messages: list[Message] = []
    total = 0
    index = 0
    started = time.monotonic()
    for folder, count in _folder_counts(n):
        fdir = dovecot_dir(maildir, folder)
        for sub in ("cur", "new", "tmp"):
            (fdir / sub).mkdir(parents=True, exist_ok=True)
        if folder != "INBOX":
            (fdir / "maildirfolder").touch()
        for i in range(count):
            when = START + SPAN * ((i + rng.random()) / count)
            when = when.astimezone(timezone(timedelta(hours=rng.choice((-8, -5, 0, 1, 2, 9)))))
            mid = message_id_for(rng, index, when)
            letters = _flags_for(rng, folder)
            data = make_message(text, rng, mid, folder, when, rng.random() < ATTACHMENT_SHARE)
            name = dovecot_filename(index, when, data, letters)
            path = fdir / "cur" / name
            path.write_bytes(data)
            ts = when.timestamp()
            os.utime(path, (ts, ts))
            messages.append(Message(folder, mid, letters, path.relative_to(maildir).as_posix()))
            total += len(data)
            index += 1
            if log and index % 10000 == 0:
                print(f"  corpus: {index}/{n} messages ({time.monotonic() - started:.0f}s)")
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "messages": n,
        "bytes": total,
        "items": [[m.folder, m.mid, m.flags, m.path] for m in messages],
    }
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return Corpus(dest, seed, messages, total)


def _load(root: Path, n: int, seed: int) -> Corpus | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if (
        manifest.get("generator_version") != GENERATOR_VERSION
        or manifest.get("seed") != seed
        or manifest.get("messages") != n
    ):
        return None
    messages = [Message(*item) for item in manifest["items"]]
    return Corpus(root, seed, messages, int(manifest["bytes"]))


def ensure_corpus(root: Path, n: int, seed: int) -> tuple[Corpus, bool]:
    """The cached corpus at `root`, generated first if missing or stale.
    Returns (corpus, whether it was generated now)."""
    found = _load(root, n, seed)
    if found is not None:
        return found, False
    if root.exists():
        print(f"  corpus: {root} is stale or incomplete; regenerating")
        shutil.rmtree(root)
    partial = root.with_name(root.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    corpus = _generate(partial, n, seed)
    partial.rename(root)  # the manifest is inside: a cache dir is complete or absent
    corpus.root = root
    return corpus, True


def install_for_user(corpus: Corpus, user_maildir: Path) -> None:
    """A real (not hard-linked) copy of the corpus as one server user's mail, owned by
    dovecot. `cp -a` keeps the mtimes, which Dovecot uses as INTERNALDATE."""
    user_maildir.parent.mkdir(parents=True, exist_ok=True)
    if user_maildir.exists():
        shutil.rmtree(user_maildir)
    subprocess.run(["cp", "-a", str(corpus.maildir), str(user_maildir)], check=True)
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "dovecot:dovecot", str(user_maildir.parent)], check=True)


def iter_new_messages(
    corpus: Corpus, tag: str, count: int, folder: str = "INBOX"
) -> Iterator[tuple[str, bytes, datetime]]:
    """`count` fresh messages for a batch: the same bytes for every tool and every run
    with the same seed and tag. Yields (Message-ID, LF bytes, date)."""
    rng = random.Random(f"{corpus.seed}-{tag}")
    text = TextSource(random.Random(corpus.seed), lines=2000)
    base = START + SPAN + timedelta(days=1)
    for i in range(count):
        when = base + timedelta(minutes=7 * i)
        mid = message_id_for(rng, i, when, prefix=tag)
        yield mid, make_message(text, rng, mid, folder, when, tag=f"{tag} {i}"), when
