"""Faults on the production-like stack (tests/fixtures/production.py): PostgreSQL, the Prefect
server, S3, two APIs and two workers on hosts of their own. Each test checks the job's final
state, its stored ZIP, and that the other jobs were not disturbed, and prints its time to
recovery. The tests share one stack and run in file order.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.errors import CATALOGUE
from jobs.lifecycle.record import load_record
from recon.pipeline import OUTPUT_FILES
from tests.fixtures.prefect import ZOMBIE_SECONDS
from tests.fixtures.production import ProductionStack
from tests.test_e2e import JOB_TIMEOUT, render_small_case, submit

pytestmark = pytest.mark.slow

FINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_small_case(tmp_path_factory.mktemp("case-production"), 128)


@pytest.fixture(scope="module")
def apis(production_stack: ProductionStack) -> Iterator[list[httpx.Client]]:
    clients = [httpx.Client(base_url=url, timeout=60) for url in production_stack.api_urls]
    yield clients
    for client in clients:
        client.close()


def report(what: str, **numbers: Any) -> None:
    print(f"RECOVERY {json.dumps({'fault': what, **numbers})}")


class Follower:
    """Polls jobs (each through its own API) and keeps every status it saw."""

    def __init__(self, jobs: dict[str, httpx.Client]) -> None:
        self.jobs = jobs
        self.seen: dict[str, list[str]] = {job_id: [] for job_id in jobs}
        self.last: dict[str, dict[str, Any]] = {}
        self.done_at: dict[str, float] = {}

    def poll(self) -> None:
        for job_id, api in self.jobs.items():
            if job_id in self.done_at:
                continue
            r = api.get(f"/jobs/{job_id}")
            assert r.status_code == 200, r.text
            body = r.json()
            self.last[job_id] = body
            self.seen[job_id].append(body["status"])
            if body["status"] in FINAL:
                self.done_at[job_id] = time.monotonic()

    def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"{what} after {timeout:.0f} s: {self.last}"
            self.poll()
            time.sleep(0.5)

    def all_final(self, timeout: float = JOB_TIMEOUT) -> None:
        self.until(lambda: len(self.done_at) == len(self.jobs), timeout, "jobs not final")

    def running(self, min_progress: int = 10, timeout: float = JOB_TIMEOUT) -> None:
        def ok() -> bool:
            return all(b.get("status") == "processing" and (b.get("progress") or 0) >= min_progress
                       for b in (self.last.get(j, {}) for j in self.jobs))
        self.until(ok, timeout, f"jobs not processing at {min_progress}%")


def run_of(prod: ProductionStack, job_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(load_record(prod.store(), job_id).flow_run_id)


def assert_completed_with_zip(api: httpx.Client, prod: ProductionStack, job_id: str, seen: list[str]) -> None:
    assert seen[-1] == "completed", seen
    assert set(seen) <= {"queued", "processing", "completed"}, seen  # never `failed` on the way
    r = api.get(f"/jobs/{job_id}/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip", r.text[:500]
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.testzip() is None
        assert {f"fusion/{f}" for f in OUTPUT_FILES} <= set(z.namelist())
    store = prod.store()
    assert store.list(f"outputs/{job_id}/fusion/")
    assert not store.list(f"outputs/.staging/{job_id}/"), "staging is removed after publishing"


def assert_unavailable_envelope(r: httpx.Response) -> None:
    """A dependency down: the spec's error envelope with a 503 code of the catalogue, no trace."""
    error = r.json()["error"]
    assert set(error) == {"code", "message", "details", "suggestion"}, error
    assert CATALOGUE[error["code"]].http_status == 503 and error["suggestion"]
    assert "Traceback" not in r.text


def test_two_jobs_at_once_run_on_both_workers(production_stack: ProductionStack, apis: list[httpx.Client],
                                             case: Path) -> None:
    jobs = {submit(api, case, "fusion"): api for api in apis}  # one through each API
    follow = Follower(jobs)
    started = time.monotonic()
    follow.running(min_progress=1)
    workers = {job_id: production_stack.workers_of(job_id) for job_id in jobs}
    follow.all_final()
    report("none: two jobs at once", seconds=round(time.monotonic() - started, 1), workers=workers)
    assert sorted(w for ws in workers.values() for w in ws) == ["worker1", "worker2"], workers
    for job_id, api in jobs.items():
        assert_completed_with_zip(api, production_stack, job_id, follow.seen[job_id])
        assert run_of(production_stack, job_id).run_count == 1


