"""Job views served from memory, kept current by one background refresh for all polled jobs.

Why: every client polls GET /jobs/{id}, and building a view costs a storage read and one or two
Prefect API requests. Done per request (or per cache miss), 100 clients polling their own jobs
are 100+ Prefect requests per second, more than a Prefect server on two cores answers in time.
So a job, once polled, is *watched*: every `REFRESH_SECONDS` one `JobWatcher` task reads the
flow runs of all watched jobs with ONE Prefect request (by id) and the progress artifacts of
the processing ones with ONE more, and rebuilds their views. A status request is then a
dictionary lookup.

Staleness, bounded and documented (README "Job status"): a state change, a progress update or
an error shows within REFRESH_SECONDS plus one refresh round trip (about 1 s). A view that
could not be refreshed for MAX_STALE_SECONDS (Prefect unreachable; for a final run, beyond its
recheck interval) is not served: the request loads the job itself, and fails the way a direct
read would: with Prefect unreachable (or answering 5xx) that is 503 with the error envelope
within PREFECT_READ_TIMEOUT_SECONDS, not a 500 after the Prefect client's minute of retries.

What is read when:
- flow runs: every refresh, for watched jobs that are not final; final runs (Completed, Failed,
  Cancelled) every FINAL_RECHECK_SECONDS, since only a forced state change moves them (Crashed
  runs are refreshed every time: the crash automation requeues them).
  Rows are parsed as plain JSON and only runs with a new state are validated (jobs.lifecycle.runs'
  `read_flow_runs_by_id`), and a view is rebuilt only when one of its parts changed: the
  refresh runs on the event loop that answers the polls, so its CPU is their latency tail;
- progress artifacts: every refresh, for jobs whose view uses them (`needs_progress`);
- the job record (object store): when the run's state changed (the flow writes the error and
  results before its final state) and at least every RECORD_RECHECK_SECONDS (cleanup, another
  API replica's cancel request; at most RECORD_RECHECKS_PER_REFRESH of those per refresh, oldest
  first); the record is otherwise immutable.
- A job nobody polled for WATCH_IDLE_SECONDS is dropped; its next poll loads it directly.
- Never-seen or unknown ids are loaded directly (one storage read: 404 when there is no record).
- Cancel and download ask for `fresh=True`: they decide on the state read now, and their
  changes invalidate the watched view. POST /jobs seeds the view of the job it created.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from jobs.lifecycle import JobRecord, load_record, status_of
from jobs.lifecycle.progress import ReportedProgress, read_jobs_progress
from jobs.lifecycle.runs import (
    find_flow_run,
    is_unavailable,
    prefect_unavailable,
    read_flow_runs_by_id,
)
from jobs.lifecycle.view import JobView, build_view, needs_progress, read_view
from jobs.storage import ObjectStore

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from api.context import ApiContext

log = logging.getLogger("api")

REFRESH_SECONDS = 1.0
MAX_STALE_SECONDS = 10.0
FINAL_RECHECK_SECONDS = 30.0
RECORD_RECHECK_SECONDS = 30.0
RECORD_RECHECKS_PER_REFRESH = 10
YIELD_EVERY = 16  # views rebuilt between yields to the event loop
# Far longer than the spec's slowest polling interval (30 s): a client that submits and looks
# again minutes later is still answered from memory (a cold lookup is 2-3 Prefect requests,
# 100-500 ms on a busy host). A watched job costs one row in the refresh's batched read.
WATCH_IDLE_SECONDS = 900.0
# How long a direct read (a miss, cancel, download) waits for Prefect before answering 503: the
# Prefect client retries a refused connection with backoff for about a minute, far longer than
# a client's request should hang while the server restarts.
PREFECT_READ_TIMEOUT_SECONDS = 5.0
@dataclass
class _Watched:
    """One watched job: what its view was built from, and when each part was read."""

    record: JobRecord
    run: FlowRun | None
    progress: ReportedProgress
    view: JobView
    fetched: float  # monotonic time of the last successful refresh (run state)
    record_read: float
    polled: float = field(default_factory=time.monotonic)

    @property
    def final(self) -> bool:
        state = self.run.state if self.run is not None else None
        # Crashed is final to Prefect, not to us: the crash automation requeues the run at once.
        return state is not None and state.is_final() and not state.is_crashed()

    @property
    def max_age(self) -> float:
        """How old the data may be before a poll reads the job itself (refreshes failing)."""
        return FINAL_RECHECK_SECONDS + MAX_STALE_SECONDS if self.final else MAX_STALE_SECONDS


def _state_id(run: FlowRun | None) -> object:
    return run.state.id if run is not None and run.state is not None else None


def _load_records(store: ObjectStore, job_ids: list[str]) -> dict[str, JobRecord | None]:
    return {job_id: load_record(store, job_id) for job_id in job_ids}


class JobWatcher:
    """GET /jobs/{id} from memory; see the module docstring for what is refreshed when."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._watched: dict[str, _Watched] = {}
        self._inflight: dict[str, asyncio.Task[_Watched | None]] = {}
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle (the app's lifespan) -------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # ---- what routes call ------------------------------------------------------------------

    async def get(self, job_id: str, *, fresh: bool = False) -> JobView | None:
        """The job's view, or None when no record exists. `fresh` reads it now (cancel,
        download); otherwise a watched job is answered from memory."""
        if fresh:
            entry = await self._load(job_id)
            self._watch(job_id, entry)
            return entry.view if entry is not None else None
        entry = self._watched.get(job_id)
        now = time.monotonic()
        if entry is not None and now - entry.fetched < entry.max_age:
            entry.polled = now
            return entry.view
        task = self._inflight.get(job_id)
        if task is None:
            # A task of its own, so that a client hanging up does not cancel the lookup other
            # requests for this job wait on (single flight).
            task = asyncio.ensure_future(self._load(job_id))
            self._inflight[job_id] = task
            task.add_done_callback(partial(self._loaded, job_id))
        entry = await asyncio.shield(task)
        return entry.view if entry is not None else None

    def invalidate(self, job_id: str) -> None:
        """Forget the job's view (the caller changed the job); the next poll reads it anew."""
        self._watched.pop(job_id, None)

    def seed(self, record: JobRecord, run: FlowRun) -> None:
        """Watch a job just created (POST /jobs): its first poll needs no lookup."""
        now = time.monotonic()
        progress = ReportedProgress()
        self._watched[record.job_id] = _Watched(record, run, progress, build_view(record, run, progress), now, now)

    # ---- loading one job (a miss) ------------------------------------------------------------

    def _loaded(self, job_id: str, task: asyncio.Task[_Watched | None]) -> None:
        if self._inflight.get(job_id) is task:
            del self._inflight[job_id]
        if not task.cancelled() and task.exception() is None:  # exception(): marks it retrieved
            self._watch(job_id, task.result())

    def _watch(self, job_id: str, entry: _Watched | None) -> None:
        if entry is not None:
            self._watched[job_id] = entry
        else:
            self._watched.pop(job_id, None)

    async def _load(self, job_id: str) -> _Watched | None:
        record = await self.ctx.io(load_record, self.ctx.store, job_id)
        if record is None:
            return None
        fetched = time.monotonic()
        try:
            return await asyncio.wait_for(self._load_run(record, fetched), PREFECT_READ_TIMEOUT_SECONDS)
        except Exception as exc:
            if is_unavailable(exc):
                raise prefect_unavailable(job_id, exc) from exc
            raise

    async def _load_run(self, record: JobRecord, fetched: float) -> _Watched:
        run, progress, view = await read_view(self.ctx.prefect, record)
        return _Watched(record, run, progress, view, fetched, fetched)

    # ---- the background refresh ----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Prefect or storage down: views age until MAX_STALE_SECONDS
                log.warning("job status refresh failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(max(0.05, REFRESH_SECONDS - (time.monotonic() - started)))

    async def refresh(self) -> None:
        """One refresh of every watched job that is due (see the module docstring)."""
        now = time.monotonic()
        for job_id in [j for j, e in self._watched.items() if now - e.polled > WATCH_IDLE_SECONDS]:
            del self._watched[job_id]
        due = {j: e for j, e in self._watched.items() if not e.final or now - e.fetched >= FINAL_RECHECK_SECONDS}
        if not due:
            return
        client = self.ctx.prefect
        by_run = await read_flow_runs_by_id(client, {e.run.id: e.run for e in due.values() if e.run is not None})
        runs: dict[str, FlowRun | None] = {}
        for job_id, entry in due.items():
            if entry.run is not None and entry.run.id in by_run:
                runs[job_id] = by_run[entry.run.id]
            else:  # no run yet (submission racing the first poll) or the run was deleted: rare
                runs[job_id] = await find_flow_run(client, job_id, entry.record.flow_run_id)

        changed = {j for j, e in due.items() if _state_id(runs[j]) != _state_id(e.run)}
        # Periodic rechecks, oldest first and a few per refresh: jobs polled since the same
        # moment would otherwise all be re-read (and their views rebuilt) in one refresh.
        stale = sorted((e.record_read, j) for j, e in due.items()
                       if j not in changed and now - e.record_read >= RECORD_RECHECK_SECONDS)
        reread = [*changed, *(j for _, j in stale[:RECORD_RECHECKS_PER_REFRESH])]
        records = await self.ctx.io(_load_records, self.ctx.store, reread) if reread else {}
        records_read = time.monotonic()

        with_progress: list[str] = []
        for j, e in due.items():
            job_run = runs[j]
            if job_run is not None and needs_progress(records.get(j) or e.record, status_of(job_run.state)):
                with_progress.append(j)
        progress = await read_jobs_progress(client, with_progress) if with_progress else {}
        rebuilt = 0

        for job_id, entry in due.items():
            if self._watched.get(job_id) is not entry:
                continue  # invalidated or reloaded while we read: that view is newer
            if job_id in records and records[job_id] is None:  # record deleted: the job is gone
                del self._watched[job_id]
                continue
            record = records.get(job_id) or entry.record
            run, prog = runs[job_id], progress.get(job_id, ReportedProgress())
            if record != entry.record or _state_id(run) != _state_id(entry.run) or prog != entry.progress:
                entry.view = build_view(record, run, prog)
                rebuilt += 1
                if rebuilt % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # many changed at once (e.g. runs turning Late): let requests in
            if job_id in records:
                entry.record_read = records_read
            entry.record, entry.run, entry.progress, entry.fetched = record, run, prog, now
