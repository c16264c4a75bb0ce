"""A ZIP written incrementally into an HTTP response: each member is read from the object store in
chunks, deflated (level 6, as the spec says) and handed out as soon as zipfile produces bytes, so
memory stays at one chunk plus the compressor's window whatever the size of the results.

zipfile supports unseekable output (it writes data descriptors after each member), which is what
makes this possible without building the archive in memory or in a temporary file.

The same members give the same bytes on every request (one timestamp for every entry, the order
the caller gives, fixed permissions): that is what lets a client resume a download with a Range.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

COMPRESS_LEVEL = 6
ZIP_EPOCH = datetime(1980, 1, 1, tzinfo=UTC)  # the earliest time a ZIP entry can carry


@dataclass(frozen=True)
class ZipMember:
    name: str  # path inside the archive
    size: int  # bytes before compression (picks ZIP64 for members over 2 GiB)
    chunks: Callable[[], Iterable[bytes]]  # opened only when the member is written


class _Sink:
    """The unseekable file zipfile writes to; `drain()` hands out what was written so far."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        if data:
            self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> Iterator[bytes]:
        if self._parts:
            data, self._parts = b"".join(self._parts), []
            yield data


def _entry(name: str, modified: datetime) -> zipfile.ZipInfo:
    when = max(modified.astimezone(UTC), ZIP_EPOCH)
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info._compresslevel = COMPRESS_LEVEL  # type: ignore[attr-defined]  # what ZipFile.open(name) sets
    info.external_attr = 0o644 << 16  # rw-r--r-- when unpacked
    return info


def stream_zip(members: Iterable[ZipMember], modified: datetime = ZIP_EPOCH) -> Iterator[bytes]:
    """The archive's bytes; every entry is stamped `modified` (UTC), so equal inputs give equal bytes."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as archive:
        for member in members:
            with archive.open(_entry(member.name, modified), "w", force_zip64=member.size >= 2**31 - 1) as out:
                for chunk in member.chunks():
                    out.write(chunk)
                    yield from sink.drain()
            yield from sink.drain()
    yield from sink.drain()
