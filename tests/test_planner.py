"""The planner, from tables: each row a situation and the actions it must produce."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorsync.flags import SYNCED_FLAGS, merge
from mirrorsync.model import LocalMessage, Pair
from mirrorsync.sync import actions as act
from mirrorsync.sync.plan import (
    Match,
    flag_change,
    guard_violation,
    plan_folders,
    plan_messages,
)

S, F, R, T = "\\Seen", "\\Flagged", "\\Answered", "\\Deleted"


def fl(*names: str) -> frozenset[str]:
    return frozenset(names)


def lm(key: str, *flags: str) -> LocalMessage:
    return LocalMessage(key, fl(*flags), "cur", f"{key}:2,")


def pair(uid: int, key: str, *flags: str) -> Pair:
    return Pair(uid, key, "h", fl(*flags), fl(*flags))


@pytest.mark.parametrize(
    ("base", "local", "remote", "result", "add", "remove", "to_local"),
    [
        # nothing changed
        ((S,), (S,), (S,), (S,), (), (), None),
        # local change reaches the server
        ((), (S,), (), (S,), (S,), (), None),
        ((S, F), (S,), (S, F), (S,), (), (F,), None),
        # server change reaches the file
        ((), (), (S,), (S,), (), (), (S,)),
        ((S,), (S,), (), (), (), (), ()),
        # both sides changed different flags: combined
        ((S,), (S, F), (), (F,), (F,), (), (F,)),
        ((), (R,), (S,), (R, S), (R,), (), (R, S)),
        # both made the same change: nothing to change on either side
        ((), (F,), (F,), (F,), (), (), None),
        # one side adds T (deleted flag) - carried like any flag
        ((S,), (S, T), (S,), (S, T), (T,), (), None),
    ],
)
def test_flag_change(base, local, remote, result, add, remove, to_local) -> None:  # type: ignore[no-untyped-def]
    change = flag_change(pair(1, "k", *base), fl(*remote), fl(*local))
    assert change.result == fl(*result)
    assert change.remote_add == fl(*add)
    assert change.remote_remove == fl(*remove)
    assert change.local == (None if to_local is None else fl(*to_local))


flagsets = st.frozensets(st.sampled_from(sorted(SYNCED_FLAGS)))


@given(flagsets, flagsets, flagsets)
def test_flag_change_is_the_three_way_merge(base, local, remote) -> None:  # type: ignore[no-untyped-def]
    change = flag_change(Pair(1, "k", "h", base, base), remote, local)
    assert change.result == merge(base, local, remote)
    # Both sides end with the result.
    assert (remote | change.remote_add) - change.remote_remove == change.result
    assert (change.local if change.local is not None else local) == change.result


@pytest.mark.parametrize(
    ("pairs", "remote", "local", "expected"),
    [
        # in sync: no actions
        ([pair(1, "a", S)], {1: fl(S)}, [lm("a", S)], []),
        # new on the server: download
        ([], {7: fl(F)}, [], [act.Download(7, fl(F))]),
        # new locally: upload
        ([], {}, [lm("n", S)], [act.Upload("n", fl(S))]),
        # expunged on the server: delete the file
        ([pair(1, "a")], {}, [lm("a")], [act.DeleteLocal(1, "a")]),
        # deleted locally: expunge that UID
        ([pair(1, "a")], {1: fl()}, [], [act.DeleteRemote(1, "a")]),
        # gone on both sides: forget
        ([pair(1, "a")], {}, [], [act.Forget(1, "a")]),
        # deleted locally while flagged on the server: the deletion wins
        ([pair(1, "a")], {1: fl(F)}, [], [act.DeleteRemote(1, "a")]),
        # a flag change on each side
        (
            [pair(1, "a", S)],
            {1: fl(S, F)},
            [lm("a")],
            [act.UpdateFlags(1, "a", act.FlagChange(fl(F), fl(), fl(S), fl(F)))],
        ),
        # the same flag set on both sides since the last sync (or a run killed after
        # changing both, before recording it): nothing to change, but the pair learns
        # the new flags, or a later removal of F on one side would be undone
        (
            [pair(1, "a")],
            {1: fl(F)},
            [lm("a", F)],
            [act.UpdateFlags(1, "a", act.FlagChange(fl(F)))],
        ),
        # a pair whose two bases differ (a moved one): brought to what both sides hold
        (
            [Pair(1, "a", "h", fl(S), fl())],
            {1: fl(S)},
            [lm("a", S)],
            [act.UpdateFlags(1, "a", act.FlagChange(fl(S)))],
        ),
    ],
)
def test_plan_messages(pairs, remote, local, expected) -> None:  # type: ignore[no-untyped-def]
    assert plan_messages(pairs, remote, {m.key: m for m in local}) == expected


def test_matches_link_instead_of_copying_and_keep_every_flag() -> None:
    plan = plan_messages(
        [],
        {5: fl(S), 6: fl()},
        {"a": lm("a", F), "b": lm("b")},
        [Match(5, "a", "hash-a")],
    )
    assert plan == [
        act.Link(5, "a", "hash-a", act.FlagChange(fl(S, F), fl(F), fl(), fl(S, F))),
        act.Download(6, fl()),
        act.Upload("b", fl()),
    ]


def test_a_match_is_used_once_and_never_for_paired_messages() -> None:
    plan = plan_messages(
        [pair(1, "a")],
        {1: fl(), 2: fl(), 3: fl()},
        {"a": lm("a"), "b": lm("b")},
        [Match(1, "b", "h"), Match(2, "b", "h"), Match(3, "b", "h")],
    )
    links = [a for a in plan if isinstance(a, act.Link)]
    assert [(a.uid, a.key) for a in links] == [(2, "b")]
    assert act.Download(3, fl()) in plan
    assert not any(isinstance(a, act.Upload) for a in plan)


@pytest.mark.parametrize(
    ("known", "local", "remote", "counts", "expected"),
    [
        # on both sides
        ({"A"}, {"A"}, {"A"}, {}, [act.SyncFolder("A")]),
        # new on the server / locally
        (set(), set(), {"A"}, {}, [act.CreateLocalFolder("A"), act.SyncFolder("A")]),
        (set(), {"A"}, set(), {}, [act.CreateRemoteFolder("A"), act.SyncFolder("A")]),
        # deleted locally, empty on the server: delete it there
        ({"A"}, set(), {"A"}, {"A": 0}, [act.DeleteRemoteFolder("A"), act.ForgetFolder("A")]),
        # deleted on the server, empty locally
        ({"A"}, {"A"}, set(), {"A": 0}, [act.DeleteLocalFolder("A"), act.ForgetFolder("A")]),
        # gone on both
        ({"A"}, set(), set(), {}, [act.ForgetFolder("A")]),
        # children are deleted before their parents
        (
            {"A", "A/B"},
            set(),
            {"A", "A/B"},
            {"A": 0, "A/B": 0},
            [
                act.DeleteRemoteFolder("A/B"),
                act.ForgetFolder("A/B"),
                act.DeleteRemoteFolder("A"),
                act.ForgetFolder("A"),
            ],
        ),
    ],
)
def test_plan_folders(known, local, remote, counts, expected) -> None:  # type: ignore[no-untyped-def]
    assert plan_folders(known, local, remote, counts) == expected


def test_vanished_local_folder_with_server_mail_is_resynced_not_deleted() -> None:
    out = plan_folders({"A"}, set(), {"A"}, {"A": 12})
    assert [type(a) for a in out] == [act.ResetFolder, act.CreateLocalFolder, act.SyncFolder]
    assert "12" in out[0].reason  # type: ignore[union-attr]


def test_vanished_server_folder_with_local_mail_is_uploaded_again() -> None:
    out = plan_folders({"A"}, {"A"}, set(), {"A": 3})
    assert [type(a) for a in out] == [act.ResetFolder, act.CreateRemoteFolder, act.SyncFolder]


def test_inbox_is_never_deleted_on_the_server() -> None:
    out = plan_folders({"INBOX"}, set(), {"INBOX"}, {"INBOX": 0})
    assert not any(isinstance(a, act.DeleteRemoteFolder) for a in out)


def test_folder_deletions_run_children_first() -> None:
    out = plan_folders({"A", "A/B"}, set(), {"A", "A/B"}, {"A": 0, "A/B": 0})
    deletes = [a.name for a in out if isinstance(a, act.DeleteRemoteFolder)]
    assert deletes == ["A/B", "A"]


@pytest.mark.parametrize(
    ("deletes", "known", "share", "minimum", "trips"),
    [
        (10, 10, 0.5, 5, True),  # an emptied folder
        (5, 10, 0.5, 5, False),  # exactly half is not more than half
        (6, 10, 0.5, 5, True),
        (4, 4, 0.5, 5, False),  # below the minimum: small folders may be emptied
        (0, 0, 0.5, 5, False),
        (100, 1000, 0.05, 5, True),
    ],
)
def test_guard(deletes, known, share, minimum, trips) -> None:  # type: ignore[no-untyped-def]
    plan = [act.DeleteRemote(i, f"k{i}") for i in range(deletes)]
    why = guard_violation(plan, known, share, minimum)
    assert (why is not None) == trips
    if trips:
        assert "--force" in why and f"{deletes} of {known}" in why  # type: ignore[operator]


def test_guard_counts_local_deletions_too() -> None:
    plan = [act.DeleteLocal(i, f"k{i}") for i in range(8)]
    why = guard_violation(plan, 8, 0.5, 5)
    assert why is not None and "locally" in why


def view(pairs=(), remote=None, local=(), local_hashes=None, remote_hashes=None, loose=None):  # type: ignore[no-untyped-def]
    from mirrorsync.sync.plan import FolderView

    return FolderView(
        list(pairs),
        remote or {},
        {m.key: m for m in local},
        local_hashes or {},
        remote_hashes or {},
        loose or {},
    )


def hpair(uid: int, key: str, h: str, *flags: str) -> Pair:
    return Pair(uid, key, h, fl(*flags), fl(*flags))


def test_a_local_rename_between_folders_is_a_server_move() -> None:
    from mirrorsync.sync.plan import plan_moves

    views = {
        "INBOX": view([hpair(5, "k", "H", S)], {5: fl(S)}, []),
        "Archive": view([], {}, [lm("k", S)]),
    }
    assert plan_moves(views) == [act.MoveOnServer("INBOX", 5, "Archive", "k", "H", fl(S))]


def test_a_copy_then_delete_is_recognised_by_content() -> None:
    from mirrorsync.sync.plan import plan_moves

    views = {
        "INBOX": view([hpair(5, "old", "H")], {5: fl()}, []),
        "Archive": view([], {}, [lm("new")], local_hashes={"new": "H"}),
    }
    assert plan_moves(views) == [act.MoveOnServer("INBOX", 5, "Archive", "new", "H", fl())]


def test_a_mutt_save_with_added_fields_is_a_move_that_takes_the_servers_bytes() -> None:
    from mirrorsync.sync.plan import plan_moves

    # The saved copy's exact hash is its own; without mutt's fields it is the state's.
    views = {
        "INBOX": view([hpair(5, "old", "H", S)], {5: fl(S)}, []),
        "Archive": view([], {}, [lm("new", S)], local_hashes={"new": "M"}, loose={"new": "H"}),
    }
    assert plan_moves(views) == [
        act.MoveOnServer("INBOX", 5, "Archive", "new", "H", fl(S), replace=True)
    ]


def test_an_exact_copy_is_preferred_to_one_with_added_fields() -> None:
    from mirrorsync.sync.plan import plan_moves

    views = {
        "INBOX": view([hpair(5, "old", "H")], {5: fl()}, []),
        "A": view([], {}, [lm("saved")], local_hashes={"saved": "M"}, loose={"saved": "H"}),
        "B": view([], {}, [lm("copy")], local_hashes={"copy": "H"}),
    }
    assert plan_moves(views) == [act.MoveOnServer("INBOX", 5, "B", "copy", "H", fl())]


def test_a_file_that_is_exactly_one_lost_message_is_not_taken_loosely_by_another() -> None:
    """Two lost messages, X (hash H1) and X with a Status field (hash H2, the server
    had it), and one new file byte for byte the second: it is the second's move, even
    though the first comes first and equals it apart from the field."""
    from mirrorsync.sync.plan import plan_moves

    views = {
        "INBOX": view([hpair(5, "a", "H1"), hpair(6, "b", "H2")], {5: fl(), 6: fl()}, []),
        "Archive": view([], {}, [lm("f")], local_hashes={"f": "H2"}, loose={"f": "H1"}),
    }
    assert plan_moves(views) == [act.MoveOnServer("INBOX", 6, "Archive", "f", "H2", fl())]


@pytest.mark.parametrize(
    "loose",
    [
        {"saved": "OTHER"},  # different content apart from the fields: a new message
        {},  # no tracking fields: its exact hash already said "different"
    ],
)
def test_a_copy_that_differs_beyond_tracking_fields_is_no_move(loose: dict[str, str]) -> None:
    from mirrorsync.sync.plan import plan_moves

    views = {
        "INBOX": view([hpair(5, "old", "H")], {5: fl()}, []),
        "Archive": view([], {}, [lm("saved")], local_hashes={"saved": "M"}, loose=loose),
    }
    assert plan_moves(views) == []


def test_a_loose_match_links_and_takes_the_servers_bytes() -> None:
    plan = plan_messages([], {7: fl(S)}, {"k": lm("k")}, [Match(7, "k", "H", replace=True)])
    assert plan == [act.Link(7, "k", "H", act.FlagChange(fl(S), fl(), fl(), fl(S)), replace=True)]


def test_a_server_move_becomes_a_local_rename() -> None:
    from mirrorsync.sync.plan import plan_moves

    views = {
        "INBOX": view([hpair(5, "k", "H")], {}, [lm("k")]),
        "Archive": view([], {9: fl(S)}, [], remote_hashes={9: "H"}),
    }
    assert plan_moves(views) == [act.MoveLocally("INBOX", "k", 5, "Archive", 9, "H")]


@pytest.mark.parametrize(
    "views",
    [
        # different content is no move
        {
            "INBOX": view([hpair(5, "old", "H")], {5: fl()}, []),
            "Archive": view([], {}, [lm("new")], local_hashes={"new": "OTHER"}),
        },
        # gone and new within one folder is a deletion and an upload, not a move
        {"INBOX": view([hpair(5, "old", "H")], {5: fl()}, [lm("new")], local_hashes={"new": "H"})},
        # deleted on both sides: nothing to move
        {
            "INBOX": view([hpair(5, "k", "H")], {}, []),
            "Archive": view([], {}, [lm("k")]),
        },
    ],
)
def test_no_move(views) -> None:  # type: ignore[no-untyped-def]
    from mirrorsync.sync.plan import plan_moves

    assert plan_moves(views) == []


def test_one_source_feeds_one_move_only() -> None:
    from mirrorsync.sync.plan import plan_moves

    views = {
        "A": view([hpair(5, "old", "H")], {5: fl()}, []),
        "B": view([], {}, [lm("x")], local_hashes={"x": "H"}),
        "C": view([], {}, [lm("y")], local_hashes={"y": "H"}),
    }
    moves = plan_moves(views)
    assert len(moves) == 1 and moves[0].dst == "B"  # type: ignore[union-attr]


def test_a_move_into_a_local_only_folder_frees_the_server() -> None:
    from mirrorsync.sync.plan import plan_moves

    views = {"INBOX": view([hpair(5, "k", "H"), hpair(6, "j", "J")], {5: fl(), 6: fl()}, [])}
    archives = {"Archive": {"k": "H", "copy": "J"}}
    assert plan_moves(views, archives) == [
        act.FreeOnServer("INBOX", 5, "k", "Archive"),
        act.FreeOnServer("INBOX", 6, "copy", "Archive"),
    ]


def test_a_mutt_save_into_a_local_only_folder_frees_the_server_exact_copies_first() -> None:
    from mirrorsync.sync.plan import plan_moves

    # 5's content (H) was saved with mutt's fields (the file "s", exact hash M); 6's
    # (H6) is both there exactly ("x") and loosely ("y"): the exact one is its proof.
    views = {"INBOX": view([hpair(5, "a", "H"), hpair(6, "b", "H6")], {5: fl(), 6: fl()}, [])}
    archives = {"Archive": {"s": "M", "x": "H6", "y": "M2"}}
    loose = {"Archive": {"s": "H", "y": "H6"}}
    assert plan_moves(views, archives, loose) == [
        act.FreeOnServer("INBOX", 5, "s", "Archive"),
        act.FreeOnServer("INBOX", 6, "x", "Archive"),
    ]
    # Without the loose hashes the save is no proof: the file is not the message.
    assert plan_moves(views, archives) == [act.FreeOnServer("INBOX", 6, "x", "Archive")]


def test_a_local_only_file_with_other_content_frees_nothing() -> None:
    from mirrorsync.sync.plan import plan_moves

    views = {"INBOX": view([hpair(5, "k", "H")], {5: fl()}, [])}
    assert plan_moves(views, {"Archive": {"k": "CHANGED"}}) == []


@pytest.mark.parametrize(
    ("mode", "pairs", "remote", "local", "expected"),
    [
        # pull: a local flag change is not pushed, the server's flags come back
        (
            "pull",
            [pair(1, "a", S)],
            {1: fl(S)},
            [lm("a", S, F)],
            [act.UpdateFlags(1, "a", act.FlagChange(fl(S), local=fl(S)))],
        ),
        # pull: a local deletion is downloaded again
        ("pull", [pair(1, "a")], {1: fl(S)}, [], [act.Download(1, fl(S))]),
        # pull: a new local file stays local
        ("pull", [], {}, [lm("n")], []),
        # pull: a server expunge deletes the file
        ("pull", [pair(1, "a")], {}, [lm("a")], [act.DeleteLocal(1, "a")]),
        # backup: a server expunge keeps the file
        ("backup", [pair(1, "a")], {}, [lm("a")], [act.Release(1, "a")]),
        # backup: new server mail still comes down
        ("backup", [], {3: fl()}, [], [act.Download(3, fl())]),
    ],
)
def test_one_way_modes(mode, pairs, remote, local, expected) -> None:  # type: ignore[no-untyped-def]
    assert plan_messages(pairs, remote, {m.key: m for m in local}, mode=mode) == expected


# -- folding carried-out moves into the folders' inputs (apply_moves)


def sides(pairs=(), remote=None, local=(), moved_in=()):  # type: ignore[no-untyped-def]
    from mirrorsync.sync.plan import Sides

    return Sides(list(pairs), remote or {}, {m.key: m for m in local}, frozenset(moved_in))


def test_a_server_move_puts_the_pair_and_server_flags_in_the_new_folder() -> None:
    from mirrorsync.sync.plan import Moved, apply_moves

    before = {
        "INBOX": sides([hpair(5, "k", "H", S)], {5: fl(S, F)}, []),
        "Archive": sides([], {}, [lm("k", S)]),
        "Other": sides([hpair(1, "o", "O")], {1: fl()}, [lm("o")]),
    }
    move = act.MoveOnServer("INBOX", 5, "Archive", "k", "H", fl(S))
    new = hpair(9, "k", "H", S)
    after = apply_moves(before, [Moved(move, new)])
    assert set(after) == {"INBOX", "Archive"}  # an untouched folder is not copied
    assert after["INBOX"] == sides([], {}, [])
    assert after["Archive"] == sides([new], {9: fl(S, F)}, [lm("k", S)], moved_in=[9])
    assert before["INBOX"].pairs and 5 in before["INBOX"].remote  # the inputs unchanged


def test_a_server_move_without_a_new_uid_leaves_the_file_to_content_matching() -> None:
    from mirrorsync.sync.plan import Moved, apply_moves

    before = {
        "INBOX": sides([hpair(5, "k", "H")], {5: fl()}, []),
        "Archive": sides([], {}, [lm("k"), lm("other")]),
    }
    after = apply_moves(before, [Moved(act.MoveOnServer("INBOX", 5, "Archive", "k", "H", fl()))])
    assert after["Archive"].local.keys() == {"other"} and after["Archive"].pending_match
    assert not after["Archive"].pairs and not after["INBOX"].pending_match


def test_a_local_rename_moves_the_file_and_the_pair() -> None:
    from mirrorsync.sync.plan import Moved, apply_moves

    before = {
        "INBOX": sides([hpair(5, "k", "H", S)], {}, [lm("k", S)]),
        "Archive": sides([], {7: fl(S)}, []),
    }
    moved = LocalMessage("k", fl(S), "cur", "k:2,S")
    new = hpair(7, "k", "H", S)
    after = apply_moves(
        before, [Moved(act.MoveLocally("INBOX", "k", 5, "Archive", 7, "H"), new, moved)]
    )
    assert after["INBOX"] == sides([], {}, [])
    assert after["Archive"] == sides([new], {7: fl(S)}, [moved], moved_in=[7])


def test_a_message_freed_on_the_server_leaves_only_its_folder() -> None:
    from mirrorsync.sync.plan import Moved, apply_moves

    before = {"INBOX": sides([hpair(5, "k", "H"), hpair(6, "j", "J")], {5: fl(), 6: fl()}, [])}
    after = apply_moves(before, [Moved(act.FreeOnServer("INBOX", 5, "k", "Saved"))])
    assert after == {"INBOX": sides([hpair(6, "j", "J")], {6: fl()}, [])}


def test_moves_allowed_by_mode_only_between_mirror_folders() -> None:
    from mirrorsync.sync.plan import plan_moves

    views = {
        "INBOX": view([hpair(5, "k", "H", S)], {5: fl(S)}, []),
        "Archive": view([], {}, [lm("k", S)]),
    }
    both = {"INBOX": "mirror", "Archive": "mirror"}
    assert len(plan_moves(views, modes=both)) == 1
    assert plan_moves(views, modes={**both, "Archive": "pull"}) == []