def test_worker_host_killed_mid_job_is_retried_on_the_other_worker(
        production_stack: ProductionStack, apis: list[httpx.Client], case: Path) -> None:
    prod = production_stack
    jobs = {submit(api, case, "fusion"): api for api in apis}
    follow = Follower(jobs)
    follow.running(min_progress=10)
    runs = {job_id: str(run_of(prod, job_id).id) for job_id in jobs}
    owner = {job_id: prod.workers_of(job_id) for job_id in jobs}
    victim_job = next(iter(jobs))
    [victim_host] = owner[victim_job]
    [other_job] = [j for j in jobs if j != victim_job]
    [other_host] = owner[other_job]
    assert victim_host != other_host, owner

    killed_at = time.monotonic()
    pids = prod.kill_host(victim_host)
    try:
        assert pids, f"nothing ran on {victim_host}"
        follow.all_final(timeout=ZOMBIE_SECONDS + 2 * JOB_TIMEOUT)
    finally:
        prod.start_host(victim_host)  # later tests need both workers
    recovered = follow.done_at[victim_job] - killed_at
    report("worker host killed (SIGKILL of every process on it)", host=victim_host, processes=len(pids),
           kill_to_completed_s=round(recovered, 1),
           other_job_done_s=round(follow.done_at[other_job] - killed_at, 1))
    for job_id, api in jobs.items():
        assert_completed_with_zip(api, prod, job_id, follow.seen[job_id])
    victim_run = run_of(prod, victim_job)
    assert str(victim_run.id) == runs[victim_job] and victim_run.run_count >= 2  # the same run, started again
    assert prod.workers_of(victim_job) == sorted([victim_host, other_host])  # retried on the other worker
    assert run_of(prod, other_job).run_count == 1, "the other job ran once, undisturbed"


def test_prefect_server_restart_mid_job(production_stack: ProductionStack, apis: list[httpx.Client],
                                        case: Path) -> None:
    prod = production_stack
    api = apis[0]
    job_id = submit(api, case, "fusion")
    follow = Follower({job_id: api})
    follow.running(min_progress=10)

    stopped_at = time.monotonic()
    prod.stop("prefect")
    answers: dict[int, list[dict[str, Any]]] = {}
    try:
        deadline = time.monotonic() + 60
        while not all(any(r.status_code == 503 for r in answers.get(i, [])) for i in range(len(apis))):
            assert time.monotonic() < deadline, {i: [r.status_code for r in rs] for i, rs in answers.items()}
            for i, client in enumerate(apis):
                answers.setdefault(i, []).append(client.get(f"/jobs/{job_id}"))
            time.sleep(0.5)
        first_503_s = time.monotonic() - stopped_at
    finally:
        restart_started = time.monotonic()
        prod.start_prefect()
    restart_s = time.monotonic() - restart_started
    codes = sorted({r.status_code for rs in answers.values() for r in rs})
    assert set(codes) <= {200, 503}, codes  # a stale view from memory, then 503; never a 500
    for r in (r for rs in answers.values() for r in rs if r.status_code == 503):
        assert_unavailable_envelope(r)

    follow.all_final()
    report("Prefect server stopped and started again", first_503_after_s=round(first_503_s, 1),
           server_restart_s=round(restart_s, 1), stop_to_completed_s=round(follow.done_at[job_id] - stopped_at, 1),
           status_codes_while_down=codes)
    assert_completed_with_zip(api, prod, job_id, follow.seen[job_id])
    for other in apis[1:]:
        assert other.get(f"/jobs/{job_id}").json()["status"] == "completed"


DB_OUTAGE_SECONDS = 12.0


def poll_statuses(jobs: dict[str, httpx.Client], seconds: float) -> list[int]:
    """Poll every job for `seconds`; every answer is a status or a 503 with the error envelope."""
    codes: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for job_id, api in jobs.items():
            r = api.get(f"/jobs/{job_id}")
            codes.add(r.status_code)
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert_unavailable_envelope(r)
        time.sleep(0.5)
    return sorted(codes)


def set_pool_paused(paused: bool) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    with get_client(sync_client=True) as client:
        client.update_work_pool("gpu", WorkPoolUpdate(is_paused=paused))


def test_postgres_restart_with_queued_jobs(production_stack: ProductionStack, apis: list[httpx.Client],
                                           case: Path) -> None:
    """Three jobs queued (the pool paused, so that none starts), PostgreSQL stopped and started
    again under the Prefect server, the pool resumed: all three complete."""
    prod = production_stack
    set_pool_paused(True)
    try:
        jobs = {submit(apis[i % 2], case, "fusion"): apis[i % 2] for i in range(3)}
        follow = Follower(jobs)
        follow.poll()
        assert {follow.seen[j][-1] for j in jobs} == {"queued"}, follow.last
        restarted_at = time.monotonic()
        prod.stop("db")
        # the server and the APIs meet a database that is gone: status is the last view, then 503
        codes = poll_statuses(jobs, DB_OUTAGE_SECONDS)
        prod.start_db()
        db_restart_s = time.monotonic() - restarted_at
    finally:
        deadline = time.monotonic() + 120
        while True:  # the Prefect server reconnects to the database on its own
            try:
                set_pool_paused(False)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    resumed_s = time.monotonic() - restarted_at
    follow.all_final(timeout=3 * JOB_TIMEOUT)
    assert prod.procs["prefect"].alive(), "the Prefect server outlived its database's restart"
    report("PostgreSQL restarted with 3 jobs queued", db_down_and_up_s=round(db_restart_s, 1),
           status_codes_while_down=codes,
           prefect_answers_again_s=round(resumed_s, 1),
           restart_to_all_completed_s=round(max(follow.done_at.values()) - restarted_at, 1))
    for job_id, api in jobs.items():
        assert_completed_with_zip(api, prod, job_id, follow.seen[job_id])
        assert run_of(prod, job_id).run_count == 1
