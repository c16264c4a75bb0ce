"""The rules of the cleanup and reprocess flows on real stores (filesystem and S3); the flows
themselves run as deployments in tests/test_e2e.py."""

from __future__ import annotations

from datetime import timedelta

from flows.reprocess import _version_key, engine_versions, outdated_models
from jobs.lifecycle.changes import job_ids, orphaned_inputs, sweep_job
from jobs.lifecycle.record import JobRecord, load_record, save_record, utcnow
from jobs.settings import Settings

WINDOW = 3600.0


def make_job(store, job_id: str, **fields) -> JobRecord:
    record = save_record(store, JobRecord(job_id=job_id, model_type="fusion", models=["fusion"], **fields))
    store.put_bytes(f"inputs/{job_id}/views/0-front.png", b"png")
    store.put_bytes(f"outputs/{job_id}/fusion/mesh.glb", b"glb")
    return record


def test_cleanup_rules(store) -> None:
    now = utcnow()
    expired = make_job(store, "expired1", expires_at=now - timedelta(minutes=1))
    fresh = make_job(store, "fresh001", expires_at=now + timedelta(hours=1))
    cancelled = make_job(store, "cancel01", cancelled_at=now)
    stale_request = make_job(store, "request1", cancel_requested_at=now - timedelta(seconds=WINDOW + 5))
    live_request = make_job(store, "request2", cancel_requested_at=now - timedelta(seconds=60))
    assert job_ids(store) == sorted(r.job_id for r in (expired, fresh, cancelled, stale_request, live_request))

    assert sweep_job(store, expired, WINDOW) == ["expired"]
    assert sweep_job(store, cancelled, WINDOW) == ["cancelled-files-deleted"]
    assert sweep_job(store, stale_request, WINDOW) == ["cancel-request-expired"]
    assert sweep_job(store, fresh, WINDOW) == [] and sweep_job(store, live_request, WINDOW) == []

    for job in ("expired1", "cancel01"):
        assert not store.list(f"inputs/{job}/") and not store.list(f"outputs/{job}/")
        record = load_record(store, job)  # the record stays: download answers 410, not 404
        assert record is not None and record.results_deleted_at is not None and record.results_gone()
    assert store.exists("outputs/fresh001/fusion/mesh.glb")
    assert load_record(store, "request1").cancel_requested_at is None
    assert load_record(store, "request2").cancel_requested_at is not None
    assert sweep_job(store, load_record(store, "expired1"), WINDOW) == []  # idempotent


def test_cleanup_finds_inputs_left_without_a_record(store) -> None:
    import time

    make_job(store, "recorded")
    store.put_bytes("inputs/orphan01/views/0-front.png", b"png")  # its submission could not discard it
    store.put_bytes("inputs/orphan01/depths/0-front.png", b"png")
    written = max(i.modified for i in store.list("inputs/orphan01/"))
    assert abs(written - time.time()) < 60
    records = set(job_ids(store))
    assert orphaned_inputs(store, records, older_than=written + 1) == ["orphan01"]
    assert orphaned_inputs(store, records, older_than=written - 5) == []  # may be a submission in flight


def test_reprocess_selects_results_of_older_engine_versions(monkeypatch) -> None:
    versions = engine_versions(Settings())
    current = versions["fusion"]
    record = JobRecord(job_id="old00001", model_type="fusion", models=["fusion"])
    assert outdated_models(record, versions) == []  # never completed
    result = record.result("fusion")
    result.status, result.engine_version = "completed", current
    assert outdated_models(record, versions) == []
    result.engine_version = "0.0.1"
    assert outdated_models(record, versions) == ["fusion"]
    result.engine_version = current
    monkeypatch.setenv("RECON_FUSION__VERSION", "99.0.0")  # a version raised by configuration
    assert outdated_models(record, engine_versions(Settings())) == ["fusion"]
    assert outdated_models(record, {}) == []  # an engine the service no longer has
    record.expires_at = utcnow() - timedelta(seconds=1)
    assert outdated_models(record, versions) == []  # results gone: nothing to reprocess
    assert _version_key("0.10.0") > _version_key("0.9.2") > _version_key("0.9")
