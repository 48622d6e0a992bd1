"""A Maildir folder as one run knows it, answering "what is in this folder" and
"where is this message" itself, so that no consumer asks how it was learned."""

from __future__ import annotations

from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)

from mirrorsync.maildir import MaildirFolder, MessageVanished
from mirrorsync.model import LocalMessage

Located = Callable[[MaildirFolder, Mapping[str, LocalMessage]], None]


class LocalView(MutableMapping[str, LocalMessage]):
    """Key -> file of the folder's messages this run plans with.

    A folder whose directories changed was listed, and knows where each file is. One
    that did not holds its messages as the state recorded them (key and flags, no file
    name, `cur/` assumed), and finds a file only when asked: under its likely names
    first, then by one listing, as `mailbox.Maildir` refreshes its table of contents
    only on a miss. A listing never adds messages to the view: the other files would
    have no pair loaded and look new (and be uploaded again)."""

    def __init__(
        self,
        mfolder: MaildirFolder,
        messages: dict[str, LocalMessage],
        listed: bool,
        located: Located | None = None,
    ) -> None:
        self._mfolder = mfolder
        self._messages = messages
        self._listed = listed
        # Tests only: the plan oracle checks what was found by likely names.
        self._located = located

    @property
    def listed(self) -> bool:
        """Whether the folder was listed this run (for tests of the fast paths)."""
        return self._listed

    def holding(self, messages: dict[str, LocalMessage]) -> LocalView:
        """The same folder, learned the same way, holding `messages` instead."""
        return LocalView(self._mfolder, messages, self._listed, self._located)

    def file(self, key: str) -> LocalMessage:
        """Where the file of `key` is now; MessageVanished if it is nowhere. A listing
        made to find it also tells where the view's other files are, so a folder is
        listed once however many of its messages are looked for."""
        msg = self._messages[key]
        if self._listed or msg.filename:
            return msg
        found = self._mfolder.locate(key, msg.flags)
        if found is None:
            listed = self._mfolder.scan()
            for k in self._messages.keys() & listed.keys():
                self._messages[k] = listed[k]
            found = listed.get(key)
            if found is None:
                raise MessageVanished(self._mfolder.path_of(msg), "find")
        self._messages[key] = found
        return found

    def files(self, keys: Iterable[str]) -> Mapping[str, LocalMessage]:
        """The files of `keys` (those still there) where they are now: the whole view
        of a listed folder; else each where it was found this run (a moved-in file) or
        under its likely name, or, failing one, from one listing."""
        if self._listed:
            return self
        wanted = list(keys)
        found: dict[str, LocalMessage] = {}
        for key in wanted:
            msg = self._messages.get(key)
            if msg is not None and not msg.filename:
                msg = self._mfolder.locate(key, msg.flags)
            if msg is None:
                listed = self._mfolder.scan()
                return {k: listed[k] for k in wanted if k in listed}
            found[key] = msg
        if self._located is not None:
            self._located(self._mfolder, found)
        return found

    # -- the mapping, by the dict underneath (large folders are iterated often)

    def __getitem__(self, key: str) -> LocalMessage:
        return self._messages[key]

    def __setitem__(self, key: str, msg: LocalMessage) -> None:
        self._messages[key] = msg

    def __delitem__(self, key: str) -> None:
        del self._messages[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._messages)

    def __len__(self) -> int:
        return len(self._messages)

    def __contains__(self, key: object) -> bool:
        return key in self._messages

    def get(self, key: str, default: LocalMessage | None = None) -> LocalMessage | None:  # type: ignore[override]
        return self._messages.get(key, default)

    def keys(self) -> KeysView[str]:
        return self._messages.keys()

    def items(self) -> ItemsView[str, LocalMessage]:
        return self._messages.items()

    def values(self) -> ValuesView[LocalMessage]:
        return self._messages.values()
