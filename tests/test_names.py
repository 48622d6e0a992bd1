"""Canonical folder names <-> server names, as properties over arbitrary names: every
name the server can hold maps back to itself, and every server name that has a
canonical name is the one that maps to it (or the next sync would make a second)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mirrorsync.names import canonical_folder, server_spelling, server_to_canonical

_CHARS = st.sampled_from(list("ab./%I N BOXinbox-é"))
_COMPONENT = st.text(_CHARS, min_size=0, max_size=6)
_NAMING = st.sampled_from([("/", ""), (".", ""), (None, ""), (".", "INBOX."), ("/", "INBOX/")])


@settings(max_examples=1000, deadline=None)
@given(parts=st.lists(_COMPONENT, min_size=1, max_size=3), naming=_NAMING)
def test_canonical_names_round_trip(parts: list[str], naming: tuple[str | None, str]) -> None:
    delimiter, prefix = naming
    name = canonical_folder("/".join(parts))
    try:
        server = server_spelling(name, delimiter, prefix)
    except ValueError:
        return  # refused: kept local (or failed alone), never created under another name
    assert server_to_canonical(server, delimiter, prefix) == name


@settings(max_examples=1000, deadline=None)
@given(server=st.text(_CHARS, max_size=12), naming=_NAMING)
def test_server_names_round_trip(server: str, naming: tuple[str | None, str]) -> None:
    delimiter, prefix = naming
    name = server_to_canonical(server, delimiter, prefix)
    if name is None:
        return  # skipped with a warning
    back = server_spelling(name, delimiter, prefix)
    if server.upper() == "INBOX":
        assert back == "INBOX"
        return
    # INBOX is case-insensitive (RFC 3501 5.1), also as the first level of a name
    head = "INBOX" + (delimiter or "")

    def folded(n: str) -> str:
        return head + n[len(head) :] if delimiter and n[: len(head)].upper() == head else n

    assert folded(back) == folded(server)
