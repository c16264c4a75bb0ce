"""Where a job's objects live in the store: every `jobs/`, `inputs/` and `outputs/` key is built
(and parsed back) here, so the layout in DEVELOPERS.md has exactly one owner. (jobs/storage/keys.py
only checks that a key is syntactically safe, whoever built it.)

    jobs/{job_id}/job.json                         the job record
    inputs/{job_id}/views/{i}-{name}               uploaded views, i = upload order
    inputs/{job_id}/depths/{i}-{name}              uploaded depth renders
    inputs/{job_id}/transforms.json                optional cameras
    outputs/{job_id}/{model}/{file}                published results
    outputs/.staging/{job_id}/{run_key}/{model}/   a run's results before publishing
"""

from __future__ import annotations

import re
from typing import Literal

InputKind = Literal["views", "depths"]

RECORDS = "jobs/"
INPUTS = "inputs/"
OUTPUTS = "outputs/"
# Outside outputs/{job_id}/ so that the API never lists a half-written set.
STAGING = "outputs/.staging/"
RECORD_NAME = "job.json"
TRANSFORMS_NAME = "transforms.json"

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str) -> str:
    """A client's file name reduced to one safe key segment ("../a b.png" -> "a_b.png")."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_NAME.sub("_", base).strip("._") or "file"
    return cleaned[:120]


def record_key(job_id: str) -> str:
    return f"{RECORDS}{job_id}/{RECORD_NAME}"


def input_prefix(job_id: str, kind: InputKind | None = None) -> str:
    return f"{INPUTS}{job_id}/{kind}/" if kind else f"{INPUTS}{job_id}/"


def input_key(job_id: str, kind: InputKind, index: int, name: str) -> str:
    return f"{input_prefix(job_id, kind)}{index}-{safe_filename(name)}"


def transforms_key(job_id: str) -> str:
    return f"{input_prefix(job_id)}{TRANSFORMS_NAME}"


def output_prefix(job_id: str, model: str | None = None) -> str:
    return f"{OUTPUTS}{job_id}/{model}/" if model else f"{OUTPUTS}{job_id}/"


def output_key(job_id: str, model: str, filename: str) -> str:
    return f"{output_prefix(job_id, model)}{filename}"


def staging_prefix(job_id: str | None = None, run_key: str | None = None, model: str | None = None) -> str:
    """The staging area (no job), a job's staged runs, one run's copy, or one model's folder of it."""
    if job_id is None:
        return STAGING
    if run_key is None:
        return f"{STAGING}{job_id}/"
    return f"{STAGING}{job_id}/{run_key}/{model}/" if model else f"{STAGING}{job_id}/{run_key}/"


def job_prefixes(job_id: str) -> tuple[str, ...]:
    """Every prefix holding a job's files (not its record)."""
    return input_prefix(job_id), output_prefix(job_id), staging_prefix(job_id)


# ---- parsing keys back ---------------------------------------------------------------------


def job_of_record_key(key: str) -> str | None:
    """The job id of a `jobs/{job_id}/job.json` key (None for any other key)."""
    parts = key.split("/")
    return parts[1] if len(parts) == 3 and key.startswith(RECORDS) and parts[2] == RECORD_NAME else None


def job_of_input_key(key: str) -> str | None:
    parts = key.split("/")
    return parts[1] if key.startswith(INPUTS) and len(parts) > 2 else None


def run_of_staged_key(key: str) -> tuple[str, str] | None:
    """(job_id, run_key) of a key under the staging area."""
    parts = key[len(STAGING):].split("/") if key.startswith(STAGING) else []
    return (parts[0], parts[1]) if len(parts) > 2 else None


def input_name(key: str) -> tuple[int | None, str]:
    """(upload index, client file name) of an input key `.../{i}-{name}`."""
    last = key.rsplit("/", 1)[-1]
    index, _, name = last.partition("-")
    return (int(index) if index.isdigit() else None), (name or index)


def output_file(job_id: str, key: str) -> tuple[str, str] | None:
    """(model, file name) of a published result key of the job; None for a key in a subfolder."""
    prefix = output_prefix(job_id)
    if not key.startswith(prefix):
        return None
    model, _, name = key[len(prefix):].partition("/")
    return (model, name) if model and name and "/" not in name else None


def staged_file(job_id: str, run_key: str, key: str) -> tuple[str, str]:
    """(model, path inside the model's folder) of a key under `staging_prefix(job_id, run_key)`."""
    model, _, name = key[len(staging_prefix(job_id, run_key)):].partition("/")
    return model, name


def file_name(key: str) -> str:
    """The last segment of a key."""
    return key.rsplit("/", 1)[-1]
