"""Streaming multipart parsing of POST /jobs and the checks on every uploaded file.

The body is fed chunk by chunk into python-multipart's streaming parser; each file part is written
to a temporary file on disk as it arrives (never held in memory) and hashed on the way. Limits
are enforced while reading: a file over `max_file_bytes` or a request whose files exceed
`max_request_bytes` stops being stored at once. The rest of the body is then read and discarded
(up to a cap) so that ordinary HTTP clients, which send the whole body before reading the answer,
receive the 422 error object instead of a reset connection.

A file part that ends is checked as a PNG (signature, header size against `max_pixels`,
`Image.verify()` for truncation and broken chunks) in a worker thread. Nothing reaches the object
store until the whole request is valid; `api.routes.submit` then copies the temporary files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api.png_inflate import PngDataError, check_image_data
from jobs.errors import ServiceError
from jobs.lifecycle.keys import safe_filename
from jobs.settings import Settings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPECTED_COUNTS: dict[str, int] = {"views": 6, "depth_renders": 6}
FIELD_LABELS = {"views": "view images", "depth_renders": "depth render images"}
TRANSFORMS_FIELD = "transforms"
MAX_TRANSFORMS_BYTES = 1024 * 1024
MAX_FORM_VALUE_BYTES = 64 * 1024
# Multipart framing (boundaries, part headers) on top of the file bytes, for the Content-Length
# pre-check: the 200 MB limit is on the files themselves.
FRAMING_ALLOWANCE = 1024 * 1024


def canonical_field(name: str) -> str:
    """`views[]` and `views` are the same field (the spec documents both spellings)."""
    return name[:-2] if name.endswith("[]") else name


@dataclass
class UploadedFile:
    field: str  # views | depth_renders | transforms
    index: int  # order within its field, as uploaded
    filename: str  # the client's file name (sanitised when it becomes a key)
    path: Path  # temporary file holding the bytes
    size: int = 0
    sha256: str = ""
    width: int | None = None
    height: int | None = None


@dataclass
class ParsedUpload:
    """A fully received, fully checked upload (temporary files; call `cleanup()` when done)."""

    tmpdir: Path
    files: dict[str, list[UploadedFile]] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # the last value of each form field
    values: dict[str, list[str]] = field(default_factory=dict)  # every value, for repeated fields

    def cleanup(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def check_png(path: Path, max_pixels: int, label: str) -> tuple[int, int]:
    """(width, height) of a valid PNG; raises INVALID_FILE_FORMAT for anything else.

    The pixel cap is checked from the header before any decoding, so a decompression bomb
    (a few KB that would inflate to gigabytes) is rejected without inflating it."""

    def bad(reason: str, **extra: Any) -> ServiceError:
        return ServiceError("INVALID_FILE_FORMAT", f"{label} is not a valid PNG image: {reason}", {"file": label, **extra})

    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            raise bad("the file does not start with the PNG signature")
    try:
        with Image.open(path, formats=["PNG"]) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise bad(
                    f"{width}x{height} pixels exceed the limit of {max_pixels} pixels per image",
                    width=width, height=height, max_pixels=max_pixels,
                )
            img.verify()  # walks every chunk: catches truncation and corrupted chunks (CRC)
        with open(path, "rb") as f:
            check_image_data(f)  # inflates IDAT as a stream: corrupt or oversized pixel data
    except PngDataError as exc:
        raise bad(str(exc)) from None
    except ServiceError:
        raise
    except (UnidentifiedImageError, SyntaxError, OSError, ValueError, EOFError) as exc:
        raise bad(str(exc) or type(exc).__name__) from None
    except Image.DecompressionBombError as exc:  # Pillow's own cap, if lower than ours
        raise bad(str(exc)) from None
    return width, height


def check_transforms(path: Path) -> None:
    """The optional NeRF-style transforms.json must be a JSON object with a `frames` list."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ServiceError("VALIDATION_FAILED", "transforms is not valid JSON",
                           {"fields": {TRANSFORMS_FIELD: str(exc)}}) from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise ServiceError("VALIDATION_FAILED", "transforms must be a JSON object with a 'frames' list",
                           {"fields": {TRANSFORMS_FIELD: "expected {'frames': [...]}"}})


