"""Counted nouns for output people read: "1 folder", "2 folders".

A module of its own, importing nothing, because the quick check prints the same
summary line as the full path and must stay light.
"""

from __future__ import annotations


def counted(n: int, noun: str, plural: str = "") -> str:
    """`n` and the noun, singular for exactly one ("1 account", "0 accounts")."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"
