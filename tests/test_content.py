"""Line endings, hashing and Message-ID extraction, from tables."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorsync.content import (
    LfWriter,
    content_hash,
    crlf_size,
    loose_hash,
    message_id,
    strip_tracking,
    to_crlf,
    to_lf,
)


@pytest.mark.parametrize(
    ("raw", "lf"),
    [
        (b"a\r\nb\r\n", b"a\nb\n"),
        (b"a\nb", b"a\nb"),
        (b"a\rb", b"a\rb"),  # a bare CR is content, not a line end
        (b"", b""),
    ],
)
def test_to_lf(raw: bytes, lf: bytes) -> None:
    assert to_lf(raw) == lf


def test_upload_form_round_trips_and_size_matches_the_server() -> None:
    lf = b"Subject: x\n\nbody\n"
    assert to_crlf(lf) == b"Subject: x\r\n\r\nbody\r\n"
    assert to_lf(to_crlf(lf)) == lf
    assert crlf_size(lf) == len(to_crlf(lf))


@pytest.mark.parametrize(
    ("data", "mid"),
    [
        (b"Message-ID: <a@b>\r\n\r\nx", "<a@b>"),
        (b"message-id:   <a@b>  \n\n", "<a@b>"),
        (b"Message-ID:\n <folded@b>\n\nbody", "<folded@b>"),
        (b"Subject: x\n\nMessage-ID: <in-body@b>\n", None),
        (b"Subject: x\n\n", None),
    ],
)
def test_message_id(data: bytes, mid: str | None) -> None:
    assert message_id(data) == mid


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20))
def test_lf_writer_equals_to_lf_whatever_the_chunking(data: bytes, cuts: list[int]) -> None:
    out = io.BytesIO()
    w = LfWriter(out)
    pos = 0
    for n in cuts:
        w.write(data[pos : pos + n])
        pos += n
    w.write(data[pos:])
    w.close()
    assert out.getvalue() == to_lf(data)
    assert w.hexdigest() == content_hash(to_lf(data))


def test_lf_writer_cr_lf_split_across_chunks() -> None:
    out = io.BytesIO()
    w = LfWriter(out)
    w.write(b"a\r")
    w.write(b"\nb\r")
    w.close()
    assert out.getvalue() == b"a\nb\r"


@pytest.mark.parametrize(
    ("data", "stripped"),
    [
        # mbsync: one X-TUID line at the end of the header block
        (b"Subject: x\nX-TUID: abcdefghijkl\n\nbody\n", b"Subject: x\n\nbody\n"),
        # mutt's save: Status/X-Status/Content-Length/Lines, any case, anywhere
        (
            b"Status: RO\nSubject: x\nx-status: A\nContent-Length: 5\nLINES: 1\n\nbody\n",
            b"Subject: x\n\nbody\n",
        ),
        # offlineimap's upload marker, folded over two lines
        (b"X-OfflineIMAP: 123-\n 456\nTo: y\n\nb", b"To: y\n\nb"),
        (b"Lines : 3\nTo: y\n\nb", b"To: y\n\nb"),  # obsolete space before the colon
        # the fold of a kept field is kept; a message without a body
        (b"To: y\n z\nStatus: O\n", b"To: y\n z\n"),
        (b"To: y\nStatus: O", b"To: y"),
        # nothing to strip: None, so no second hash is computed
        (b"Subject: x\n\nStatus: RO\nLines: 3\n", None),  # in the body: content
        (b"\nStatus: RO\n", None),  # an empty header block: all of it is body
        (b"Subject: x\rStatus: RO\n\nb", None),  # a bare CR is no line end
        (b"X-TUIDs: 1\nX-Status-Line: 2\nMy-Lines: 3\n\nb", None),  # other names
        (b"Subject: x\n Status: RO\n\nb", None),  # a fold of Subject, not a field
        (b"X-Keywords: work\nX-Mozilla-Status: 0001\n\nb", None),  # user data: kept
        (b"", None),
    ],
)
def test_strip_tracking(data: bytes, stripped: bytes | None) -> None:
    assert strip_tracking(data) == stripped
    expected = None if stripped is None else content_hash(stripped)
    assert loose_hash(data) == expected


def test_the_same_message_with_different_tracking_fields_hashes_loosely_the_same() -> None:
    server = b"From: a\nSubject: x\nMessage-ID: <m@x>\n\nbody\n"
    mbsync = b"From: a\nSubject: x\nMessage-ID: <m@x>\nX-TUID: 0123456789ab\n\nbody\n"
    mutt = b"From: a\nSubject: x\nMessage-ID: <m@x>\nStatus: RO\nContent-Length: 5\n\nbody\n"
    assert loose_hash(server) is None
    assert loose_hash(mbsync) == loose_hash(mutt) == content_hash(server)
    other = b"From: a\nSubject: y\nMessage-ID: <m@x>\nX-TUID: 0123456789ab\n\nbody\n"
    assert loose_hash(other) != content_hash(server)


_NAMES = ["Subject", "X-TUID", "Status", "Lines", "To", "X-Keywords", "content-length", "X"]


@given(
    st.lists(
        st.tuples(st.sampled_from(_NAMES), st.text("ab :\t", max_size=8), st.booleans()),
        max_size=8,
    ),
    st.binary(max_size=40),
)
def test_strip_tracking_drops_only_tracking_fields_and_never_the_body(
    fields: list[tuple[str, str, bool]], body: bytes
) -> None:
    lines = []
    for name, value, folded in fields:
        lines.append(f"{name}: {value}".encode())
        if folded:
            lines.append(f"\t{value}".encode())
    head = b"\n".join(lines) + b"\n" if lines else b"Subject: -\n"
    data = head + b"\n" + body
    stripped = strip_tracking(data)
    kept = b"".join(
        f"{n}: {v}\n".encode() + (f"\t{v}\n".encode() if f else b"")
        for n, v, f in fields
        if n.lower() not in {"x-tuid", "status", "lines", "content-length"}
    )
    if stripped is None:
        assert kept == head or not lines
    else:
        assert stripped == kept + b"\n" + body  # the body, byte for byte
        assert strip_tracking(stripped) is None  # nothing left to strip