def too_large_for_request(settings: Settings) -> ServiceError:
    limit_mb = settings.max_request_bytes // (1024 * 1024)
    return ServiceError("FILE_TOO_LARGE", f"The upload exceeds the limit of {limit_mb}MB per request",
                        {"max_request_bytes": settings.max_request_bytes},
                        f"Reduce image resolution or compress PNGs before uploading (max {limit_mb}MB per request).")


def check_content_length(request: Request, settings: Settings) -> None:
    """Reject a declared body that cannot fit before reading any of it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_request_bytes + FRAMING_ALLOWANCE:
        raise too_large_for_request(settings)


class _UploadReceiver:
    """The parser's callbacks: route part bytes to temporary files and count them."""

    def __init__(self, settings: Settings, tmpdir: Path) -> None:
        self.settings = settings
        self.upload = ParsedUpload(tmpdir)
        self.error: ServiceError | None = None
        self.total_file_bytes = 0
        self.finished: list[UploadedFile] = []  # parts that ended, waiting for their checks
        self.unexpected: list[str] = []
        self._headers: dict[str, str] = {}
        self._hname = b""
        self._hvalue = b""
        self._file: UploadedFile | None = None
        self._fh: IO[bytes] | None = None
        self._hash: Any = None
        self._value: bytearray | None = None
        self._value_name = ""

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def fail(self, error: ServiceError) -> None:
        """Remember the first error; from now on everything is discarded."""
        if self.error is None:
            self.error = error
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._file = None
        self._value = None

    def _part_begin(self) -> None:
        self._headers = {}
        self._hname = self._hvalue = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._hname.decode("latin-1").lower()] = self._hvalue.decode("latin-1")
        self._hname = self._hvalue = b""

    def _headers_finished(self) -> None:
        if self.error is not None:
            return
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        name = canonical_field(params.get(b"name", b"").decode("utf-8", "replace"))
        filename = params.get(b"filename")
        if filename is None:  # a plain form field such as model_type
            self._value, self._value_name = bytearray(), name
            return
        if name not in EXPECTED_COUNTS and name != TRANSFORMS_FIELD:
            self.unexpected.append(name)
            return
        files = self.upload.files.setdefault(name, [])
        index = len(files)
        limit = EXPECTED_COUNTS.get(name, 1)
        display = filename.decode("utf-8", "replace")
        record = UploadedFile(name, index, safe_filename(display), self.upload.tmpdir / f"{name}-{index}")
        files.append(record)
        if index >= limit:
            return  # counted for the error message, not stored
        expected_ext = ".json" if name == TRANSFORMS_FIELD else ".png"
        if not display.lower().endswith(expected_ext):
            code = "VALIDATION_FAILED" if name == TRANSFORMS_FIELD else "INVALID_FILE_FORMAT"
            self.fail(ServiceError(code, f"{name}[{index}] '{display}' must have a {expected_ext} extension",
                                   {"field": name, "file": display}))
            return
        self._file, self._fh, self._hash = record, open(record.path, "wb"), hashlib.sha256()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self._value is not None:
            if len(self._value) + size > MAX_FORM_VALUE_BYTES:
                self.fail(ServiceError("VALIDATION_FAILED", f"Form field '{self._value_name}' is too long",
                                       {"fields": {self._value_name: "value too long"}}))
                return
            self._value += data[start:end]
            return
        self.total_file_bytes += size
        if self.total_file_bytes > self.settings.max_request_bytes and self.error is None:
            self.fail(too_large_for_request(self.settings))
        if self._file is None or self._fh is None:
            return
        self._file.size += size
        limit = MAX_TRANSFORMS_BYTES if self._file.field == TRANSFORMS_FIELD else self.settings.max_file_bytes
        if self._file.size > limit:
            mb = limit // (1024 * 1024)
            label = f"{self._file.field}[{self._file.index}] '{self._file.filename}'"
            self.fail(ServiceError("FILE_TOO_LARGE", f"{label} exceeds the limit of {mb}MB per file",
                                   {"field": self._file.field, "file": self._file.filename, "max_file_bytes": limit}))
            return
        chunk = data[start:end]
        self._fh.write(chunk)
        self._hash.update(chunk)

    def _part_end(self) -> None:
        if self._value is not None:
            value = self._value.decode("utf-8", "replace")
            self.upload.fields[self._value_name] = value
            self.upload.values.setdefault(self._value_name, []).append(value)
            self._value = None
            return
        if self._file is not None and self._fh is not None:
            self._fh.close()
            self._file.sha256 = self._hash.hexdigest()
            self.finished.append(self._file)
        self._file, self._fh = None, None


