"""`make run`: the embedded stack of docs/architecture.md on one machine, then the bundled sample.

    python -m deployments.embedded [--no-sample] [--sample DIR] [--model-type fusion]

Starts and health-checks, in order: a Prefect server on SQLite under data/prefect (UI at
http://127.0.0.1:4200), the work pools and deployments (deployments/definitions.py), a worker on
the `gpu` pool (concurrency = GPUs present, 1 on a CPU host) and one on `maintenance`, and the
API on port 8000 with the filesystem store under data/store. Then it submits the bundled sample
over HTTP, follows it with a progress line, downloads the ZIP into data/downloads/ and prints the
quality summary, and keeps serving until Ctrl-C. It is a client of its own API like any other
(recon_client): with RECON_API_KEYS set it sends one of those keys.

No job is lost on Ctrl-C: runs that were executing are put back to Scheduled after the workers
stop, and queued runs stay queued in the database; the next start picks both up.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from deployments import stack
from deployments.definitions import MAINTENANCE_POOL, WORK_POOL, register
from jobs.settings import Settings, get_settings
from recon_client import ReconClient

PREFECT_PORT = 4200
ZOMBIE_SECONDS = 90  # three missed 30 s heartbeats
SAMPLE_DIR = stack.PROJECT_ROOT / "samples" / "sample"
ACTIVE_STATES = ["RUNNING", "PENDING", "CANCELLING"]


def say(message: str) -> None:
    print(f"[recon] {message}", flush=True)


def _flow_runs_in(api_url: str, pool: str, states: list[str]) -> list[dict[str, Any]]:
    body = {"flow_runs": {"state": {"type": {"any_": states}}}, "work_pools": {"name": {"any_": [pool]}}}
    r = httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=10)
    r.raise_for_status()
    return r.json()


def requeue(api_url: str, run_ids: list[str]) -> int:
    """Put interrupted runs back to Scheduled (Cancelling ones to Cancelled): the next worker
    start runs them from the beginning (outputs are staged, so a restart is safe)."""
    done = 0
    for run_id in run_ids:
        r = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=10)
        if r.status_code != 200:
            continue
        state = (r.json().get("state") or {}).get("type")
        if state in ("COMPLETED", "FAILED", "CANCELLED"):
            continue
        new = {"type": "CANCELLED", "name": "Cancelled"} if state == "CANCELLING" else \
            {"type": "SCHEDULED", "name": "Scheduled", "message": "Requeued: the stack stopped while it ran"}
        httpx.post(f"{api_url}/flow_runs/{run_id}/set_state", json={"state": new, "force": True}, timeout=10)
        done += 1
    return done


class EmbeddedStack:
    def __init__(self, data_dir: Path, api_host: str, api_port: int, prefect_port: int) -> None:
        self.data_dir = data_dir.resolve()
        self.home = self.data_dir / "prefect"
        self.log_dir = self.data_dir / "logs"
        self.api_base = f"http://{api_host}:{api_port}"
        self.api_host, self.api_port, self.prefect_port = api_host, api_port, prefect_port
        self.procs: list[stack.ManagedProcess] = []
        self.prefect_api = ""
        self.env = {"RECON_DATA_DIR": str(self.data_dir)}

    def start(self) -> None:
        t0 = time.monotonic()
        say(f"starting Prefect server (SQLite under {self.home}) ...")
        server, self.prefect_api = stack.start_prefect_server(self.home, self.prefect_port, self.log_dir)
        self.procs.append(server)
        say(f"Prefect server healthy after {time.monotonic() - t0:.1f} s; UI: http://127.0.0.1:{self.prefect_port}")

        from jobs.gpu import gpu_count

        slots = max(gpu_count(), 1)
        register(self.prefect_api, gpu_slots=slots, zombie_seconds=ZOMBIE_SECONDS)
        stale = [r["id"] for r in _flow_runs_in(self.prefect_api, WORK_POOL, ACTIVE_STATES)]
        if stale:  # the last stop was not clean (killed launcher): nobody runs these any more
            say(f"requeued {requeue(self.prefect_api, stale)} run(s) interrupted by an unclean stop")
        say(f"deployments registered; pool '{WORK_POOL}' limited to {slots} concurrent run(s)")

        for pool in (WORK_POOL, MAINTENANCE_POOL):
            worker = stack.start_worker(self.home, self.prefect_api, pool, self.log_dir, self.env, name=f"worker-{pool}")
            self.procs.append(worker)
        for worker in self.procs[1:]:
            stack.wait_worker_online(self.prefect_api, worker.name.removeprefix("worker-"), worker)
        say(f"workers polling after {time.monotonic() - t0:.1f} s")

        api = stack.start_api(self.home, self.prefect_api, self.api_host, self.api_port, self.log_dir, self.env)
        self.procs.append(api)
        say(f"API healthy after {time.monotonic() - t0:.1f} s: {self.api_base} (docs: {self.api_base}/docs)")

    def check_alive(self) -> stack.ManagedProcess | None:
        return next((p for p in self.procs if not p.alive()), None)

    def stop(self) -> None:
        """API first (no new jobs), then workers (and the flow runs they spawned), then requeue
        what was running, then the server."""
        say("stopping ...")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abort the requeue
        by_name = {p.name: p for p in self.procs}
        if "api" in by_name:
            by_name["api"].stop()
        running: list[str] = []
        if self.prefect_api and by_name.get("prefect-server") and by_name["prefect-server"].alive():
            try:
                running = [r["id"] for r in _flow_runs_in(self.prefect_api, WORK_POOL, ACTIVE_STATES)]
            except httpx.HTTPError:
                pass
        for p in self.procs:
            if p.name.startswith("worker"):
                p.stop()
        stack.end_flow_run_processes(running)
        if running:
            try:
                say(f"requeued {requeue(self.prefect_api, running)} interrupted run(s); they resume on the next start")
            except httpx.HTTPError as exc:
                say(f"could not requeue interrupted runs: {exc}")
        if "prefect-server" in by_name:
            by_name["prefect-server"].stop()
        say("stopped")


def api_client(base: str, settings: Settings) -> ReconClient:
    """A client of the stack's API that passes its authentication: the first configured key
    (any of them is valid; sorted, so the choice is stable)."""
    keys = sorted(settings.api_key_set)
    return ReconClient(base, keys[0] if keys else "", timeout=120)


def submit_sample(client: ReconClient, sample: Path, model_type: str) -> str:
    return client.submit(sample / "views", sample / "depths", model_type)["job_id"]


def follow(client: ReconClient, job_id: str) -> dict[str, Any]:
    """Follow the job until it finishes (live events, else polling), redrawing one progress line."""
    last = ""

    def draw(status: dict[str, Any]) -> None:
        nonlocal last
        bar = "#" * (int(status.get("progress") or 0) // 5)
        line = (f"\r[recon] job {job_id}: {status['status']:<10} [{bar:<20}] {status.get('progress') or 0:>3}%"
                f"  {status.get('current_model') or ''} {status.get('stage') or ''}")
        if line != last:
            sys.stdout.write(line.ljust(len(last)))
            sys.stdout.flush()
            last = line

    status = client.follow(job_id, draw, poll_seconds=1.0)
    sys.stdout.write("\n")
    return status


def quality_lines(zip_path: Path) -> list[str]:
    lines = []
    with zipfile.ZipFile(zip_path) as z:
        for name in sorted(n for n in z.namelist() if n.endswith("quality.json")):
            q = json.loads(z.read(name))
            parts = [f"{k}={q[k]:.3f}" for k in ("psnr", "ssim", "mask_iou", "depth_error_pct")
                     if isinstance(q.get(k), (int, float))]
            lines.append(f"{name.split('/')[0]}: status={q.get('status')} " + " ".join(parts))
    return lines


def run_sample(client: ReconClient, sample: Path, model_type: str, downloads: Path) -> bool:
    t0 = time.monotonic()
    job_id = submit_sample(client, sample, model_type)
    say(f"submitted {sample} as job {job_id} (model_type={model_type})")
    status = follow(client, job_id)
    elapsed = time.monotonic() - t0
    if status["status"] != "completed":
        say(f"job {job_id} {status['status']} after {elapsed:.1f} s: {json.dumps(status.get('error'))}")
        return False
    path = client.download(job_id, downloads)
    say(f"job {job_id} completed in {elapsed:.1f} s; results: {path}")
    for line in quality_lines(path):
        say(f"quality {line}")
    return True


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-sample", action="store_true", help="only start the stack")
    parser.add_argument("--sample", type=Path, default=SAMPLE_DIR, help="folder with views/ and depths/")
    parser.add_argument("--model-type", default="fusion")
    parser.add_argument("--prefect-port", type=int, default=PREFECT_PORT)
    args = parser.parse_args(argv)
    settings = get_settings()
    embedded = EmbeddedStack(settings.data_dir, settings.api_host, settings.api_port, args.prefect_port)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the stack as cleanly as Ctrl-C
    code = 0
    try:
        embedded.start()
        if not args.no_sample:
            with api_client(embedded.api_base, settings) as client:
                if not run_sample(client, args.sample, args.model_type, embedded.data_dir / "downloads"):
                    code = 1
        say(f"serving: API {embedded.api_base}, Prefect UI http://127.0.0.1:{args.prefect_port}; Ctrl-C stops")
        while (dead := embedded.check_alive()) is None:
            time.sleep(1.0)
        say(f"{dead.name} exited unexpectedly (log: {dead.log_path}):\n{dead.log_tail(2000)}")
        code = 1
    except KeyboardInterrupt:
        print()
    except Exception as exc:
        say(f"error: {exc}")
        code = 1
    finally:
        embedded.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
