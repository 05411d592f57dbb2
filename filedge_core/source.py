"""A file's bytes, read once, in bounded memory: hashed on the way, decompressed, split into
record-aligned text chunks.

The bytes loaded must be exactly the bytes that were hashed, and a file may be rewritten while
it is read. So the hash is computed over the very bytes the parser consumes, and checked when
the file's end is reached: before its last chunk is parsed, hence before the destination
transaction can commit. A mismatch is ``FileChanged``."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from .errors import DataError, FileChanged, TransientError
from .scan import Fingerprint, stat_fingerprint

MAX_RECORD_BYTES = 64 * 1024 * 1024
_READ_PIECE = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BOM = b"\xef\xbb\xbf"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Snapshot(io.RawIOBase):
    """A file's raw bytes as they are read, hashed on the way.

    Reaching the end checks the hash against ``expected`` (when given) and raises
    ``FileChanged`` if the bytes are not the ones that were claimed."""

    def __init__(
        self, handle: BinaryIO, name: str, expected: str | None = None, fingerprint: Fingerprint | None = None
    ) -> None:
        self._handle = handle
        self.name = name
        self.expected = expected
        self.fingerprint = fingerprint  # (size, mtime_ns, ctime_ns, inode) when opened
        self.opened_ns = time.time_ns()
        self._sha = hashlib.sha256()
        self._at_end = False  # the end was reached (and the hash checked): no byte may follow

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._handle.readinto(buffer)
        if n:
            if self._at_end:  # bytes after the end that was checked: the file grew
                raise FileChanged(f"{self.name}: file grew while being read")
            self._sha.update(memoryview(buffer)[:n])
        else:
            self._verify()
            self._at_end = True
        return n

    def _verify(self) -> None:
        if self.expected is not None and self._sha.hexdigest() != self.expected:
            raise FileChanged(f"{self.name}: file changed while being read (content hash differs)")

    def finish(self) -> None:
        """Read whatever is left and check the hash (``FileChanged`` if it differs)."""
        buffer = memoryview(bytearray(_READ_PIECE))
        while self.readinto(buffer):
            pass
        self._verify()

    def close(self) -> None:
        self._handle.close()
        super().close()


def open_snapshot(path: str | Path, expected: str | None) -> Snapshot:
    """Open ``path`` for one hashed pass; errors say whether the file changed or cannot be read."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 -- owned by the Snapshot
    except FileNotFoundError:
        raise FileChanged(f"{path}: file disappeared before it was read") from None
    except IsADirectoryError:
        raise FileChanged(f"{path}: is now a directory") from None
    except OSError as exc:
        raise TransientError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return Snapshot(handle, str(path), expected, stat_fingerprint(os.fstat(handle.fileno())))


def snapshot_of(data: bytes, name: str = "<bytes>") -> Snapshot:
    """In-memory bytes as a snapshot (no expected hash): for dry runs and tests."""
    return Snapshot(io.BytesIO(data), name)


class _Gzip:
    """Every gzip member, streamed; corrupt or truncated data is a ``DataError``."""

    def __init__(self, raw: BinaryIO) -> None:
        self._file = gzip.GzipFile(fileobj=raw, mode="rb")

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._file.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"corrupt gzip data: {exc}") from None