def _check_file(item: UploadedFile, max_pixels: int) -> None:
    if item.field == TRANSFORMS_FIELD:
        check_transforms(item.path)
        return
    item.width, item.height = check_png(item.path, max_pixels, f"{item.field}[{item.index}] '{item.filename}'")


def check_counts(upload: ParsedUpload) -> None:
    for name, expected in EXPECTED_COUNTS.items():
        got = len(upload.files.get(name, []))
        if got != expected:
            label = FIELD_LABELS[name]
            raise ServiceError("INVALID_FILE_COUNT", f"Expected {expected} {label}, got {got}",
                               {"field": name, "expected": expected, "received": got})
    extra = len(upload.files.get(TRANSFORMS_FIELD, []))
    if extra > 1:
        raise ServiceError("INVALID_FILE_COUNT", f"Expected at most 1 transforms file, got {extra}",
                           {"field": TRANSFORMS_FIELD, "expected": 1, "received": extra})


async def receive_upload(request: Request, settings: Settings) -> ParsedUpload:
    """Parse, spool and check the multipart body of POST /jobs; raises ServiceError (422)."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ServiceError("VALIDATION_FAILED", "POST /jobs expects a multipart/form-data body",
                           {"fields": {"body": "send the files as multipart/form-data"}})
    check_content_length(request, settings)

    spool_root = settings.data_dir / "tmp"
    spool_root.mkdir(parents=True, exist_ok=True)
    receiver = _UploadReceiver(settings, Path(tempfile.mkdtemp(prefix="upload-", dir=spool_root)))
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    drain_cap = 2 * settings.max_request_bytes + FRAMING_ALLOWANCE
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if receiver.error is not None:
                if received > drain_cap:
                    break  # a client that keeps sending: answer now, the server closes the connection
                continue
            try:
                parser.write(chunk)
            except ServiceError as exc:
                receiver.fail(exc)
            except Exception as exc:  # python-multipart's MultipartParseError and friends
                receiver.fail(ServiceError("VALIDATION_FAILED", f"Malformed multipart body: {exc}",
                                           {"fields": {"body": str(exc)}}))
            while receiver.finished and receiver.error is None:
                item = receiver.finished.pop(0)
                try:
                    await anyio.to_thread.run_sync(_check_file, item, settings.max_pixels)
                except ServiceError as exc:
                    receiver.fail(exc)
        if receiver.error is None:
            parser.finalize()
        if receiver.error is None and receiver._fh is not None:
            receiver.fail(ServiceError("VALIDATION_FAILED", "The multipart body ended in the middle of a file",
                                       {"fields": {"body": "truncated"}}))
        for item in receiver.finished:
            if receiver.error is None:
                try:
                    await anyio.to_thread.run_sync(_check_file, item, settings.max_pixels)
                except ServiceError as exc:
                    receiver.fail(exc)
        if receiver.error is not None:
            raise receiver.error
        if receiver.unexpected:
            names = sorted(set(receiver.unexpected))
            raise ServiceError("VALIDATION_FAILED", f"Unexpected file field(s): {', '.join(names)}",
                               {"fields": {n: "unknown file field; use views, depth_renders or transforms" for n in names}})
        check_counts(receiver.upload)
        return receiver.upload
    except BaseException:
        if receiver._fh is not None:
            receiver._fh.close()
        receiver.upload.cleanup()
        raise
