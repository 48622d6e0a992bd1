"""Copies between the sides: downloads and uploads in bounded batches, each batch
recorded in the state only once it is on disk or on the server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from mirrorsync import flags as flagmod
from mirrorsync.errors import (
    ConnectionFailed,
    LocalStoreError,
    MirrorsyncError,
    ServerError,
)
from mirrorsync.maildir import (
    MaildirFolder,
    PendingDelivery,
)
from mirrorsync.model import Flags, LocalMessage, Pair
from mirrorsync.sync.base import FolderReport, SyncBase

if TYPE_CHECKING:
    from mirrorsync.content import LfWriter
    from mirrorsync.sync import actions as act

log = logging.getLogger(__name__)

DOWNLOAD_BATCH = 500  # messages per group commit (files fsynced together, one txn)
DOWNLOAD_BATCH_BYTES = 8 * 1024 * 1024  # bounds memory: a batch is held until it is fsynced
LARGE_MESSAGE = 8 * 1024 * 1024  # streamed to disk in chunks, never held whole
UPLOAD_BATCH = 50  # files per append_many and per group commit
UPLOAD_BATCH_BYTES = 8 * 1024 * 1024  # bounds memory: a batch is held until it is sent
NOT_UPLOADED = "not uploaded"
T = TypeVar("T")
_Upload = tuple[LocalMessage, str, bytes, datetime | None]  # file, hash, CRLF bytes, date


class Transfers(SyncBase):
    def _download(
        self,
        name: str,
        mfolder: MaildirFolder,
        items: list[act.Download],
        sizes: dict[int, int],
        rep: FolderReport,
    ) -> None:
        """Download new server messages in batches (see `batched`); a message bigger
        than LARGE_MESSAGE is streamed to disk alone."""
        if not items:
            return
        unknown = [a.uid for a in items if a.uid not in sizes]
        if unknown:
            sizes = {**sizes, **{u: i.size for u, i in self.remote.identities(unknown).items()}}
        small = [a.uid for a in items if sizes.get(a.uid, 0) <= LARGE_MESSAGE]
        self.reporter.begin("download", len(items), sum(sizes.get(a.uid, 0) for a in items))
        self._download_small(name, mfolder, small, rep)
        flags_of = {a.uid: a.flags for a in items}
        for uid in (a.uid for a in items if sizes.get(a.uid, 0) > LARGE_MESSAGE):
            self._download_large(name, mfolder, uid, sizes[uid], flags_of[uid], rep)

    def _download_small(
        self, name: str, mfolder: MaildirFolder, uids: list[int], rep: FolderReport
    ) -> None:
        """One batch is on its way to disk while the next is fetched: the I/O threads
        write and fsync it meanwhile, and its pairs are recorded only once it is
        placed, so a kill at any point leaves no pair without its file. When the
        server misanswers some message (see RemoteStore.fetch), what it answered
        right is stored before the folder fails."""
        from mirrorsync.content import content_hash, to_lf

        failed: list[ServerError] = []

        def fetched() -> Iterator[tuple[int, str, bytes, Flags, float | None]]:
            try:
                for uid, data, flags, date in self.remote.fetch(uids):
                    lf = to_lf(data)
                    self.reporter.advance(1, len(lf))
                    yield uid, mfolder.new_key(), lf, flagmod.normalize(flags), _ts(date)
            except ServerError as e:
                failed.append(e)

        pending: tuple[PendingDelivery, list[Pair]] | None = None
        try:
            for batch in batched(
                fetched(), lambda m: len(m[2]), DOWNLOAD_BATCH, DOWNLOAD_BATCH_BYTES
            ):
                delivery = mfolder.deliver_start(
                    [(k, data, fl, mt) for _u, k, data, fl, mt in batch]
                )
                try:
                    pairs = [Pair(u, k, content_hash(d), fl, fl) for u, k, d, fl, _ in batch]
                    done, pending = pending, None
                    self._placed(name, done, rep)
                except BaseException:
                    delivery.abandon()
                    raise
                pending = delivery, pairs
            done, pending = pending, None
            self._placed(name, done, rep)
        except BaseException:
            if pending is not None:
                pending[0].abandon()
            raise
        if failed:
            raise failed[0]

    def _placed(
        self, name: str, done: tuple[PendingDelivery, list[Pair]] | None, rep: FolderReport
    ) -> None:
        """Wait for a batch to be on disk, then record its pairs."""
        if done is None:
            return
        delivery, pairs = done
        delivery.finish()
        with self.state.transaction():
            self.state.put_pairs(name, pairs)
        rep.counts["downloaded"] += len(pairs)

    def _download_large(
        self,
        name: str,
        mfolder: MaildirFolder,
        uid: int,
        size: int,
        flags: Flags,
        rep: FolderReport,
    ) -> None:
        """Stream one big message to disk in chunks, so memory stays bounded."""
        from mirrorsync.content import LfWriter

        writer: LfWriter | None = None
        found = True

        def write(f: BinaryIO) -> None:
            nonlocal writer, found
            writer = LfWriter(f)
            found = self.remote.fetch_to_file(uid, size, writer)
            writer.close()

        key = mfolder.new_key()
        msg = mfolder.deliver_stream(key, write, flags)
        if not found or writer is None:
            mfolder.remove(msg)  # vanished meanwhile: nothing to keep
            return
        with self.state.transaction():
            self.state.put_pairs(name, [Pair(uid, key, writer.hexdigest(), flags, flags)])
        rep.counts["downloaded"] += 1
        self.reporter.advance(1, size)

    def _upload(
        self, name: str, mfolder: MaildirFolder, items: list[LocalMessage], rep: FolderReport
    ) -> int:
        """Upload new local messages; returns how many got no UID (left for matching).

        Files are read in batches (see `batched`), each sent with one `append_many`
        (one MULTIAPPEND command where the server has it) and its pairs recorded in
        one transaction. A kill before that commit leaves the folder `needs_match`,
        so the next run links the uploads by content instead of sending them again."""
        unresolved = 0
        if items:
            self.reporter.begin("upload", len(items), None)
        for batch in batched(
            _readable(mfolder, items), lambda u: len(u[2]), UPLOAD_BATCH, UPLOAD_BATCH_BYTES
        ):
            unresolved += self._send(name, mfolder, batch, rep)
        return unresolved

    def _send(
        self, name: str, mfolder: MaildirFolder, batch: list[_Upload], rep: FolderReport
    ) -> int:
        """Send one batch and record its pairs; how many uploads have no known UID."""
        from mirrorsync.stored import adopt_server_copies

        done, unresolved = self._append(name, mfolder, batch, rep)
        # The server may have stored something else than was sent (see `stored`):
        # then the file takes the server's bytes before the pair is recorded.
        # A failed check still records the uploads (as sent): a changed copy left to
        # the next run's match by content would be missed and uploaded again.
        sent = [(lm, digest, data, uid) for (lm, digest, data, _), uid in done if uid]
        adopted: dict[int, str] = {}
        unchecked: MirrorsyncError | None = None
        try:
            if sent:
                self._select(name)
            adopted = adopt_server_copies(self.remote, name, mfolder, sent)
        except (ServerError, ConnectionFailed) as e:
            unchecked = e
        pairs = []
        for (lm, digest, _, _), uid in done:
            if uid is None:
                unresolved += 1
                log.warning(
                    "%s: the server did not tell the UID of an upload; it will be "
                    "matched by content on the next run",
                    name,
                )
                continue
            pairs.append(Pair(uid, lm.key, adopted.get(uid, digest), lm.flags, lm.flags))
        if pairs:
            with self.state.transaction():
                self.state.put_pairs(name, pairs)
            rep.counts["uploaded"] += len(pairs)
        self.reporter.advance(len(done), sum(len(data) for (_, _, data, _), _ in done))
        if unchecked is not None:
            raise unchecked
        return unresolved

    def _append(
        self, name: str, mfolder: MaildirFolder, batch: list[_Upload], rep: FolderReport
    ) -> tuple[list[tuple[_Upload, int | None]], int]:
        """APPEND the batch; each upload with its UID (None: not told), and how many
        were refused. One bad file must not block the rest: it is named, kept, and
        the others go on. A refused MULTIAPPEND stores none of its messages (RFC
        3502), so they are sent again one by one; a message refused alone is named."""
        from mirrorsync.errors import AppendRefused

        done: list[tuple[_Upload, int | None]] = []
        refused = 0
        queue = batch[:]
        while queue:
            messages = [(data, lm.flags, date) for lm, _, data, date in queue]
            try:
                uids = self.remote.append_many(name, messages)
            except ServerError as e:
                ok = e.uids if isinstance(e, AppendRefused) else []
                held = max(1, e.refused if isinstance(e, AppendRefused) else len(queue))
                done += zip(queue, ok, strict=False)
                again, queue = queue[len(ok) : len(ok) + held], queue[len(ok) + held :]
                if len(again) == 1:
                    refused += _refused(name, mfolder, again[0], e, rep)
                    continue
                log.debug("%s: %d uploads refused together (%s)", name, len(again), e)
                for entry in again:
                    lm, _, data, date = entry
                    try:
                        done.append((entry, self.remote.append(name, data, lm.flags, date)))
                    except ServerError as e1:
                        refused += _refused(name, mfolder, entry, e1, rep)
                continue
            done += zip(queue, uids, strict=True)
            break
        return done, refused


def _ts(date: datetime | None) -> float | None:
    return date.timestamp() if date else None


def batched(
    items: Iterable[T], size: Callable[[T], int], count: int, limit: int
) -> Iterator[list[T]]:
    """`items` in batches of at most `count` and (a bigger item alone) `limit` bytes:
    memory stays bounded, as each batch is held until it is on disk or sent."""
    batch: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if batch and total + n > limit:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
        if len(batch) >= count or total >= limit:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _readable(mfolder: MaildirFolder, items: list[LocalMessage]) -> Iterator[_Upload]:
    """Each file to upload, read: its hash, its bytes as CRLF, and its date. A file
    that vanished between scan and read has nothing to upload."""
    from mirrorsync.content import content_hash, to_crlf, to_lf

    for lm in items:
        try:
            lf = to_lf(mfolder.read(lm))
            mtime: float | None = mfolder.path_of(lm).stat().st_mtime
        except (LocalStoreError, OSError):
            continue
        date = datetime.fromtimestamp(mtime, timezone.utc) if mtime else None
        yield lm, content_hash(lf), to_crlf(lf), date


def _refused(
    name: str, mfolder: MaildirFolder, entry: _Upload, e: ServerError, rep: FolderReport
) -> int:
    """Name an upload the server refused; it counts as unresolved: the error may have
    come after the server stored it (without UIDPLUS the UID is looked for after
    the APPEND, and that look can fail), so the folder stays matched by content
    next run, and a stored copy is linked, never sent a second time."""
    log.warning("%s: could not upload %s: %s", name, mfolder.path_of(entry[0]), e)
    rep.counts[NOT_UPLOADED] += 1
    return 1
