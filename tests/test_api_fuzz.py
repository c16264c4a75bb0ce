"""Generated inputs against the real API (uvicorn + Prefect server + store of tests/fixtures/api.py).

- schemathesis walks the OpenAPI schema the API serves and sends what it generates from it (a
  fixed seed, a bounded example count per operation, valid and invalid data both): the API must never answer 5xx, and every
  answer must match the status codes, content types, headers and bodies that schema documents.
- A property test feeds hostile PNGs (truncated, bad CRC, lying headers, extreme dimensions,
  deflate bombs, unusual colour modes) to the upload path: each is either a PNG that Pillow
  decodes in full (the API may queue it) or the documented 422 INVALID_FILE_FORMAT; the API's
  peak memory stays bounded throughout, since uploads are streamed to disk and checked from
  their headers.
"""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.api import ApiServer, job_files, png_bytes

SCHEMATHESIS_SEED = 20261202
EXAMPLES_PER_OPERATION = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Peak RSS the API may add while receiving every hostile upload of the property test.
MAX_API_PEAK_GROWTH_MIB = 64


def test_schemathesis_no_server_error_and_schema_conformance(api_server: ApiServer) -> None:
    """Every generated request to every operation: no 5xx, and an answer the schema documents.

    The operations are walked here rather than with schemathesis' pytest plugin, whose
    lazily-loaded schemas rely on pytest internals that pytest 9 removed."""
    api_schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 5, "the served schema lost the spec's operations"
    failures: list[str] = []
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @seed(SCHEMATHESIS_SEED)
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(mode))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=api_server.url, checks=CHECKS, timeout=30)

        try:
            run()
        except Unsatisfiable:  # nothing invalid can be written for it (e.g. a free-form path string)
            continue
        except Exception as exc:  # report every operation's first failure, not only the first one
            failures.append(f"{operation.label} ({mode.value} data): {exc}")
    assert not failures, "\n\n".join(failures)


# ---- hostile PNGs ---------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes, *, level: int = 9) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, level))
            + _chunk(b"IEND", b""))


def _saved(mode: str, size: int, **params: object) -> bytes:
    image = Image.new(mode, (size, size), 7 if mode in ("P", "L", "I;16") else (7,) * len(mode))
    buf = io.BytesIO()
    image.save(buf, "PNG", **params)
    return buf.getvalue()


def _corrupt(data: bytes, where: str, position: int) -> bytes:
    """One defect in an otherwise valid PNG."""
    if where == "truncate":
        return data[: 8 + position % (len(data) - 8)]
    if where == "crc":  # flip one bit of the IHDR chunk's CRC
        crc_at = 8 + 8 + 13
        return data[:crc_at] + bytes([data[crc_at] ^ 0x01]) + data[crc_at + 1:]
    if where == "idat":  # garbage inside the compressed stream, CRC recomputed so only zlib notices
        start = data.index(b"IDAT") + 4
        length = struct.unpack(">I", data[start - 8:start - 4])[0]
        body = bytearray(data[start:start + length])
        body[position % len(body)] ^= 0xFF
        return data[:start - 8] + _chunk(b"IDAT", bytes(body)) + data[start + length + 4:]
    raise AssertionError(where)


@st.composite
def hostile_pngs(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["corrupt", "huge_header", "bomb", "lying_header", "mode", "not_png"]))
    if kind == "corrupt":
        base = png_bytes(24, 24, draw(st.sampled_from(["RGB", "RGBA", "L"])), seed=draw(st.integers(0, 9)))
        return _corrupt(base, draw(st.sampled_from(["truncate", "crc", "idat"])), draw(st.integers(0, 10_000)))
    if kind == "huge_header":  # dimensions far past the pixel cap, a few bytes of data
        side = draw(st.sampled_from([5000, 65_535, 1_000_000, 2**31 - 1]))
        return _png(side, draw(st.sampled_from([1, side])), 8, 2, b"\x00" * 64)
    if kind == "bomb":  # a tiny file that inflates by ~1000:1 into a picture at or past the cap
        side = draw(st.sampled_from([2048, 4096, 4097, 6000]))
        return _png(side, side, 8, 0, bytes(side * (side + 1)))
    if kind == "lying_header":  # IHDR says small, IDAT inflates to far more than that
        return _png(16, 16, 8, 2, bytes(50_000_000), level=9)
    if kind == "mode":  # valid but unusual: palette, 16-bit grey, grey+alpha, 1-bit, interlaced
        mode, params = draw(st.sampled_from([("P", {}), ("I;16", {}), ("LA", {}), ("1", {}),
                                             ("RGB", {"optimize": True}), ("RGBA", {"compress_level": 0})]))
        return _saved(mode, draw(st.sampled_from([8, 33, 64])), **params)
    return draw(st.sampled_from([b"", b"\x89PNG", b"GIF89a" + bytes(40), b"\x89PNG\r\n\x1a\n" + bytes(100)]))


def _decodes_fully(data: bytes, max_pixels: int) -> bool:
    """The oracle: Pillow reads every pixel of it within the API's pixel cap."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.width * image.height > max_pixels:
                return False
            image.load()
        return True
    except Exception:
        return False


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture(scope="module")
def baseline_peak(api_server: ApiServer) -> float:
    return _peak_rss_mib(api_server.process.pid)


@seed(SCHEMATHESIS_SEED)
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(bad=hostile_pngs(), as_depth=st.booleans(), index=st.integers(0, 5))
def test_hostile_png_is_rejected_with_422_and_bounded_memory(api_server: ApiServer, baseline_peak: float,
                                                              bad: bytes, as_depth: bool, index: int) -> None:
    files = job_files()
    field = "depth_renders" if as_depth else "views"
    position = [i for i, (name, _) in enumerate(files) if name == field][index]
    name = files[position][1][0]
    files[position] = (field, (name, bad, "image/png"))
    with httpx.Client(base_url=api_server.url, timeout=60) as client:
        response = client.post("/jobs", files=files, data={"model_type": "fusion"})
    assert response.status_code < 500, response.text
    if _decodes_fully(bad, api_server.settings.max_pixels):
        assert response.status_code in (200, 422), response.text
    else:
        assert response.status_code == 422, f"accepted an undecodable PNG: {response.text}"
        body = response.json()["error"]
        assert body["code"] in ("INVALID_FILE_FORMAT", "FILE_TOO_LARGE"), body
        assert body["message"] and body["suggestion"]
    growth = _peak_rss_mib(api_server.process.pid) - baseline_peak
    assert growth <= MAX_API_PEAK_GROWTH_MIB, f"API peak RSS grew by {growth:.1f} MiB"
