"""API load benchmark: prints one JSON object.

Starts its own embedded stack (Prefect server on SQLite, the deployments, the API in uvicorn, and
later one process worker) in a temporary directory, the same way the launcher does
(deployments.stack), and measures on loopback:

- status_latency: GET /jobs/{id} at 100 concurrent clients (httpx async, 100 connections), a
  bounded number of requests each. `same_job_closed_loop`: all clients on one job, each sending
  its next request as soon as the last one answered (the worst case for the API itself; the view
  is cached for a second). `own_job_polling`: each client polls its own job every 2 s (2.5x the
  spec's fastest recommended interval), so nearly every request misses the cache and costs a
  storage read and a Prefect request.
- upload: POST /jobs with 12 PNGs of ~15 MB of random pixels (incompressible); wall time and the
  growth of the API process's peak RSS (VmHWM, reset through /proc/PID/clear_refs before).
- submit_to_running: POST /jobs -> the flow run's RUNNING state on an idle stack with one worker
  polling at the stack's interval; each run is then cancelled through the API.

Targets (issue 3): status p99 <= 50 ms, upload adds <= 64 MiB to the API's RSS,
submission-to-RUNNING <= 5 s.

    .venv/bin/python bench/api_load.py [--requests-per-client 20] [--running-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
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


async def status_load(base: str, api_pid: int, job_ids: list[str], per_client: int, interval: float = 0.0) -> dict[str, Any]:
    """CLIENTS concurrent pollers; client i polls job_ids[i % len(job_ids)], every `interval`
    seconds (0: closed loop, the next request as soon as the last one answered)."""
    samples: list[float] = []
    errors: list[str] = []
    # One AsyncClient (one connection) per simulated client, as 100 real clients would have: a
    # single pool of 100 connections spends most of its time in httpcore's own bookkeeping.
    clients = [httpx.AsyncClient(base_url=base, timeout=30) for _ in range(CLIENTS)]

    async def one_client(i: int) -> None:
        client, job_id = clients[i], job_ids[i % len(job_ids)]
        if interval:
            await asyncio.sleep(interval * i / CLIENTS)  # spread the pollers over the interval
        for _ in range(per_client):
            t0 = time.perf_counter()
            try:
                response = await client.get(f"/jobs/{job_id}")
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}")
            except httpx.TransportError as exc:  # counted, not fatal: the numbers still say something
                errors.append(type(exc).__name__)
                continue
            elapsed = time.perf_counter() - t0
            samples.append(elapsed)
            if interval:
                await asyncio.sleep(max(0.0, interval - elapsed))

    try:
        if not interval:  # closed loop: open the connections first, so setup is not counted
            await asyncio.gather(*(c.get(f"/jobs/{job_ids[i % len(job_ids)]}") for i, c in enumerate(clients)))
        t0, cpu0 = time.perf_counter(), cpu_seconds(api_pid)
        await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(api_pid) - cpu0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return {**percentiles(samples), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "requests_per_s": round(len(samples) / wall, 1), "interval_s": interval or None,
            "api_cpu_ms_per_request": round(1000 * cpu / max(1, len(samples)), 3)}


def submit(client: httpx.Client, files: list, model_type: str = "fusion") -> str:
    response = client.post("/jobs", files=files, data={"model_type": model_type})
    response.raise_for_status()
    return response.json()["job_id"]


def cancel(client: httpx.Client, job_id: str) -> None:
    client.post(f"/jobs/{job_id}/cancel").raise_for_status()
    client.post(f"/jobs/{job_id}/cancel", json={"confirm": True}).raise_for_status()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-client", type=int, default=20)
    parser.add_argument("--paced-requests-per-client", type=int, default=5)
    parser.add_argument("--poll-interval", type=float, default=2.0,
                        help="seconds between one client's polls (the spec recommends 5-30)")
    parser.add_argument("--running-rounds", type=int, default=3, help="0 skips the worker part")
    parser.add_argument("--skip-upload", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="api-bench-"))
    home, data_dir, logs = root / "prefect", root / "data", root / "logs"
    env = {"RECON_DATA_DIR": str(data_dir), "RECON_STORAGE": "fs", "RECON_DEVICE": "cpu"}
    procs: list[stack.ManagedProcess] = []
    result: dict[str, Any] = {"clients": CLIENTS, "cpu_count": os.cpu_count()}
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
            # No worker yet: every job below stays queued, so nothing else competes for the CPU.
            if not args.skip_upload:
                result["upload"] = measure_upload(client, api.pid)
            job_ids = [submit(client, small) for _ in range(CLIENTS)]
            result["status_latency"] = {
                "same_job_closed_loop": asyncio.run(status_load(base, api.pid, job_ids[:1], args.requests_per_client)),
                "own_job_polling": asyncio.run(status_load(base, api.pid, job_ids, args.paced_requests_per_client,
                                                           args.poll_interval)),
            }
            for job_id in job_ids:
                cancel(client, job_id)

            if args.running_rounds <= 0:
                return finish(result)
            worker = stack.start_worker(home, prefect_api, "gpu", logs, env)
            procs.append(worker)
            stack.wait_worker_online(prefect_api, "gpu", worker)
            time.sleep(3)
            result["submit_to_running"] = {
                "worker_query_seconds": stack.WORKER_QUERY_SECONDS,
                **measure_submit_to_running(client, prefect_api, args.running_rounds, small),
            }
        finish(result)
    finally:
        for proc in reversed(procs):
            proc.stop()


def finish(result: dict[str, Any]) -> None:
    targets: dict[str, Any] = {"status_p99_le_50ms": {k: v["p99_ms"] <= 50 for k, v in result["status_latency"].items()}}
    if "upload" in result:
        targets["upload_rss_delta_le_64mib"] = result["upload"]["api_peak_rss_delta_mib"] <= 64
    if "submit_to_running" in result:
        targets["submit_to_running_le_5s"] = result["submit_to_running"]["max_s"] <= 5
    result["targets"] = targets
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
