"""Other tools' folder directories (mirrorsync.adopt) and their state files
(mirrorsync.migrate's readers), without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorsync import adopt
from mirrorsync.migrate import _parse_mbsync, strip_tracking


def maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("Caf&AOk- &- Cr&AOg-me", "Café & Crème"),
        ("&ANw-ber", "Über"),
        ("plain", "plain"),
        ("a&-b", "a&b"),
        ("&foo", None),  # decodes to something, but nothing encodes to it
        ("&AOk", None),  # unterminated
        ("Café", None),  # not ASCII: not modified UTF-7
        ("&AGEAYg-", None),  # ASCII must not be encoded
    ],
)
def test_decode_mutf7_accepts_only_what_an_encoder_writes(raw: str, name: str | None) -> None:
    assert adopt.decode_mutf7(raw) == name
    if name is not None:
        assert adopt.encode_mutf7(name) == raw


def test_names_decode_component_wise() -> None:
    assert adopt.decode_name("&ANw-ber/Caf&AOk-") == "Über/Café"
    assert adopt.encode_name("Über/Café") == "&ANw-ber/Caf&AOk-"
    assert adopt.decode_name("ok/&foo") is None


def test_plan_recognises_each_layout(tmp_path: Path) -> None:
    maildir(tmp_path / "Caf&AOk-")  # nested, modified UTF-7
    maildir(tmp_path / "Archive")
    maildir(tmp_path / "Archive.2024")  # offlineimap's sep '.'
    maildir(tmp_path / "Archive" / ".Old")  # mbsync Legacy
    maildir(tmp_path / ".Lists.&ANw-ber")  # maildir++
    maildir(tmp_path / "Inbox")
    wanted = ["Café", "Archive/2024", "Archive/Old", "Lists/Über", "INBOX"]
    got = {
        a.name: (a.src.relative_to(tmp_path).as_posix(), a.dst.relative_to(tmp_path).as_posix())
        for a in adopt.plan(tmp_path, "nested", wanted, ["Archive", *wanted])
    }
    assert got == {
        "Café": ("Caf&AOk-", "Café"),
        "Archive/2024": ("Archive.2024", "Archive/2024"),
        "Archive/Old": ("Archive/.Old", "Archive/Old"),
        "Lists/Über": (".Lists.&ANw-ber", "Lists/Über"),
        "INBOX": ("Inbox", "INBOX"),
    }


def test_a_child_is_renamed_where_its_renamed_parent_took_it(tmp_path: Path) -> None:
    maildir(tmp_path / "&ANw-ber")
    maildir(tmp_path / "&ANw-ber" / "Caf&AOk-")
    plans = adopt.plan(tmp_path, "nested", ["Über", "Über/Café"], ["Über", "Über/Café"])
    assert [(a.src, a.dst) for a in plans] == [
        (tmp_path / "&ANw-ber", tmp_path / "Über"),
        (tmp_path / "Über" / "Caf&AOk-", tmp_path / "Über" / "Café"),
    ]
    adopt.apply(plans)
    assert (tmp_path / "Über" / "Café" / "cur").is_dir()
    assert not (tmp_path / "&ANw-ber").exists()


def test_a_folders_own_directory_and_ambiguous_ones_are_left_alone(tmp_path: Path) -> None:
    # "A.B" is a server folder of its own: its directory is not "A/B"'s
    maildir(tmp_path / "A.B")
    assert adopt.plan(tmp_path, "nested", ["A/B"], ["A/B", "A.B"]) == []
    # two directories could be "C/D": neither is taken
    maildir(tmp_path / "C.D")
    maildir(tmp_path / ".C.D")
    warned: list[object] = []
    assert adopt.plan(tmp_path, "nested", ["C/D"], ["C/D"], warn=lambda *a: warned.append(a)) == []
    assert len(warned) == 1


def test_an_existing_target_is_never_replaced(tmp_path: Path) -> None:
    maildir(tmp_path / "Caf&AOk-")
    maildir(tmp_path / "Café")
    assert adopt.plan(tmp_path, "nested", ["Café"], ["Café"]) == []


def test_mbsync_state_records() -> None:
    header, records = _parse_mbsync(
        "FarUidValidity 17\nNearUidValidity 42\nMaxPulledUid 9\nMaxPushedUid 3\n\n"
        "1 1 S\n2 2 \n3 0 \n0 4 F\n5 5 ^\n6 6 ~S\n7 7 FS\n"
    )
    assert header["FarUidValidity"] == "17" and header["NearUidValidity"] == "42"
    # one side missing, skipped, expired: no message both sides held
    assert records == [(1, 1, "S"), (2, 2, ""), (7, 7, "FS")]


def test_strip_tracking_takes_x_tuid_from_the_header_only() -> None:
    msg = b"From: a\nX-TUID: AbCdEf123456\nSubject: s\n\nX-TUID: in the body stays\n"
    assert strip_tracking(msg) == b"From: a\nSubject: s\n\nX-TUID: in the body stays\n"
