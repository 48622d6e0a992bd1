"""Three minutes of bench/soak.py in the suite (issue 17): `mirrorsync daemon` under two
actors (another IMAP client and a mail reader, each acting every 0.2-2 s), a SIGHUP, a
SIGUSR1 and a Dovecot restart, then every message compared with the ledger of what the
actors did. Longer runs: `python3 bench/soak.py --minutes 60` (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak

pytestmark = [pytest.mark.dovecot, pytest.mark.soak]

MINUTES = 3.0
SEED = 17  # the actors' choices are the same on every run; only timing varies
P95 = 2.0  # seconds, each way: what issue 17 asks of push


def test_soak_three_minutes(tmp_path: Path) -> None:
    result = soak.run(MINUTES, seed=SEED, base=tmp_path)
    text = soak.report(result)
    print(text)
    assert result.daemon_exit == 0, text
    # Strict: nothing lost, duplicated, brought back or left different from the ledger
    # (races between the two actors are judged leniently by the audit itself).
    assert result.lost == [], text
    assert result.duplicated == [], text
    assert result.resurrected == [], text
    assert result.diverged == [], text
    # The actors really acted, on both sides, and the latencies were measured.
    done = {k: n for k, n in result.actions.items() if "skipped" not in k and "error" not in k}
    assert sum(n for k, n in done.items() if k.startswith("server ")) > 50, text
    assert sum(n for k, n in done.items() if k.startswith("local ")) > 50, text
    for way, figures in result.latency.items():
        assert figures["n"] >= 10, text
        assert figures["p95"] < P95, f"{way}: {text}"
