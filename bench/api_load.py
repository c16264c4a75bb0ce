"""API load benchmark: prints one JSON object.

Starts its own embedded stack (Prefect server on SQLite, the deployments, the API in uvicorn and
one process worker polling the `gpu` pool, as the launcher does: deployments.stack) in a
temporary directory, and measures on loopback:

- upload: POST /jobs with 12 PNGs of ~15 MB of random pixels (incompressible); wall time and the
  growth of the API process's peak RSS (VmHWM, reset through /proc/PID/clear_refs before).
- status_latency.own_job_polling (THE TARGET MEASUREMENT): 100 concurrent clients, each polling
  its own job every 5 s (the spec's fastest recommended polling interval) for
  --poll-seconds, over a real mix of jobs: some failed and some cancelled (finished), one
  really running on the worker (the bundled sample, fusion; when it ends the worker starts the
  next queued job), the rest queued behind it. This is the load the spec implies for 100 users.
  Each client's connection is opened (one GET) an interval before the timed polls, as a real
  client polls on the keep-alive connection of its POST; `slowest` lists the worst 1 %.
- status_latency.same_job_closed_loop (a THROUGHPUT figure, not the target): 100 clients on one
  job, each sending its next request as soon as the last one answered. Nothing real polls like
  this; its latency is just 100 / (requests per second) and says how much headroom one API
  process has.
- submit_to_running: POST /jobs -> the flow run's RUNNING state (Prefect's own start_time) on an
  idle stack; each run is then cancelled through the API.

The load generator is one asyncio process (httpx, one connection per simulated client) and
shares the machine's CPU with the API, the Prefect server and the worker's flow run.

Targets: status p99 <= 50 ms, upload adds <= 64 MiB to the API's RSS,
submission-to-RUNNING <= 5 s.

    .venv/bin/python bench/api_load.py [--poll-seconds 60] [--running-rounds 5]
    .venv/bin/python bench/api_load.py --stack production   # PostgreSQL, two APIs, two workers

`--stack production` measures own_job_polling (and the closed loop) on the production-like stack
of tests/fixtures/production.py instead: the Prefect server on PostgreSQL, two API processes on
hosts of their own with the clients spread over both (client i polls API i % 2), S3 storage and
two workers; the API CPU figures add up both processes. Upload and submit_to_running are
embedded-stack measurements and are skipped there.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments import stack  # noqa: E402
from deployments.definitions import register  # noqa: E402

CLIENTS = 100
MIB = 1024 * 1024


# ---- inputs -------------------------------------------------------------------------------------


def random_png(width: int, height: int, mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def job_files(view: bytes, depth: bytes, views: list[bytes] | None = None, depths: list[bytes] | None = None) -> list:
    views = views or [view] * 6
    depths = depths or [depth] * 6
    return ([("views", (f"view{i}.png", v, "image/png")) for i, v in enumerate(views)]
            + [("depth_renders", (f"depth{i}.png", d, "image/png")) for i, d in enumerate(depths)])


# ---- process memory -----------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (what the API itself spent, whatever else runs here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---- measurements -------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50_ms": round(pick(0.50) * 1000, 2), "p99_ms": round(pick(0.99) * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2), "requests": len(ordered)}


async def status_load(base: str | list[str], api_pid: int | list[int], job_ids: list[str], per_client: int,
                      interval: float = 0.0) -> dict[str, Any]:
    """CLIENTS concurrent pollers; client i polls job_ids[i % len(job_ids)] `per_client` times,
    every `interval` seconds (0: closed loop, the next request as soon as the last one answered),
    through API base[i % len(base)] when there are several."""
    bases = [base] if isinstance(base, str) else base
    pids = [api_pid] if isinstance(api_pid, int) else api_pid
    samples: list[float] = []
    timeline: list[tuple[float, float, str | None]] = []  # (sent at, latency, job status) per request
    errors: list[str] = []
    seen: dict[str, dict[str, int]] = {"first": {}, "last": {}}  # job statuses the clients saw
    # One AsyncClient (one connection) per simulated client, as 100 real clients would have: a
    # single pool of 100 connections spends most of its time in httpcore's own bookkeeping.
    clients = [httpx.AsyncClient(base_url=bases[i % len(bases)], timeout=30) for i in range(CLIENTS)]

    async def one_client(i: int) -> None:
        client, job_id = clients[i], job_ids[i % len(job_ids)]
        if interval:
            await asyncio.sleep(interval * i / CLIENTS)  # spread the pollers over the interval
        status = None
        for n in range(per_client):
            t0 = time.perf_counter()
            try:
                response = await client.get(f"/jobs/{job_id}")
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}")
                else:
                    status = response.json()["status"]
                    if n == 0:
                        seen["first"][status] = seen["first"].get(status, 0) + 1
            except httpx.TransportError as exc:  # counted, not fatal: the numbers still say something
                errors.append(type(exc).__name__)
                continue
            elapsed = time.perf_counter() - t0
            samples.append(elapsed)
            timeline.append((t0 - started, elapsed, status))
            if interval:
                await asyncio.sleep(max(0.0, interval - elapsed))
        if status:
            seen["last"][status] = seen["last"].get(status, 0) + 1

    try:
        # Open the connections first, so setup is not counted: a real client polls on the
        # keep-alive connection of its POST /jobs (the API keeps idle ones for 75 s).
        await asyncio.gather(*(c.get(f"/jobs/{job_ids[i % len(job_ids)]}") for i, c in enumerate(clients)))
        if interval:
            await asyncio.sleep(interval)  # the pollers' own first polls start one interval later
        started, cpu0 = time.perf_counter(), sum(map(cpu_seconds, pids))
        await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
        wall, cpu = time.perf_counter() - started, sum(map(cpu_seconds, pids)) - cpu0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    out: dict[str, Any] = {**percentiles(samples), "errors": len(errors), "error_kinds": sorted(set(errors)),
           "requests_per_s": round(len(samples) / wall, 1), "interval_s": interval or None,
           "api_cpu_ms_per_request": round(1000 * cpu / max(1, len(samples)), 3)}
    if interval:
        out["job_statuses_seen"] = seen
        # Where the tail is: the slowest 1 % with when they were sent (s into the run) and the
        # status their job had, so a burst (one pause of the API) shows as close send times.
        slowest = sorted(timeline, key=lambda t: -t[1])[:max(1, len(timeline) // 100)]
        out["slowest"] = [[round(at, 2), round(ms * 1000, 1), status] for at, ms, status in sorted(slowest)]
    return out


def submit(client: httpx.Client, files: list, model_type: str = "fusion") -> str:
    response = client.post("/jobs", files=files, data={"model_type": model_type})
    response.raise_for_status()
    return response.json()["job_id"]


def cancel(client: httpx.Client, job_id: str, finished_ok: bool = False) -> None:
    """Two-step cancel; with `finished_ok`, a job that already finished (400 JOB_NOT_READY) is
    left as it is."""
    for body in (None, {"confirm": True}):
        response = client.post(f"/jobs/{job_id}/cancel", json=body)
        if finished_ok and response.status_code == 400 and response.json()["error"]["code"] == "JOB_NOT_READY":
            return
        response.raise_for_status()


def measure_upload(client: httpx.Client, api_pid: int) -> dict[str, Any]:
    views = [random_png(2200, 2200, "RGB", seed=i) for i in range(6)]  # ~14.5 MB each
    depths = [random_png(3800, 3800, "L", seed=10 + i) for i in range(6)]  # ~14.5 MB each
    sizes = [len(b) for b in views + depths]
    before = proc_status(api_pid)
    reset = reset_peak_rss(api_pid)
    t0 = time.perf_counter()
    job_id = submit(client, job_files(b"", b"", views, depths))
    wall = time.perf_counter() - t0
    after = proc_status(api_pid)
    cancel(client, job_id)
    return {
        "files": len(sizes), "total_mb": round(sum(sizes) / 1e6, 1), "largest_file_mb": round(max(sizes) / 1e6, 2),
        "post_seconds": round(wall, 3),
        "api_rss_before_mib": round(before["VmRSS"] / MIB, 1),
        "api_peak_rss_mib": round(after["VmHWM"] / MIB, 1),
        "api_peak_rss_delta_mib": round((after["VmHWM"] - before["VmRSS"]) / MIB, 1),
        "peak_reset": reset,
    }


def flow_run_of(prefect_api: str, job_id: str) -> dict[str, Any] | None:
    response = httpx.post(f"{prefect_api}/flow_runs/filter", json={
        "flow_runs": {"tags": {"all_": [f"job:{job_id}"]}}, "limit": 1}, timeout=10)
    response.raise_for_status()
    runs = response.json()
    return runs[0] if runs else None


def wait_state(prefect_api: str, job_id: str, states: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = flow_run_of(prefect_api, job_id)
        if run and run["state_type"] in states:
            return run
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not reach {states} within {timeout} s")


def prepare_job_mix(client: httpx.Client, prefect_api: str, small: list, sample: list,
                    failed: int = 3, cancelled: int = 16) -> list[str]:
    """CLIENTS real jobs in a mix of states: `failed` jobs the worker ran to failure (reconviagen:
    no weights on this host), one running (the bundled sample, fusion), `cancelled` queued jobs
    cancelled through the API, and the rest queued behind the running one (pool limit 1)."""
    failing = [submit(client, small, "reconviagen") for _ in range(failed)]
    for job_id in failing:
        wait_state(prefect_api, job_id, {"FAILED", "CRASHED", "COMPLETED"}, 300)
    running = submit(client, sample, "fusion")
    wait_state(prefect_api, running, {"RUNNING"}, 120)
    queued = [submit(client, small) for _ in range(CLIENTS - failed - 1)]
    for job_id in queued[:cancelled]:
        cancel(client, job_id, finished_ok=True)  # the worker may have run it already
    return failing + [running] + queued


def sample_files() -> list:
    """The bundled sample (samples/sample: views/ and depths/, one PNG per rig view)."""
    root = stack.PROJECT_ROOT / "samples" / "sample"
    return ([("views", (p.name, p.read_bytes(), "image/png")) for p in sorted((root / "views").glob("*.png"))]
            + [("depth_renders", (p.name, p.read_bytes(), "image/png")) for p in sorted((root / "depths").glob("*.png"))])


def measure_submit_to_running(client: httpx.Client, prefect_api: str, rounds: int, files: list) -> dict[str, Any]:
    from datetime import datetime

    samples = []
    for _ in range(rounds):
        t0 = time.time()
        job_id = submit(client, files)
        run = wait_state(prefect_api, job_id, {"RUNNING", "COMPLETED", "FAILED", "CRASHED"}, 120)
        started = datetime.fromisoformat(run["start_time"] or run["state"]["timestamp"]).timestamp()
        samples.append(round(started - t0, 3))
        cancel(client, job_id)
        wait_state(prefect_api, job_id, {"CANCELLED", "COMPLETED", "FAILED", "CRASHED"}, 120)
        time.sleep(3)  # the worker's process is gone: idle again
    return {"seconds": samples, "median_s": statistics.median(samples), "max_s": max(samples)}


def wait_idle(prefect_api: str, timeout: float = 180) -> int:
    """Until no flow run is pending, running or being stopped (the worker has nothing to do, and
    no process holds the pool's slot: a Cancelling run that ran still does); returns how many
    still are when `timeout` is over. A run cancelled in the moment between the worker's pickup
    and its start stays Cancelling, without a process, until Prefect expires it minutes later:
    it does not count."""
    deadline = time.monotonic() + timeout
    body = {"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}}, "limit": 200}
    busy: list = []
    while time.monotonic() < deadline:
        runs = httpx.post(f"{prefect_api}/flow_runs/filter", json=body, timeout=10).json()
        busy = [r for r in runs if r["state"]["type"] != "CANCELLING" or r["start_time"]]
        if not busy:
            break
        time.sleep(0.5)
    return len(busy)


TARGET_NOTE = ("status_latency.own_job_polling is the target measurement: 100 clients each polling their own "
               "job at the spec's recommended interval (5 s or more) is the load the API contract implies; "
               "same_job_closed_loop is a throughput figure (its latency is clients / throughput by construction)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-client", type=int, default=20, help="closed loop: requests per client")
    parser.add_argument("--poll-interval", type=float, default=5.0,
                        help="seconds between one client's polls (the spec recommends 5-30)")
    parser.add_argument("--poll-seconds", type=float, default=60.0, help="how long the pollers poll")
    parser.add_argument("--running-rounds", type=int, default=5, help="0 skips submit_to_running")
    parser.add_argument("--skip-upload", action="store_true")
    parser.add_argument("--stack", choices=["embedded", "production"], default="embedded")
    args = parser.parse_args()
    if args.stack == "production":
        production(args)
        return

    root = Path(tempfile.mkdtemp(prefix="api-bench-"))
    home, data_dir, logs = root / "prefect", root / "data", root / "logs"
    env = {"RECON_DATA_DIR": str(data_dir), "RECON_STORAGE": "fs", "RECON_DEVICE": "cpu"}
    procs: list[stack.ManagedProcess] = []
    result: dict[str, Any] = {"clients": CLIENTS, "cpu_count": os.cpu_count(), "target_measurement": TARGET_NOTE}
    try:
        server, prefect_api = stack.start_prefect_server(home, stack.free_port(), logs, ui=False)
        procs.append(server)
        register(prefect_api, gpu_slots=1, zombie_seconds=60)
        port = stack.free_port()
        api = stack.start_api(home, prefect_api, "127.0.0.1", port, logs, env)
        procs.append(api)
        base = f"http://127.0.0.1:{port}"
        small = job_files(random_png(64, 64, "RGB", 1), random_png(64, 64, "L", 2))

        with httpx.Client(base_url=base, timeout=120) as client:
            if not args.skip_upload:  # no worker yet: nothing else competes for the CPU
                result["upload"] = measure_upload(client, api.pid)
            worker = stack.start_worker(home, prefect_api, "gpu", logs, env)
            procs.append(worker)
            stack.wait_worker_online(prefect_api, "gpu", worker)

            job_ids = prepare_job_mix(client, prefect_api, small, sample_files())
            polls = max(1, int(args.poll_seconds / args.poll_interval))
            result["status_latency"] = {
                "own_job_polling": asyncio.run(status_load(base, api.pid, job_ids, polls, args.poll_interval)),
                "same_job_closed_loop": asyncio.run(status_load(base, api.pid, job_ids[-1:], args.requests_per_client)),
            }
            for job_id in reversed(job_ids):  # the queued ones first: the worker must not start them
                if client.get(f"/jobs/{job_id}").json()["status"] in ("queued", "processing"):
                    cancel(client, job_id)

            print(json.dumps(result["status_latency"]), file=sys.stderr, flush=True)
            if args.running_rounds > 0:
                busy = wait_idle(prefect_api)
                time.sleep(3)
                result["submit_to_running"] = {
                    "worker_query_seconds": stack.WORKER_QUERY_SECONDS, "busy_runs_before": busy,
                    **measure_submit_to_running(client, prefect_api, args.running_rounds, small),
                }
        finish(result)
    finally:
        for proc in reversed(procs):
            proc.stop()


def production(args: argparse.Namespace) -> None:
    """own_job_polling on the production-like stack, clients spread over its two APIs."""
    from tests.fixtures.production import start_production_stack

    root = Path(tempfile.mkdtemp(prefix="api-bench-production-"))
    root.chmod(0o755)  # PostgreSQL runs as nobody
    prod = start_production_stack(root)
    result: dict[str, Any] = {"stack": "production", "clients": CLIENTS, "cpu_count": os.cpu_count(),
                              "apis": len(prod.api_urls), "isolated_hosts": prod.network.isolated,
                              "target_measurement": TARGET_NOTE}
    try:
        bases, pids = prod.api_urls, [prod.procs[name].pid for name in ("api1", "api2")]
        small = job_files(random_png(64, 64, "RGB", 1), random_png(64, 64, "L", 2))
        with httpx.Client(base_url=bases[0], timeout=120) as client:
            job_ids = prepare_job_mix(client, prod.prefect_api_url, small, sample_files())
            polls = max(1, int(args.poll_seconds / args.poll_interval))
            result["status_latency"] = {
                "own_job_polling": asyncio.run(status_load(bases, pids, job_ids, polls, args.poll_interval)),
                "same_job_closed_loop": asyncio.run(status_load(bases, pids, job_ids[-1:], args.requests_per_client)),
            }
        finish(result)
    finally:
        prod.close()
        shutil.rmtree(root, ignore_errors=True)


def finish(result: dict[str, Any]) -> None:
    targets: dict[str, Any] = {"status_p99_le_50ms": result["status_latency"]["own_job_polling"]["p99_ms"] <= 50}
    if "upload" in result:
        targets["upload_rss_delta_le_64mib"] = result["upload"]["api_peak_rss_delta_mib"] <= 64
    if "submit_to_running" in result:
        targets["submit_to_running_le_5s"] = result["submit_to_running"]["max_s"] <= 5
    result["targets"] = targets
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