class _Zstd:
    """Every zstd frame (concatenated .zst files are one stream); a truncated frame is an error."""

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._frame: object | None = None
        self._out = bytearray()
        self._eof = False

    def _fill(self) -> None:
        data = self._raw.read(_READ_PIECE // 8)  # small input pieces bound each output piece
        if not data:
            if self._frame is not None and not self._frame.eof:  # type: ignore[attr-defined]
                raise DataError("truncated zstd data (the last frame does not end)")
            self._eof = True
            return
        try:
            while data:
                if self._frame is None or self._frame.eof:  # type: ignore[attr-defined]
                    self._frame = self._zstd.ZstdDecompressor().decompressobj()
                self._out += self._frame.decompress(data)  # type: ignore[attr-defined]
                data = self._frame.unused_data if self._frame.eof else b""  # type: ignore[attr-defined]
        except self._zstd.ZstdError as exc:
            raise DataError(f"corrupt zstd data: {exc}") from None

    def read(self, size: int = -1, /) -> bytes:
        while (size < 0 or len(self._out) < size) and not self._eof:
            self._fill()
        if size < 0 or size >= len(self._out):
            out = bytes(self._out)
            self._out.clear()
            return out
        out = bytes(self._out[:size])
        del self._out[:size]
        return out


class _View(io.RawIOBase):
    """The snapshot for a buffered reader, which closes what it wraps when it is collected:
    the snapshot must stay open until ``finish``."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._snapshot.readinto(buffer)


def plain_stream(snapshot: Snapshot) -> Readable:
    """The snapshot's content, decompressed when it starts with gzip or zstd magic bytes."""
    buffered = io.BufferedReader(_View(snapshot), _READ_PIECE)
    head = buffered.peek(4)[:4]
    if head.startswith(_GZIP_MAGIC):
        return _Gzip(buffered)  # type: ignore[arg-type]
    if head.startswith(_ZSTD_MAGIC):
        return _Zstd(buffered)  # type: ignore[arg-type]
    return buffered


@dataclass(frozen=True)
class Chunk:
    """Whole records of UTF-8 text; ``first_line`` is the 1-based line number of its first byte."""

    data: bytes
    first_line: int
    first: bool
    last: bool


def _line_of(data: bytes, offset: int, first_line: int) -> int:
    return first_line + data.count(b"\n", 0, offset)


def record_boundary(buffer: bytes | bytearray, quote: bytes | None, start: int = 0, parity: int = 0) -> int:
    """Offset just after the last newline that ends a record (outside quotes); -1 if none.

    Quote characters toggle quoting (an escaped quote is a pair), so a newline ends a record
    exactly when the quotes before it are even in number: polars splits a file the same way.
    Only newlines from ``start`` on are candidates; ``parity``: of the quotes before it (so a
    growing buffer is scanned once, not again at every read)."""
    end = len(buffer)
    position = buffer.rfind(b"\n", start)
    if quote is None or position < 0:
        return position + 1 if position >= 0 else -1
    total = parity + buffer.count(quote, start)
    after = 0
    while position >= start:
        after += buffer.count(quote, position, end)
        end = position
        if (total - after) % 2 == 0:
            return position + 1
        position = buffer.rfind(b"\n", start, position)
    return -1


def _trim_blank_tail(buffer: bytes | bytearray, cut: int) -> int:
    """Move a cut back to just after the last non-blank line: blank lines are kept with what
    follows, so that blank lines at the very end of a file (not records) are dropped whole."""
    body = cut
    while body and buffer[body - 1] in b"\r\n":
        body -= 1
    if body == 0:
        return 0  # nothing but blank lines yet: whether they end the file is not known
    newline = buffer.find(b"\n", body)
    return cut if newline < 0 else newline + 1


class TextChunks:
    """Record-aligned UTF-8 chunks of about ``batch_bytes`` from a decompressed stream.

    Handles the text encoding (``latin1`` transcoded, a UTF-8 byte order mark as ``utf8-sig``
    says), refuses binary content (NUL bytes), skips ``skip_rows`` leading lines and drops
    blank lines at the end. ``quote``: the quote byte records may contain newlines inside."""

    def __init__(
        self, stream: Readable, encoding: str, quote: bytes | None, batch_bytes: int, skip_rows: int = 0
    ) -> None:
        self.stream = stream
        self.encoding = encoding
        self.quote = quote
        self.batch_bytes = max(1, batch_bytes)
        self.skip_rows = skip_rows
        # One record may make a batch longer, up to this: past it, it is a broken file.
        self.max_record_bytes = max(8 * self.batch_bytes, MAX_RECORD_BYTES)

    def _read(self, line: int, first: bool) -> bytes:
        data = self.stream.read(max(self.batch_bytes, len(_BOM)) if first else self.batch_bytes)
        if first and data.startswith(_BOM):
            if self.encoding != "utf8-sig":
                raise DataError("the file starts with a UTF-8 byte order mark: set csv.encoding: utf8-sig")
            data = data[len(_BOM):] or self.stream.read(self.batch_bytes)
        if self.encoding == "latin1":
            data = data.decode("latin-1").encode("utf-8")
        nul = data.find(b"\x00")
        if nul >= 0:
            raise DataError(f"line {_line_of(data, nul, line)}: NUL byte: this is a binary file, not text")
        return data

    def _skip(self, pending: bytearray, line: int) -> tuple[bytearray, int, bool]:
        """Drop the first ``skip_rows`` physical lines; returns what is left, its line, and EOF."""
        for _ in range(self.skip_rows):
            newline = pending.find(b"\n")
            while newline < 0:
                more = self._read(line, False)
                if not more:
                    return bytearray(), line, True
                pending += more
                newline = pending.find(b"\n")
            del pending[: newline + 1]
            line += 1
        return pending, line, False

    def __iter__(self) -> Iterator[Chunk]:
        line = 1
        pending = bytearray(self._read(line, True))
        eof = not pending
        if self.skip_rows and not eof:
            pending, line, eof = self._skip(pending, line)
        first = True
        scanned = parity = 0  # how much of pending holds no record end, and its quotes' parity
        while True:
            while not eof and len(pending) < self.batch_bytes:
                more = self._read(line + pending.count(b"\n"), False)
                if more:
                    pending += more
                else:
                    eof = True
            if eof:
                text = bytes(pending)
                end = len(text)
                while end and text[end - 1] in b"\r\n":
                    end -= 1
                if end == 0:
                    text = b""  # only blank lines left: they end the file, they are not records
                elif text.count(b"\n", end) > 1:
                    text = text[:end] + b"\n"  # blank lines at the end are not records
                yield Chunk(text, line, first, True)
                return
            cut = record_boundary(pending, self.quote, scanned, parity)
            if cut > 0:
                cut = _trim_blank_tail(pending, cut)
            if cut <= 0:  # one record longer than a batch (or only blank lines): read on
                if len(pending) > self.max_record_bytes:
                    quoted = self.quote is not None and self.quote in pending
                    raise DataError(
                        f"line {line}: a record longer than {self.max_record_bytes >> 20} MiB "
                        + ("(is a quote never closed?)" if quoted else "(no end of line in it)")
                    )
                if self.quote is not None:
                    parity = (parity + pending.count(self.quote, scanned)) % 2
                scanned = len(pending)
                more = self._read(line + pending.count(b"\n"), False)
                if more:
                    pending += more
                else:
                    eof = True
                continue
            text = bytes(pending[:cut])
            del pending[:cut]
            scanned = parity = 0
            yield Chunk(text, line, first, False)
            line += text.count(b"\n")
            first = False
