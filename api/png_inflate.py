"""Inflate a PNG's image data as a stream, without keeping it, to prove it decodes.

Pillow's `Image.verify()` checks the chunk structure and CRCs but never inflates IDAT, so a
file whose compressed stream is corrupt (with CRCs recomputed to match) or inflates to far more
than its header declares passes it and only fails in the worker, after the job was queued.
Decoding the image in the API instead would hold every upload's pixels in its memory at once
(up to the pixel cap, per file). This reads the zlib stream in bounded pieces, checks each row's
filter byte and that the stream ends at exactly the size the header implies, and keeps nothing.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PIECE = 1 << 20  # inflate at most this many bytes per step: memory stays bounded whatever the ratio
_MAX_FILTER = 4


class PngDataError(ValueError):
    """The image data does not decode to what the header declares."""


def _row_bytes(width: int, bits_per_pixel: int) -> int:
    return (width * bits_per_pixel + 7) // 8


def _rows(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> Iterator[tuple[int, int]]:
    """(row length including its filter byte, row count) of each pass."""
    if not interlaced:
        yield _row_bytes(width, bits_per_pixel) + 1, height
        return
    for x0, y0, dx, dy in _ADAM7:
        pass_width = (width - x0 + dx - 1) // dx if width > x0 else 0
        pass_height = (height - y0 + dy - 1) // dy if height > y0 else 0
        if pass_width and pass_height:
            yield _row_bytes(pass_width, bits_per_pixel) + 1, pass_height


def _idat_pieces(f: BinaryIO) -> Iterator[bytes]:
    """The IDAT payloads in file order (the chunk structure was already verified by Pillow)."""
    f.seek(8)
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise PngDataError("the file ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IDAT":
            remaining = length
            while remaining:
                piece = f.read(min(remaining, _PIECE))
                if not piece:
                    raise PngDataError("an IDAT chunk is truncated")
                remaining -= len(piece)
                yield piece
            f.seek(4, 1)  # CRC
        elif kind == b"IEND":
            return
        else:
            f.seek(length + 4, 1)


def check_image_data(f: BinaryIO) -> None:
    """Raise PngDataError unless the IDAT stream inflates to exactly the declared rows, each with
    a valid filter type. `f` is a PNG whose signature and chunk CRCs are known to be good."""
    f.seek(16)
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", f.read(13))
    if colour_type not in _CHANNELS:
        raise PngDataError(f"unknown colour type {colour_type}")
    layout = list(_rows(width, height, bit_depth * _CHANNELS[colour_type], interlace == 1))
    expected = sum(length * count for length, count in layout)
    # The offsets at which each row's filter byte sits, walked as the data streams past.
    boundaries = iter([(length, count) for length, count in layout])
    row_length, rows_left = next(boundaries, (0, 0))
    next_filter = 0
    inflater = zlib.decompressobj()
    produced = 0

    def consume(data: bytes) -> None:
        nonlocal produced, next_filter, row_length, rows_left
        start = produced
        produced += len(data)
        if produced > expected:
            raise PngDataError(f"the image data inflates past the {expected} bytes its header declares")
        while rows_left and next_filter < produced:
            if data[next_filter - start] > _MAX_FILTER:
                raise PngDataError(f"row filter type {data[next_filter - start]} is not a PNG filter")
            next_filter += row_length
            rows_left -= 1
            if not rows_left:
                row_length, rows_left = next(boundaries, (0, 0))

    try:
        for piece in _idat_pieces(f):
            data = inflater.decompress(piece, _PIECE)
            consume(data)
            while inflater.unconsumed_tail:
                consume(inflater.decompress(inflater.unconsumed_tail, _PIECE))
        consume(inflater.flush())
    except zlib.error as exc:
        raise PngDataError(f"the compressed image data is corrupt ({exc})") from None
    if not inflater.eof:
        raise PngDataError("the compressed image data ends early")
    if produced != expected:
        raise PngDataError(f"the image data holds {produced} bytes, its header declares {expected}")
