"""The optional job options of POST /jobs (`target_faces`, `texture_size`, `formats`), typed once
for the API (parsing, 422s), the job record and the flow.

An option left out is None: the spec's behaviour. The record stores only what the client set,
so GET /jobs/{id} echoes `options` only for jobs that have some and spec-only clients see the
spec's body. recon has its own ReconOptions (recon imports nothing of ours); tasks/ converts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_serializer

from jobs.errors import ServiceError

# The service's mesh formats (recon.options.MESH_FORMATS; tests/test_job_options.py keeps them equal).
FORMATS: tuple[str, ...] = ("glb", "obj", "ply", "stl", "gltf")
DEFAULT_FORMATS: tuple[str, ...] = ("glb", "obj", "ply")
MIN_FACES, MAX_FACES = 1_000, 500_000
TEXTURE_SIZES: tuple[int, ...] = (512, 1024, 2048, 4096)
OPTION_FIELDS: tuple[str, ...] = ("target_faces", "texture_size", "formats")


class JobOptions(BaseModel):
    target_faces: int | None = Field(default=None, ge=MIN_FACES, le=MAX_FACES,
                                     description=f"at most this many faces ({MIN_FACES}..{MAX_FACES})")
    texture_size: int | None = Field(default=None, description="texture side in texels: 512, 1024, 2048 or 4096")
    formats: list[str] | None = Field(default=None, min_length=1,
                                      description=f"mesh formats among {', '.join(FORMATS)}")

    @field_validator("texture_size")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value not in TEXTURE_SIZES:
            raise ValueError(f"must be a power of two between {TEXTURE_SIZES[0]} and {TEXTURE_SIZES[-1]}")
        return value

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = [f for f in value if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown format(s) {', '.join(unknown)}; choose among {', '.join(FORMATS)}")
        return [f for f in FORMATS if f in value]  # canonical order, no repeats

    @model_serializer(mode="wrap")
    def _set_only(self, handler: Any) -> dict[str, Any]:
        """Only the options the client set: the record stores {} for a job without options."""
        return {key: value for key, value in handler(self).items() if value is not None}

    def is_default(self) -> bool:
        return self.target_faces is None and self.texture_size is None and self.formats is None

    def mesh_formats(self) -> tuple[str, ...]:
        """The formats to write: the client's, else the spec's GLB, OBJ and PLY."""
        return tuple(self.formats) if self.formats else DEFAULT_FORMATS

    def echo(self) -> dict[str, Any]:
        """The options as GET /jobs/{id} shows them: only those the client set."""
        return self.model_dump()


def parse_options(values: dict[str, list[str]]) -> JobOptions:
    """JobOptions from the multipart form values (each field's values in upload order; `formats`
    may be repeated or comma-separated); 422 VALIDATION_FAILED naming each bad field."""
    raw: dict[str, Any] = {}
    for name in ("target_faces", "texture_size"):
        given = [v.strip() for v in values.get(name, []) if v.strip()]
        if given:
            raw[name] = given[-1]
    formats = [f.strip().lower() for v in values.get("formats", []) for f in v.split(",") if f.strip()]
    if values.get("formats"):
        raw["formats"] = formats
    try:
        return JobOptions.model_validate(raw)
    except ValidationError as exc:
        fields = {str(err["loc"][0]): _field_message(err) for err in exc.errors()}
        raise ServiceError("VALIDATION_FAILED", f"Invalid job option(s): {', '.join(sorted(fields))}",
                           {"fields": fields}) from None


def _field_message(err: Any) -> str:
    message = str(err.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def required_files(options: JobOptions) -> tuple[str, ...]:
    """The mesh files a completed model must have for these options (the download's check)."""
    return tuple(f"mesh.{fmt}" for fmt in options.mesh_formats())
