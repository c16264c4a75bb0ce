"""Job record: id format, key layout, JSON round trip through both storage backends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from jobs.errors import ServiceError
from jobs.lifecycle.keys import input_key, output_key, record_key, safe_filename
from jobs.lifecycle.record import (
    InputFile,
    InputManifest,
    JobRecord,
    is_job_id,
    load_record,
    new_job_id,
    save_record,
    update_record,
)
from jobs.storage import ObjectNotFound


def test_job_ids_are_8_random_lowercase_alphanumerics():
    ids = {new_job_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(is_job_id(i) and len(i) == 8 for i in ids)
    assert set("".join(ids)) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
    assert len(set("".join(ids))) == 36  # every symbol occurs: not a narrower alphabet
    assert not is_job_id("ABCDEFGH") and not is_job_id("abc") and not is_job_id("abcdefg!")


def test_keys_follow_the_layout_and_sanitise_client_names():
    assert record_key("k3m8xq2p") == "jobs/k3m8xq2p/job.json"
    assert input_key("k3m8xq2p", "views", 0, "front.png") == "inputs/k3m8xq2p/views/0-front.png"
    assert input_key("k3m8xq2p", "depths", 5, "../../etc/pass wd.png") == "inputs/k3m8xq2p/depths/5-pass_wd.png"
    assert output_key("k3m8xq2p", "fusion", "mesh.glb") == "outputs/k3m8xq2p/fusion/mesh.glb"
    assert safe_filename("..") == "file" and safe_filename("C:\\x\\y.png") == "y.png"


def _record() -> JobRecord:
    job_id = new_job_id()
    views = [InputFile(name=f"v{i}.png", key=input_key(job_id, "views", i, f"v{i}.png"), size=10 + i, sha256="ab" * 32)
             for i in range(6)]
    return JobRecord(job_id=job_id, model_type="both", models=["reconviagen", "nvdiffrec"],
                     inputs=InputManifest(views=views, depths=views))


def test_record_round_trip(store):
    record = _record()
    record.flow_run_id = "0b6f3c1e-9d2a-4a57-9f39-2f8d8d3f5a11"
    record.engine_versions = {"reconviagen": "1.0.0", "nvdiffrec": "0.3.1"}
    record.error = ServiceError("MODEL_VRAM_OOM", details={"model": "reconviagen", "pipeline_stage": "load_weights"}).to_error_object()
    res = record.result("nvdiffrec")
    res.status, res.files, res.engine_version = "completed", ["mesh.glb", "quality.json"], "0.3.1"
    res.completed_at = datetime(2026, 1, 31, 12, 30, tzinfo=UTC)
    record.expires_at = res.completed_at + timedelta(days=7)
    before = record.updated_at
    save_record(store, record)
    assert record.updated_at >= before

    loaded = load_record(store, record.job_id)
    assert loaded == record
    assert loaded.results["nvdiffrec"].files == ["mesh.glb", "quality.json"]
    assert set(loaded.results) == {"nvdiffrec"} and loaded.result("reconviagen").status == "pending"
    assert loaded.error["code"] == "MODEL_VRAM_OOM"
    stored = json.loads(store.get_bytes(record_key(record.job_id)))
    assert stored["created_at"].endswith("Z") and stored["inputs"]["views"][5]["size"] == 15


def test_missing_or_invalid_job_is_none(store):
    assert load_record(store, "zzzzzzzz") is None
    assert load_record(store, "../../x") is None


def test_update_record_rereads_before_writing(store):
    record = save_record(store, _record())
    stale = load_record(store, record.job_id)
    update_record(store, record.job_id, lambda r: setattr(r, "flow_run_id", "run-1"))
    now = datetime.now(UTC)
    updated = update_record(store, record.job_id, lambda r: setattr(r, "cancel_requested_at", now))
    assert updated.flow_run_id == "run-1" and stale.flow_run_id is None
    assert load_record(store, record.job_id).cancel_requested_at == now
    with pytest.raises(ObjectNotFound):
        update_record(store, "nojob000", lambda r: None)


def test_validation_and_time_helpers():
    with pytest.raises(ValidationError):
        JobRecord(job_id="NOT-AN-ID", model_type="fusion", models=["fusion"])
    record = JobRecord(job_id="abcd1234", model_type="fusion", models=["fusion"],
                       cancel_requested_at=datetime(2026, 1, 1, 12, 0))  # naive -> UTC
    assert record.cancel_requested_at.tzinfo is UTC
    t0 = record.cancel_requested_at
    assert record.cancel_request_valid(3600, now=t0 + timedelta(minutes=59))
    assert not record.cancel_request_valid(3600, now=t0 + timedelta(minutes=61))
    assert not record.results_gone()
    record.expires_at = t0 + timedelta(days=7)
    assert not record.results_gone(now=t0) and record.results_gone(now=t0 + timedelta(days=8))
    record.expires_at, record.results_deleted_at = None, t0
    assert record.results_gone(now=t0)
