"""The waits of `throttle.run_patiently`: the server's suggestion, else 5 s doubled,
each at most LONGEST_WAIT, and no more than MAX_TRIES tries or MAX_WAIT in all."""

from __future__ import annotations

import pytest

from mirrorsync import throttle


def _run(answers: list[str | None], monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], str]:
    waits: list[float] = []
    monkeypatch.setattr(throttle, "sleep", waits.append)
    left = list(answers)

    def attempt() -> str:
        text = left.pop(0)
        if text is None:
            return "done"
        raise throttle.Throttled("imap.example.com:993", text)

    try:
        return waits, throttle.run_patiently(attempt, lambda _line: None, "[a]")
    except throttle.Throttled as e:
        return waits, str(e)


@pytest.mark.parametrize(
    ("answers", "waits", "outcome"),
    [
        ([None], [], "done"),
        (["Request is throttled"] * 2 + [None], [5.0, 10.0], "done"),
        (
            ["Request is throttled. Suggested Backoff Time: 2500 milliseconds", None],
            [2.5],
            "done",
        ),
        (
            ["Request is throttled. Suggested Backoff Time: 999999 milliseconds"] * 2 + [None],
            [throttle.LONGEST_WAIT] * 2,
            "done",
        ),
        (
            ["throttled"] * throttle.MAX_TRIES,
            [5.0, 10.0, 20.0, 40.0, 80.0],
            "gave up after 6 tries and 155s of waiting",
        ),
        (
            ["Suggested Backoff Time: 299000 milliseconds; throttled"] * 6,
            [299.0, 299.0, 299.0],
            "gave up after 4 tries and 897s of waiting",
        ),
    ],
)
def test_waits(
    answers: list[str | None], waits: list[float], outcome: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    got, result = _run(answers, monkeypatch)
    assert got == waits
    assert outcome in result


@pytest.mark.parametrize(
    ("text", "throttled"),
    [
        ("Request is throttled. Suggested Backoff Time: 1 milliseconds", True),
        ("[THROTTLED] slow down", True),
        ("Mailbox does not exist", False),
        ("[UNAVAILABLE] try later", False),
    ],
)
def test_is_throttled(text: str, throttled: bool) -> None:
    assert throttle.is_throttled(text) is throttled
