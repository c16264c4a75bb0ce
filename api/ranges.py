"""HTTP byte ranges (RFC 9110 §14) for resumable downloads of the ZIP and of single result files.

One range per request (`bytes=a-b`, `bytes=a-`, `bytes=-n`) is what resuming clients send; a
request for several ranges is answered with the whole body, which RFC 9110 allows. A range that
cannot be satisfied, or that is malformed, gets 416 in the error envelope (VALIDATION_FAILED with
`details.range`) and `Content-Range: bytes */{size}`, so a client learns the size it resumes against.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from api.errors import api_error
from jobs.errors import ServiceError

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as HTTP writes it

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def unsatisfiable(header: str, size: int) -> ServiceError:
    return api_error("VALIDATION_FAILED", f"Range '{header}' cannot be satisfied: the body has {size} bytes",
                     {"range": header, "size": size}, status=416, headers={"Content-Range": f"bytes */{size}"})


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The single range `header` asks for, clipped to `size`; None means send everything (no
    header, another unit, several ranges). Raises 416 for a malformed or unsatisfiable range."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    match = _SPEC.match(spec)
    if match is None or match.group(1) == match.group(2) == "":
        raise unsatisfiable(header, size)
    first, last = match.group(1), match.group(2)
    if first == "":  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise unsatisfiable(header, size)
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        raise unsatisfiable(header, size)
    return ByteRange(start, end)


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """Whether a Range may be honoured: no If-Range, or one naming the current (strong) ETag.
    A date or another tag means the client's partial copy is of something else: send it all."""
    return if_range is None or if_range.strip() == etag


def slice_chunks(chunks: Iterable[bytes], wanted: ByteRange) -> Iterator[bytes]:
    """The bytes of `wanted` out of a stream of chunks (those before it are read and dropped)."""
    position = 0
    for chunk in chunks:
        end = position + len(chunk)
        if end > wanted.start and position <= wanted.end:
            yield chunk[max(0, wanted.start - position):wanted.end + 1 - position]
        position = end
        if position > wanted.end:
            return
