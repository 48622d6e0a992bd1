"""What the mirrors should hold, and the batches of changes between syncs.

`Expected` starts as the corpus and follows every batch. A batch is planned once from
`Expected` with its own seeded random generator over the sorted (folder, Message-ID)
pairs, so every tool's server user or Maildir gets exactly the same changes: 1% of the
messages change flags (\\Seen toggled, \\Flagged toggled for about a third), 0.1% are
deleted, and 20 new messages arrive in INBOX.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.corpus import Corpus, iter_new_messages
from bench.mail import imap_of_letters, managed, to_crlf, with_letters
from bench.sides import Side, chunks, local_side, server_folder

FLAG_SHARE = 0.01
DELETE_SHARE = 0.001
NEW_MESSAGES = 20


@dataclass
class Expected:
    corpus: Corpus
    folders: dict[str, dict[str, str]]  # folder -> Message-ID -> letters
    _extra: dict[str, bytes] = field(default_factory=dict)  # bytes of batch messages
    _paths: dict[str, str] = field(default_factory=dict)  # corpus message -> file

    @classmethod
    def of(cls, corpus: Corpus) -> Expected:
        folders: dict[str, dict[str, str]] = {f: {} for f in corpus.folders}
        for m in corpus.messages:
            folders[m.folder][m.mid] = m.flags
        return cls(corpus, folders, {}, {m.mid: m.path for m in corpus.messages})

    def content(self, mid: str) -> bytes:
        if mid in self._extra:
            return self._extra[mid]
        return (self.corpus.maildir / self._paths[mid]).read_bytes()

    def pairs(self) -> list[tuple[str, str]]:
        return sorted((f, mid) for f, msgs in self.folders.items() for mid in msgs)

    def total(self) -> int:
        return sum(len(m) for m in self.folders.values())

    def apply(self, batch: Batch) -> None:
        for (folder, mid), letters in batch.flags.items():
            self.folders[folder][mid] = letters
        for folder, mid in batch.deletions:
            del self.folders[folder][mid]
        for mid, data, _when, letters in batch.new:
            self.folders[batch.new_folder][mid] = letters
            self._extra[mid] = data


@dataclass
class Batch:
    tag: str
    flags: dict[tuple[str, str], str]  # (folder, Message-ID) -> new letters
    deletions: list[tuple[str, str]]
    new: list[tuple[str, bytes, datetime, str]]  # Message-ID, LF bytes, date, letters
    new_folder: str = "INBOX"

    def summary(self) -> str:
        return (
            f"{len(self.flags)} flag changes, {len(self.deletions)} deletions, "
            f"{len(self.new)} new in {self.new_folder}"
        )


def plan_batch(expected: Expected, tag: str, remote: bool) -> Batch:
    """The batch named `tag`. New messages from the server side carry some \\Seen
    flags; new local files are plain deliveries (new/, no flags)."""
    corpus = expected.corpus
    rng = random.Random(f"{corpus.seed}-{tag}")
    n = len(corpus.messages)
    k_flags = max(1, round(n * FLAG_SHARE))
    k_delete = max(1, round(n * DELETE_SHARE))
    chosen = rng.sample(expected.pairs(), k_flags + k_delete)
    flags: dict[tuple[str, str], str] = {}
    for folder, mid in chosen[:k_flags]:
        letters = set(expected.folders[folder][mid])
        letters ^= {"S"}
        if rng.random() < 0.35:
            letters ^= {"F"}
        flags[(folder, mid)] = "".join(sorted(letters))
    new = [
        (mid, data, when, "S" if remote and i % 4 == 0 else "")
        for i, (mid, data, when) in enumerate(iter_new_messages(corpus, tag, NEW_MESSAGES))
    ]
    return Batch(tag, flags, sorted(chosen[k_flags:]), new)


def apply_remote(client: Any, batch: Batch) -> list[str]:
    """Make the batch's changes on one server user, as another mail client would.
    Returns problems (messages that were not where they should be)."""
    problems: list[str] = []
    touched = sorted({f for f, _ in batch.flags} | {f for f, _ in batch.deletions})
    for folder in touched:
        index = server_folder(client, folder)
        client.select_folder(folder)
        by_change: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
        for (f, mid), letters in batch.flags.items():
            if f != folder:
                continue
            copies = index.get(mid)
            if not copies:
                problems.append(f"server lacks {folder} {mid} (flag change)")
                continue
            for entry in copies:
                old = managed(entry.letters)
                add = tuple(imap_of_letters("".join(set(letters) - set(old))))
                remove = tuple(imap_of_letters("".join(set(old) - set(letters))))
                by_change.setdefault((add, remove), []).append(entry.where)
        for (add, remove), uids in sorted(by_change.items()):
            for chunk in chunks(uids):
                if add:
                    client.add_flags(chunk, list(add), silent=True)
                if remove:
                    client.remove_flags(chunk, list(remove), silent=True)
        gone: list[int] = []
        for f, mid in batch.deletions:
            if f != folder:
                continue
            copies = index.get(mid)
            if not copies:
                problems.append(f"server lacks {folder} {mid} (deletion)")
            gone += [e.where for e in copies or []]
        for chunk in chunks(gone):
            client.delete_messages(chunk, silent=True)
            client.uid_expunge(chunk)
    for _mid, data, when, letters in batch.new:
        client.append(batch.new_folder, to_crlf(data), imap_of_letters(letters), msg_time=when)
    return problems


def apply_local(maildir: Path, batch: Batch, folder_dir: Path) -> list[str]:
    """Make the batch's changes in one tool's Maildir as a mail reader would: rename to
    change the info letters (moving new/ to cur/), unlink, and deliver new files into
    INBOX/new. Each file keeps its tool's own naming."""
    problems: list[str] = []
    side: Side = local_side(maildir)
    for (folder, mid), letters in sorted(batch.flags.items()):
        copies = side.folders.get(folder, {}).get(mid)
        if not copies:
            problems.append(f"Maildir lacks {folder} {mid} (flag change)")
            continue
        for entry in copies:
            path: Path = entry.where
            os.rename(path, path.parent.parent / "cur" / with_letters(path.name, letters))
    for folder, mid in batch.deletions:
        copies = side.folders.get(folder, {}).get(mid)
        if not copies:
            problems.append(f"Maildir lacks {folder} {mid} (deletion)")
        for entry in copies or []:
            entry.where.unlink()
    new_dir = folder_dir / "new"
    tmp_dir = folder_dir / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    for i, (_mid, data, when, _letters) in enumerate(batch.new):
        ts = int(when.timestamp())
        name = f"{ts}.M{i:06d}P1Q{i}.bench-{batch.tag}"
        tmp = tmp_dir / name
        tmp.write_bytes(data)
        os.utime(tmp, (ts, ts))
        os.rename(tmp, new_dir / name)
    return problems


BIG_MESSAGE_BYTES = 30 * 1024 * 1024


def plan_big(tag: str = "big") -> Batch:
    """One 30 MB message (a large attachment, base64 as mail carries it) arriving in
    INBOX: the phase that shows memory stays bounded whatever a message's size."""
    rng = random.Random(f"{tag}-30MB")
    line = b"".join(
        bytes([65 + rng.randrange(26)]) for _ in range(76)
    )  # one deterministic base64-looking line, repeated
    head = (
        f"From: Big Sender <big@example.org>\nTo: bench@example.org\nSubject: a 30 MB attachment\n"
        f"Message-ID: <{tag}-30mb@bench.example>\nDate: Mon, 02 Nov 2026 10:00:00 +0000\n"
        "MIME-Version: 1.0\nContent-Type: application/octet-stream\n"
        "Content-Transfer-Encoding: base64\n\n"
    ).encode()
    body = (line + b"\n") * (BIG_MESSAGE_BYTES // 77)
    when = datetime(2026, 11, 2, 10, 0, 0)
    return Batch(tag, {}, [], [(f"<{tag}-30mb@bench.example>", head + body, when, "S")])
