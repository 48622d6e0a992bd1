"""APPEND: one message, or many in MULTIAPPEND commands, with the new UIDs from
APPENDUID or, without UIDPLUS, found among the arrivals by Message-ID and size."""

from __future__ import annotations

import imaplib
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from mirrorsync.content import message_id
from mirrorsync.errors import (
    ServerError,
)
from mirrorsync.imap.base import (
    flag_args,
)
from mirrorsync.imap.messages import Messages
from mirrorsync.imap.parse import (
    LINE_END_RE,
    append_crlf,
    appended_uids,
    as_bytes,
    text_of,
)
from mirrorsync.model import (
    Flags,
)
from mirrorsync.remote import append_each, append_refused, batches

log = logging.getLogger(__name__)


class Appending(Messages):
    def append(
        self, name: str, data: bytes, flags: Flags, date: datetime | None = None
    ) -> int | None:
        """With UIDPLUS the UID comes from ``[APPENDUID v uid]``. Without it: UIDNEXT
        is read (STATUS) before the APPEND, and afterwards the messages with UIDs from
        that UIDNEXT on are examined; the one whose Message-ID and RFC822.SIZE match
        `data` is ours (the highest such UID if another client appended the same
        message meanwhile). If none matches, None. Looking costs an EXAMINE of the
        folder and a re-SELECT of the previously selected one, unless it is the
        selected folder."""
        server = self._server_name(name)
        flag_list = flag_args(flags, "append to", name, self._address)
        with self._translate("append to", name):
            if "UIDPLUS" in self._capabilities:
                response = self._client.append(server, data, flag_list, date)
                (uid,) = appended_uids(as_bytes(response), 1)
                return uid
            before = int(self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"])
            self._client.append(server, data, flag_list, date)
            return self._find_appended(name, server, before, [data])[0]

    def append_many(
        self, name: str, items: Sequence[tuple[bytes, Flags, datetime | None]]
    ) -> list[int | None]:
        """With MULTIAPPEND: one ``APPEND name (flags) "date" {n+}... (flags) "date"
        {n+}...`` per `append_batch_count` messages or `append_batch_bytes` bytes,
        whichever comes first (a bigger message goes alone). The UIDs come from the
        ``[APPENDUID v uid-set]`` of each command (all None for a command whose set
        does not have one UID per message: the caller then matches by content), or,
        without UIDPLUS, as `append` finds one: UIDNEXT before the command, then one
        look at the arrivals for the whole command. Without MULTIAPPEND: `append`
        for each message.

        With MULTIAPPEND every flag name is checked before the first command is sent,
        and each message sent as imaplib's APPEND sends one (bare CR or LF as CRLF),
        so both ways store the same bytes."""
        if not items:
            return []
        if "MULTIAPPEND" not in self._capabilities:
            return append_each(self.append, name, items)
        out: list[int | None] = []
        server = self._server_name(name)
        prepared = [
            (append_crlf(data), flag_args(flags, "append to", name, self._address), date)
            for data, flags, date in items
        ]
        sizes = {i: len(data) for i, (data, _flags, _date) in enumerate(prepared)}
        for indexes in batches(
            list(range(len(prepared))), sizes, self.append_batch_count, self.append_batch_bytes
        ):
            out += self._append_batch(name, server, [prepared[i] for i in indexes], out)
        return out

    def _append_batch(
        self,
        name: str,
        server: str,
        batch: list[tuple[bytes, list[str], datetime | None]],
        done: list[int | None],
    ) -> list[int | None]:
        """One MULTIAPPEND command of `batch`: the new UIDs (see `append_many`);
        `done`, the UIDs of the commands before, goes into a refusal's error."""
        uidplus = "UIDPLUS" in self._capabilities
        before = 0
        try:
            with self._translate("append to", name):
                if not uidplus:
                    before = int(self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"])
                typ, answer = self._client.send_append(
                    server, batch, "LITERAL+" in self._capabilities
                )
                text = as_bytes(answer[0]) if answer and answer[0] else typ.encode()
                if typ != "OK":
                    raise imaplib.IMAP4.error(text_of(text))
        except ServerError as exc:
            raise append_refused(exc, done, len(batch)) from exc
        if uidplus:
            return appended_uids(text, len(batch))
        # stored: a failure to find them now must not read as a refusal
        try:
            with self._translate("look for the messages appended to", name):
                return self._find_appended(name, server, before, [d for d, _f, _t in batch])
        except ServerError as exc:
            log.warning("%s; they will be matched by content on the next run", exc)
            return [None] * len(batch)

    def _find_appended(
        self, name: str, server: str, uidnext: int, datas: Sequence[bytes]
    ) -> list[int | None]:
        """The UIDs of `datas`, just appended (in this order) to `name` whose UIDNEXT
        was `uidnext` before: among the arrivals, those with a message's Message-ID
        and RFC822.SIZE. When more arrived than we sent (another client appended the
        same message meanwhile) ours are the highest, in order; when fewer (expunged
        already), those messages get None, since which is which cannot be told."""
        keys = [(message_id(data), len(LINE_END_RE.sub(b"\r\n", data))) for data in datas]
        pools: dict[tuple[str | None, int], list[int]] = {}
        for uid, ident in sorted(self._arrivals(name, server, uidnext).items()):
            pools.setdefault((ident.message_id, ident.size), []).append(uid)
        ours: dict[tuple[str | None, int], list[int]] = {}
        for key, count in Counter(keys).items():
            pool = pools.get(key, [])
            if len(pool) > count:
                log.debug("append to %r: %d candidates for %d new UID(s)", name, len(pool), count)
            ours[key] = pool[len(pool) - count :] if len(pool) >= count else []
        return [ours[key].pop(0) if ours[key] else None for key in keys]
