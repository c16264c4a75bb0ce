"""GET /jobs/{id}/events over real HTTP: the job sits on a deployment no worker polls and the test
moves it through Prefect as a worker would (test_api_jobs.py), reading the raw event stream."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import httpx

from tests.fixtures.api import ApiServer
from tests.test_api_jobs import STATUS_KEYS, error_of, report_progress, set_state, submit


class RawStream:
    """Lines of one event stream, read on a thread, with the time each arrived."""

    def __init__(self, server: ApiServer, job_id: str) -> None:
        self.lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self.headers: dict[str, str] = {}
        self.opened = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(server.url, job_id), daemon=True)
        self._thread.start()
        assert self.opened.wait(30), "the stream did not open"

    def _read(self, url: str, job_id: str) -> None:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=60)) as client:
            with client.stream("GET", f"/jobs/{job_id}/events") as response:
                self.headers = dict(response.headers)
                self.opened.set()
                for line in response.iter_lines():
                    self.lines.put((time.monotonic(), line))
        self.lines.put((time.monotonic(), None))  # the server ended the stream

    def events_until(self, done: Any, timeout: float = 30.0) -> tuple[list[dict[str, Any]], list[str]]:
        """Parsed status events and comment lines until `done(event)` or the stream's end."""
        events: list[dict[str, Any]] = []
        comments: list[str] = []
        name, data = None, []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data.append(line.partition(":")[2].strip())
            elif line == "" and data:
                assert name == "status", name
                events.append(json.loads("\n".join(data)))
                name, data = None, []
                if done(events[-1]):
                    break
        return events, comments

    def ended(self, timeout: float = 10.0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def test_events_follow_a_job_to_its_end(api: httpx.Client, api_server: ApiServer) -> None:
    from prefect.states import Completed, Running

    job_id = submit(api, "fusion")
    stream = RawStream(api_server, job_id)
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-cache" and stream.headers["x-accel-buffering"] == "no"

    # Sent at once; then the job waits (its run turns Late: a new updated_at, one more event) and a
    # keep-alive comment arrives (every 15 s).
    events, comments = stream.events_until(lambda e: False, timeout=17)
    current = {**api.get(f"/jobs/{job_id}").json(), "stage": None}
    if not events or events[-1] != current:  # the run turned Late just now: its event is a poll behind
        later, _ = stream.events_until(lambda e: e == current, timeout=5)
        events += later
    assert comments == [": keep-alive"] and 1 <= len(events) <= 2, (events, comments)
    assert all(set(e) == STATUS_KEYS | {"stage"} for e in events)
    assert all(e["job_id"] == job_id and e["status"] == "queued" and e["stage"] is None for e in events)
    assert events[-1] == current

    set_state(api_server, job_id, Running())
    report_progress(job_id, 40, [{"model": "fusion", "status": "running", "stage": "inference", "progress": 30}])
    events, _ = stream.events_until(lambda e: e["stage"] == "inference")
    assert events and events[-1]["status"] == "processing" and events[-1]["progress"] == 40
    assert all(e["status"] == "processing" for e in events)

    report_progress(job_id, 88, [{"model": "fusion", "status": "running", "stage": "metrics", "progress": 95}])
    set_state(api_server, job_id, Completed())
    events, _ = stream.events_until(lambda e: e["status"] == "completed")
    assert events[-1]["status"] == "completed" and events[-1]["progress"] == 100 and events[-1]["stage"] is None
    statuses = [e["status"] for e in events]
    assert statuses == sorted(statuses, key=["processing", "completed"].index)  # never back to processing
    assert stream.ended(), "the stream stays open after the terminal status"
    rest, _ = stream.events_until(lambda e: False, timeout=1)
    assert rest == []


def test_events_of_an_unknown_job_are_a_404_envelope(api: httpx.Client) -> None:
    response = api.get("/jobs/zzzz0000/events")
    err = error_of(response, 404, "JOB_NOT_FOUND")
    assert err["details"] == {"job_id": "zzzz0000"}


def test_events_of_a_finished_job_end_after_one_event(api: httpx.Client, api_server: ApiServer) -> None:
    from prefect.states import Failed

    job_id = submit(api, "fusion")
    set_state(api_server, job_id, Failed(message="boom"))
    deadline = time.monotonic() + 10
    while api.get(f"/jobs/{job_id}").json()["status"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.3)
    response = api.get(f"/jobs/{job_id}/events")  # returns only because the server ends the stream
    assert response.status_code == 200
    data = [line for line in response.text.splitlines() if line.startswith("data:")]
    assert len(data) == 1
    body = json.loads(data[0].partition(":")[2])
    assert body["status"] == "failed" and body["error"]["code"] == "MODEL_FAILED"
