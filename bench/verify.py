"""After every timed run: do the tool's server user and its Maildir hold the same mail,
and is it the mail they should hold?

Checked against each other and against `Expected`: the folder list, the message count
per folder, the Message-IDs (none missing, none extra, none duplicated), the flags of
every message, and the content (hash of the LF form) of a deterministic sample of
about 50 messages plus the newest batch's messages.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.changes import Expected
from bench.mail import content_hash, managed
from bench.sides import Side, local_side, server_bodies, server_side

SAMPLE = 50
MAX_LINES = 8  # examples per kind of problem


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    checked_content: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, examples: list[str]) -> None:
        if not examples:
            return
        shown = examples[:MAX_LINES]
        first = f", the first {len(shown)}" if len(examples) > len(shown) else ""
        self.problems.append(f"{kind}: {len(examples)}{first}")
        self.problems += [f"    {e}" for e in shown]


def sample_pairs(expected: Expected, label: str, newest: list[str]) -> list[tuple[str, str]]:
    pairs = expected.pairs()
    rng = random.Random(f"{expected.corpus.seed}-sample-{label}")
    chosen = set(rng.sample(pairs, min(SAMPLE, len(pairs))))
    wanted = set(newest)
    chosen |= {(f, mid) for f, mid in pairs if mid in wanted}
    return sorted(chosen)


def verify(
    expected: Expected,
    client: Any,
    maildir: Path,
    label: str,
    newest: list[str],
    comparable: Callable[[bytes], bytes] = lambda data: data,
) -> Verdict:
    v = Verdict()
    server = server_side(client)
    local = local_side(maildir)
    want = expected.folders

    names = {"expected": set(want), "server": set(server.folders), "Maildir": set(local.folders)}
    for side_name in ("server", "Maildir"):
        v.add(f"folders missing on {side_name}", sorted(names["expected"] - names[side_name]))
        v.add(f"extra folders on {side_name}", sorted(names[side_name] - names["expected"]))

    counts = []
    for folder in sorted(set(want) | set(server.folders) | set(local.folders)):
        e, s, lo = len(want.get(folder, {})), server.count(folder), local.count(folder)
        if not e == s == lo:
            counts.append(f"{folder}: expected {e}, server {s}, Maildir {lo}")
    v.add("message counts differ", counts)

    for side_name, side in (("server", server), ("Maildir", local)):
        missing, extra, dups = [], [], []
        for folder in sorted(set(want) | set(side.folders)):
            have = side.folders.get(folder, {})
            should = want.get(folder, {})
            missing += [f"{folder} {mid}" for mid in sorted(set(should) - set(have))]
            extra += [f"{folder} {mid}" for mid in sorted(set(have) - set(should))]
            dups += [f"{folder} {mid} x{len(c)}" for mid, c in sorted(have.items()) if len(c) > 1]
        v.add(f"messages missing on {side_name}", missing)
        v.add(f"unexpected messages on {side_name}", extra)
        v.add(f"duplicates on {side_name}", dups)

    v.add("flags differ", _flag_problems(want, server, local))
    v.add(
        "content differs",
        _content_problems(expected, client, server, local, label, newest, comparable, v),
    )
    return v


def _flag_problems(want: dict[str, dict[str, str]], server: Side, local: Side) -> list[str]:
    out = []
    for folder, msgs in sorted(want.items()):
        for mid, letters in sorted(msgs.items()):
            s, lo = server.first(folder, mid), local.first(folder, mid)
            if s is None or lo is None:
                continue  # reported as missing
            sl, ll = managed(s.letters), managed(lo.letters)
            if not letters == sl == ll:
                out.append(f"{folder} {mid}: expected '{letters}', server '{sl}', Maildir '{ll}'")
    return out


def _content_problems(
    expected: Expected,
    client: Any,
    server: Side,
    local: Side,
    label: str,
    newest: list[str],
    comparable: Callable[[bytes], bytes],
    v: Verdict,
) -> list[str]:
    out = []
    sample = sample_pairs(expected, label, newest)
    uids: dict[str, dict[int, str]] = {}
    for folder, mid in sample:
        entry = server.first(folder, mid)
        if entry is not None:
            uids.setdefault(folder, {})[entry.where] = mid
    server_hash: dict[tuple[str, str], str] = {}
    for folder, by_uid in sorted(uids.items()):
        for uid, data in server_bodies(client, folder, sorted(by_uid)).items():
            server_hash[(folder, by_uid[uid])] = content_hash(comparable(data))
    for folder, mid in sample:
        entry = local.first(folder, mid)
        if entry is None or (folder, mid) not in server_hash:
            continue  # reported as missing
        want = content_hash(expected.content(mid))
        have_local = content_hash(comparable(Path(entry.where).read_bytes()))
        have_server = server_hash[(folder, mid)]
        v.checked_content += 1
        if not want == have_server == have_local:
            which = [n for n, h in (("server", have_server), ("Maildir", have_local)) if h != want]
            verb = "differ" if len(which) > 1 else "differs"
            out.append(f"{folder} {mid}: {' and '.join(which)} copy {verb} from the original")
    return out
