"""Throughput with one and with two workers: prints one JSON object.

Starts the production-like stack of tests/fixtures/production.py (PostgreSQL, the Prefect server,
S3, two APIs, workers on hosts of their own), then twice submits --jobs small fusion jobs
(--res px views, a synthetic case) at once, spread over both APIs: first with worker2 stopped,
then with both workers. Per phase: jobs per minute (first submission to last completion), queue
wait (the flow run's creation -> its RUNNING start, Prefect's own times) and run time (start ->
end) as p50/p95, and the CPU the flow runs used (CPU time their worker processes reaped), to
compare with the CPUs the machine has: with fewer cores than 2 jobs need, 2 workers cannot be 2x.

    .venv/bin/python bench/throughput.py [--jobs 12] [--res 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.production import ProductionStack, start_production_stack  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 2)


def reaped_cpu_seconds(pid: int) -> float:
    """CPU time of the children a process has reaped (the warm-engine server forks every flow run)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICKS  # cutime + cstime


def machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICKS


def job_files(case: Path) -> list:
    files = [("views", (p.name, p.read_bytes(), "image/png")) for p in sorted((case / "views").glob("*.png"))]
    return files + [("depth_renders", (p.name, p.read_bytes(), "image/png")) for p in sorted((case / "depths").glob("*.png"))]


def flow_runs(prefect_api: str, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    body = {"flow_runs": {"name": {"any_": job_ids}}, "limit": 200}
    r = httpx.post(f"{prefect_api}/flow_runs/filter", json=body, timeout=30)
    r.raise_for_status()
    return {run["name"]: run for run in r.json()}


def seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def phase(prod: ProductionStack, files: list, jobs: int, workers: list[str], timeout: float) -> dict[str, Any]:
    urls = prod.api_urls
    cpu_before = sum(reaped_cpu_seconds(prod.procs[w].pid) for w in workers)
    busy_before, wall_before = machine_busy_seconds(), time.monotonic()

    def submit(i: int) -> str:
        r = httpx.post(f"{urls[i % len(urls)]}/jobs", files=files, data={"model_type": "fusion"}, timeout=120)
        r.raise_for_status()
        return r.json()["job_id"]

    with ThreadPoolExecutor(jobs) as pool:
        job_ids = list(pool.map(submit, range(jobs)))
    deadline = time.monotonic() + timeout
    while True:
        runs = flow_runs(prod.prefect_api_url, job_ids)
        states = [(runs.get(j) or {}).get("state_type") for j in job_ids]
        if all(s in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED") for s in states):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not done after {timeout} s: {states}")
        time.sleep(2)
    wall = time.monotonic() - wall_before
    busy = machine_busy_seconds() - busy_before
    cpu = sum(reaped_cpu_seconds(prod.procs[w].pid) for w in workers) - cpu_before
    done = [runs[j] for j in job_ids]
    first_created = min(r["created"] for r in done)
    last_end = max(r["end_time"] for r in done)
    span = seconds_between(first_created, last_end)
    waits = [seconds_between(r["created"], r["start_time"]) for r in done]
    run_times = [seconds_between(r["start_time"], r["end_time"]) for r in done]
    return {
        "workers": len(workers),
        "jobs": jobs,
        "completed": sum(r["state_type"] == "COMPLETED" for r in done),
        "span_s": round(span, 1),
        "jobs_per_min": round(jobs / span * 60, 2),
        "queue_wait_s": {"p50": percentile(waits, 0.5), "p95": percentile(waits, 0.95)},
        "run_time_s": {"p50": percentile(run_times, 0.5), "p95": percentile(run_times, 0.95)},
        "flow_run_cpu_s_per_job": round(cpu / jobs, 1),
        # cores the flow runs used on average vs. cores busy with anything (the stack, neighbours)
        "flow_runs_cores": round(cpu / wall, 2),
        "machine_busy_cores": round(busy / wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--res", type=int, default=256, help="view and depth resolution of the synthetic case")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per phase")
    args = parser.parse_args()

    from recon.synth.cases import load_test_mesh, render_case

    root = Path(tempfile.mkdtemp(prefix="recon-throughput-"))
    root.chmod(0o755)  # PostgreSQL runs as nobody
    case = root / "case"
    render_case(load_test_mesh("spot"), case, fov_deg=40.0, view_res=args.res, depth_res=args.res, novel_views=0,
                supersample=1)
    files = job_files(case)
    prod = start_production_stack(root / "stack")
    try:
        prod.stop("worker2")
        one = phase(prod, files, args.jobs, ["worker1"], args.timeout)
        prod.start_worker("worker2")
        two = phase(prod, files, args.jobs, ["worker1", "worker2"], args.timeout)
    finally:
        prod.close()
        shutil.rmtree(root, ignore_errors=True)
    speedup = round(two["jobs_per_min"] / one["jobs_per_min"], 2)
    cores = os.cpu_count() or 1
    cpu_per_job = one["flow_run_cpu_s_per_job"]
    print(json.dumps({
        "benchmark": "throughput",
        "view_px": args.res,
        "isolated_hosts": prod.network.isolated,
        "cpu_cores": cores,
        "one_worker": one,
        "two_workers": two,
        "speedup": speedup,
        # If every job needs cpu_per_job CPU-seconds and the machine has `cores` cores, no number
        # of workers finishes more than cores * 60 / cpu_per_job jobs a minute.
        "cpu_bound_jobs_per_min": round(cores * 60 / cpu_per_job, 2) if cpu_per_job else None,
        "one_worker_cpu_utilisation": round(cpu_per_job / one["run_time_s"]["p50"], 2) if one["run_time_s"]["p50"] else None,
    }, indent=2))


if __name__ == "__main__":
    main()
