"""Line endings, hashing and Message-ID extraction, from tables."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorsync.content import LfWriter, content_hash, crlf_size, message_id, to_crlf, to_lf


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
