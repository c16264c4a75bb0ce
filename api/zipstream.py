"""A ZIP written incrementally into an HTTP response: each member is read from the object store in
chunks, deflated (level 6, as the spec says) and handed out as soon as zipfile produces bytes, so
memory stays at one chunk plus the compressor's window whatever the size of the results.

zipfile supports unseekable output (it writes data descriptors after each member), which is what
makes this possible without building the archive in memory or in a temporary file.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

COMPRESS_LEVEL = 6


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

    def drain(self) -> Iterator[bytes]:
        if self._parts:
            data, self._parts = b"".join(self._parts), []
            yield data


def stream_zip(members: Iterable[ZipMember]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as archive:  # type: ignore[arg-type]
        for member in members:
            with archive.open(member.name, "w", force_zip64=member.size >= 2**31 - 1) as out:
                for chunk in member.chunks():
                    out.write(chunk)
                    yield from sink.drain()
            yield from sink.drain()
    yield from sink.drain()
