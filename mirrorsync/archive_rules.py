"""Archive rules as the server understands them: ages, sizes, SEARCH criteria.

Pure functions, table-tested in tests/test_archive_rules.py. The config keeps a rule's
`older_than` as written, because "1y" means a different day every time the rule runs;
`cutoff` turns it into a moment given "now", and `imap_search_criteria` into the UID
SEARCH that finds the messages on the server, so the server (not a listing of every
message) does the selecting.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import TYPE_CHECKING

from dateutil import parser as dateparser
from dateutil.relativedelta import relativedelta

if TYPE_CHECKING:
    from mirrorsync.config import ArchiveRule

_AGE_RE = re.compile(r"(\d+)\s*([a-z]+)", re.IGNORECASE)
_AGE_UNITS = {
    **dict.fromkeys(("y", "year", "years"), "years"),
    **dict.fromkeys(("m", "month", "months"), "months"),
    **dict.fromkeys(("w", "week", "weeks"), "weeks"),
    **dict.fromkeys(("d", "day", "days"), "days"),
    **dict.fromkeys(("h", "hour", "hours"), "hours"),
}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([kmg]?)(i?b)?", re.IGNORECASE)
# Binary units, as mail clients and `du -h` show sizes.
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# RFC 3501 date-month: English, whatever the locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

AGE_HINT = "expected an age such as 1y, 6m, 30d, 2w, 12h or a date such as 2024-01-31"
SIZE_HINT = "expected a size such as 5M, 200K, 1.5G or a number of bytes"


def parse_age(text: str) -> relativedelta | datetime:
    """ "6m" -> relativedelta(months=6) (calendar months: 6m before 31 August is 28 or
    29 February, not "180 days"); "2024-01-31" -> that date at midnight (naive: taken
    in the local time zone by `cutoff`). Raises ValueError with a readable message."""
    value = text.strip()
    m = _AGE_RE.fullmatch(value)
    if m:
        count, unit = int(m.group(1)), m.group(2).lower()
        if unit not in _AGE_UNITS:
            raise ValueError(f"unknown unit {m.group(2)!r} in {text!r}; {AGE_HINT}")
        if count == 0:
            raise ValueError(f"{text!r} is no age at all; {AGE_HINT}")
        return _delta(_AGE_UNITS[unit], count)
    try:
        # isoparse, not parse: the lenient parser reads "5" as the 5th of this month
        # and "Jan" as this year's January, which is not what a typo should mean here.
        return dateparser.isoparse(value)
    except (ValueError, OverflowError):
        raise ValueError(f"cannot read {text!r}; {AGE_HINT}") from None


def _delta(unit: str, count: int) -> relativedelta:
    if unit == "years":
        return relativedelta(years=count)
    if unit == "months":
        return relativedelta(months=count)
    if unit == "weeks":
        return relativedelta(weeks=count)
    if unit == "days":
        return relativedelta(days=count)
    return relativedelta(hours=count)


def parse_size(value: str | int) -> int:
    """ "5M" -> 5242880, "200K" -> 204800, "1.5M", "1G", "2048" or 2048 -> bytes.
    K, M and G are powers of 1024; a trailing "B" or "iB" is allowed."""
    if isinstance(value, bool):
        raise ValueError(f"{SIZE_HINT}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    m = _SIZE_RE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"cannot read {value!r}; {SIZE_HINT}")
    unit = m.group(2).lower()
    if m.group(3) and m.group(3).lower() == "ib" and not unit:
        raise ValueError(f"cannot read {value!r}; {SIZE_HINT}")
    return round(float(m.group(1)) * _SIZE_UNITS[unit])


def cutoff(rule: ArchiveRule, now: datetime) -> datetime | None:
    """The moment before which a message is old enough for `rule`, or None when the
    rule has no age. A date without a time zone is taken in `now`'s."""
    if rule.older_than is None:
        return None
    age = parse_age(rule.older_than)
    if isinstance(age, datetime):
        if age.tzinfo is None and now.tzinfo is not None:
            age = age.replace(tzinfo=now.tzinfo)
        return age
    return now - age


def imap_date(day: date) -> str:
    """RFC 3501's date for SEARCH: 31-Jan-2024."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"


def imap_search_criteria(rule: ArchiveRule, now: datetime) -> list[str]:
    """The ``UID SEARCH`` keys (all ANDed) for `rule`.

    BEFORE compares INTERNALDATE's date only (RFC 3501: time and time zone are
    disregarded), so BEFORE <the cutoff's day> finds only messages older than the
    cutoff: at most a day's worth stays on the server longer, none goes too soon.
    LARGER is RFC822.SIZE in octets. NOT DELETED leaves alone what another client
    is about to expunge anyway."""
    criteria: list[str] = []
    moment = cutoff(rule, now)
    if moment is not None:
        criteria += ["BEFORE", imap_date(moment.date())]
    if rule.larger_than is not None:
        criteria += ["LARGER", str(rule.larger_than)]
    if rule.keep_flagged:
        criteria.append("UNFLAGGED")
    if rule.keep_unread:
        criteria.append("SEEN")
    criteria += ["NOT", "DELETED"]
    return criteria


def format_size(n: int) -> str:
    """Bytes for people: 512 B, 4.0 KiB, 12.3 MiB, 1.2 GiB."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def messages(n: int) -> str:
    """ "1 message", "2 messages"."""
    return f"{n} message" if n == 1 else f"{n} messages"


def describe(rule: ArchiveRule) -> str:
    """One line for people: what a rule selects and where it puts it."""
    parts = [f"folder {rule.folder}"]
    if rule.older_than is not None:
        age = parse_age(rule.older_than)
        parts.append(
            f"received before {age.date().isoformat()}"
            if isinstance(age, datetime)
            else f"older than {rule.older_than}"
        )
    if rule.larger_than is not None:
        parts.append(f"larger than {format_size(rule.larger_than)}")
    kept = [w for w, k in (("flagged", rule.keep_flagged), ("unread", rule.keep_unread)) if k]
    if kept:
        parts.append("keeping " + " and ".join(kept))
    parts.append(f"to {rule.to}" if rule.to else "to Archive/<folder>")
    return ", ".join(parts)
