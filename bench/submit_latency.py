"""Submission-to-processing benchmark: prints one JSON object.

Starts the embedded stack exactly as `make run` does (deployments.embedded.EmbeddedStack: Prefect
server on SQLite, the deployments, a worker per pool, the API) in a temporary data directory,
then submits the bundled sample (samples/sample) `--rounds` times in sequence over HTTP and
measures, for each job, the seconds from the start of its POST /jobs until GET /jobs/{id}
(polled every 50 ms) first answers `processing`: what a client sees, including the API's status
refresh. `running_s` is the same job's flow run start (Prefect's start_time) for comparison. Each
job is cancelled through the API once it is processing, and the next one is submitted when the
worker is idle again.

Modes (`--modes`, both by default), on the same stack:
- `stack`: the deployments as the stack registers them (deployments/definitions.py's flow-run
  command, so the warm engine where the stack has one);
- `cold`: the `reconstruct` deployment's command set to `nice -n 10 python -m prefect.engine`,
  a fresh interpreter that imports Prefect and the flow for every run.

Target: submission-to-processing <= 3 s.

    .venv/bin/python bench/submit_latency.py [--rounds 5] [--modes stack,cold]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_load import flow_run_of, wait_idle
from deployments import stack
from deployments.definitions import DEPLOYMENTS, FLOW_RUN_NICENESS, local_job_variables
from deployments.embedded import SAMPLE_DIR, EmbeddedStack, api_client, submit_sample
from jobs.settings import get_settings
from recon_client import ApiError, ReconClient

TARGET_SECONDS = 3.0
POLL_SECONDS = 0.05
COLD_COMMAND = ["nice", "-n", str(FLOW_RUN_NICENESS), sys.executable, "-m", "prefect.engine"]


def set_reconstruct_command(prefect_api: str, command: list[str] | None) -> None:
    """Give the `reconstruct` deployment this flow-run command (None: the stack's own), through
    Prefect's client (it retries the 503s of a busy SQLite server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    definition = next(d for d in DEPLOYMENTS if d.name == "reconstruct")
    variables = local_job_variables(definition)
    if command is not None:
        variables["command"] = shlex.join(command)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"{definition.flow_name}/{definition.name}")
        client.update_deployment(deployment.id, DeploymentUpdate(job_variables=variables))


def one_round(client: ReconClient, prefect_api: str) -> dict[str, Any]:
    """Submit the sample, time it to `processing` (client view) and to RUNNING (Prefect), cancel it."""
    t0 = time.time()
    job_id = submit_sample(client, SAMPLE_DIR, "fusion")
    posted = time.time() - t0
    deadline = time.monotonic() + 120
    while (status := client.status(job_id))["status"] == "queued":
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still queued after 120 s")
        time.sleep(POLL_SECONDS)
    processing = time.time() - t0
    run = flow_run_of(prefect_api, job_id) or {}
    started = run.get("start_time")
    try:
        client.cancel_job(job_id)
    except ApiError as exc:
        if exc.code != "JOB_NOT_READY":  # it ended already
            raise
    deadline = time.monotonic() + 120
    while (status := client.status(job_id))["status"] not in ("cancelled", "failed", "completed"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not cancelled after 120 s")
        time.sleep(0.2)
    return {"post_s": round(posted, 3), "processing_s": round(processing, 3),
            "running_s": round(datetime.fromisoformat(started).timestamp() - t0, 3) if started else None,
            "final_status": status["status"], "error": (status.get("error") or {}).get("code")}


def measure(client: ReconClient, prefect_api: str, rounds: int) -> dict[str, Any]:
    samples = []
    for _ in range(rounds):
        wait_idle(prefect_api)
        time.sleep(2)  # the last run's processes are gone and the machine has settled
        samples.append(one_round(client, prefect_api))
    seconds = [s["processing_s"] for s in samples]
    running = [s["running_s"] for s in samples if s["running_s"] is not None]
    return {"processing_s": seconds, "median_s": statistics.median(seconds), "max_s": max(seconds),
            "running_median_s": statistics.median(running) if running else None,
            "running_max_s": max(running) if running else None,
            "meets_target": max(seconds) <= TARGET_SECONDS, "rounds": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="stack,cold", help="comma-separated: stack, cold")
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder (logs, database)")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"stack", "cold"}
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")

    root = Path(tempfile.mkdtemp(prefix="submit-latency-"))
    os.environ["RECON_DATA_DIR"] = str(root)
    settings = get_settings()
    embedded = EmbeddedStack(root, "127.0.0.1", stack.free_port(), stack.free_port())
    result: dict[str, Any] = {"target_s": TARGET_SECONDS, "rounds": args.rounds, "cpu_count": os.cpu_count(),
                              "worker_query_seconds": stack.WORKER_QUERY_SECONDS}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the stack's progress lines; stdout is the JSON
            embedded.start()
        with api_client(embedded.api_base, settings) as client:
            for mode in modes:
                set_reconstruct_command(embedded.prefect_api, COLD_COMMAND if mode == "cold" else None)
                result[mode] = measure(client, embedded.prefect_api, args.rounds)
                print(json.dumps({mode: result[mode]}), file=sys.stderr, flush=True)
        result["load_average_1m"] = os.getloadavg()[0]
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            embedded.stop()
        if args.keep:
            print(f"logs: {root / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
