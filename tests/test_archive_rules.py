"""Archive rules from tables: ages, sizes, cutoffs and the SEARCH they become."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from dateutil.relativedelta import relativedelta

from mirrorsync.archive_rules import (
    cutoff,
    describe,
    format_size,
    imap_date,
    imap_search_criteria,
    parse_age,
    parse_size,
)
from mirrorsync.config import ArchiveRule

NOW = datetime(2026, 8, 31, 15, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1y", relativedelta(years=1)),
        ("6m", relativedelta(months=6)),
        ("30d", relativedelta(days=30)),
        ("2w", relativedelta(weeks=2)),
        ("12h", relativedelta(hours=12)),
        ("18M", relativedelta(months=18)),  # units in any case
        (" 3 days ", relativedelta(days=3)),
        ("1year", relativedelta(years=1)),
        ("2024-01-31", datetime(2024, 1, 31)),
        (
            "2024-01-31T08:00:00+02:00",
            datetime(2024, 1, 31, 8, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("20240131", datetime(2024, 1, 31)),
    ],
)
def test_parse_age(text: str, expected: object) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "cannot read"),
        ("1", "cannot read"),  # a bare number: a unit is needed
        ("1x", "unknown unit 'x'"),
        ("0d", "no age at all"),
        ("-1d", "cannot read"),
        ("1.5y", "cannot read"),
        ("yesterday", "cannot read"),
        ("Jan", "cannot read"),  # the lenient parser would take this year's January
        ("2024-13-01", "cannot read"),
    ],
)
def test_parse_age_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_age(text)
    assert fragment in str(info.value)
    assert "such as 1y" in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5M", 5 * 1024**2),
        ("200K", 200 * 1024),
        ("1G", 1024**3),
        ("1.5M", 1572864),
        ("0.5k", 512),
        ("2048", 2048),
        ("10MB", 10 * 1024**2),
        ("10MiB", 10 * 1024**2),
        ("3 m", 3 * 1024**2),
        (" 7B ", 7),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "M", "5T", "-5M", "five", "1e6", "5iB", -1, True])
def test_parse_size_errors(value: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize(
    ("older_than", "expected"),
    [
        (None, None),
        ("1y", datetime(2025, 8, 31, 15, 30, tzinfo=timezone.utc)),
        # calendar months: six months before 31 August is the end of February
        ("6m", datetime(2026, 2, 28, 15, 30, tzinfo=timezone.utc)),
        ("2w", datetime(2026, 8, 17, 15, 30, tzinfo=timezone.utc)),
        ("12h", datetime(2026, 8, 31, 3, 30, tzinfo=timezone.utc)),
        # a date without a zone is taken in now's
        ("2024-01-31", datetime(2024, 1, 31, tzinfo=timezone.utc)),
    ],
)
def test_cutoff(older_than: str | None, expected: datetime | None) -> None:
    rule = ArchiveRule("INBOX", older_than=older_than, larger_than=None if older_than else 1)
    assert cutoff(rule, NOW) == expected


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            ArchiveRule("INBOX", older_than="1y"),
            ["BEFORE", "31-Aug-2025", "UNFLAGGED", "SEEN", "NOT", "DELETED"],
        ),
        (
            ArchiveRule("INBOX", larger_than=5 * 1024**2, keep_flagged=False),
            ["LARGER", "5242880", "SEEN", "NOT", "DELETED"],
        ),
        (
            ArchiveRule(
                "*", older_than="2024-01-05", larger_than=100, keep_flagged=False, keep_unread=False
            ),
            ["BEFORE", "5-Jan-2024", "LARGER", "100", "NOT", "DELETED"],
        ),
        (
            ArchiveRule("INBOX", older_than="6m", keep_unread=False),
            ["BEFORE", "28-Feb-2026", "UNFLAGGED", "NOT", "DELETED"],
        ),
    ],
)
def test_imap_search_criteria(rule: ArchiveRule, expected: list[str]) -> None:
    assert imap_search_criteria(rule, NOW) == expected


@pytest.mark.parametrize(
    ("day", "text"),
    [(date(2024, 1, 1), "1-Jan-2024"), (date(1999, 12, 31), "31-Dec-1999")],
)
def test_imap_date(day: date, text: str) -> None:
    assert imap_date(day) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (5 * 1024**2 + 1, "5.0 MiB"),
        (3 * 1024**4, "3.0 TiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def test_describe() -> None:
    rule = ArchiveRule("Lists/*", older_than="1y", larger_than=1024**2, keep_unread=False)
    assert describe(rule) == (
        "folder Lists/*, older than 1y, larger than 1.0 MiB, keeping flagged, to Archive/<folder>"
    )
    dated = ArchiveRule("INBOX", older_than="2024-01-31", to="Old")
    assert "received before 2024-01-31" in describe(dated) and "to Old" in describe(dated)
