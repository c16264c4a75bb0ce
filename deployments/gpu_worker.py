"""The production GPU worker: prefect-docker's Docker worker, except that each flow run's container
gets one FREE GPU of this host by device id.

Why not plain `prefect worker start --type docker`: the pool template's device request
`count: 1` is what Docker turns into NVIDIA_VISIBLE_DEVICES=0 (moby's countToDevices), so on a
host with several GPUs every concurrent flow run would share GPU 0. This worker owns a list of
GPUs (count, ids or UUIDs; default: every GPU NVML sees), runs at most that many flow runs at once,
and rewrites each run's device request to `device_ids: [<a free GPU>]` (deployments.docker_pool.
pin_to_gpu). GPUs held by still-running containers of a previous worker process (label
`recon.gpu`) count as busy, so a worker restart never double-books a GPU. Run one per host.

Kept apart from deployments/docker_pool.py because defining a subclass of DockerWorker re-registers
Prefect's "docker" worker type in the importing process; only the worker process should do that.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import warnings
from typing import Any

import anyio
from prefect.utilities.asyncutils import run_sync_in_worker_thread
from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration, DockerWorkerResult

from deployments.docker_pool import GPU_LABEL, pin_to_gpu

WAIT_FOR_GPU_SECONDS = 5.0


def gpus_in_use(docker_client: Any) -> set[str]:
    """GPUs held by running flow-run containers on this Docker engine (by their `recon.gpu` label)."""
    return {c.labels[GPU_LABEL] for c in docker_client.containers.list(filters={"label": GPU_LABEL})}


def discover_gpus() -> list[str]:
    """UUIDs of the GPUs NVML sees (the worker container has them all reserved in compose)."""
    import pynvml  # nvidia-ml-py

    pynvml.nvmlInit()
    try:
        uuids = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()
    return [u.decode() if isinstance(u, bytes) else u for u in uuids]


# Subclassing re-registers the "docker" worker type to this class in this process (intended).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Type 'GpuDockerWorker'")

    class GpuDockerWorker(DockerWorker):
        """Docker worker that pins each flow run to one free GPU of this host (at most one run per GPU)."""

        def __init__(self, *args: Any, gpus: list[str], **kwargs: Any) -> None:
            if not gpus:
                raise ValueError("GpuDockerWorker needs at least one GPU")
            kwargs["limit"] = len(gpus)
            super().__init__(*args, **kwargs)
            self.gpus = list(gpus)
            self._held: set[str] = set()
            self._lock = threading.Lock()

        def claim_gpu(self) -> str | None:
            """Reserve a GPU that neither this worker nor a running container holds, or None."""
            busy = gpus_in_use(self._get_client())
            with self._lock:
                for gpu in self.gpus:
                    if gpu not in self._held and gpu not in busy:
                        self._held.add(gpu)
                        return gpu
            return None

        def release_gpu(self, gpu: str) -> None:
            with self._lock:
                self._held.discard(gpu)

        async def run(
            self,
            flow_run: Any,
            configuration: DockerWorkerJobConfiguration,
            task_status: anyio.abc.TaskStatus[str] | None = None,
        ) -> DockerWorkerResult:
            # Waiting only happens right after a restart, while the old worker's containers finish.
            while (gpu := await run_sync_in_worker_thread(self.claim_gpu)) is None:
                await anyio.sleep(WAIT_FOR_GPU_SECONDS)
            try:
                configuration.container_create_kwargs = pin_to_gpu(configuration.container_create_kwargs, gpu)
                configuration.labels = {**configuration.labels, GPU_LABEL: gpu}
                self.get_flow_run_logger(flow_run).info("Flow run pinned to GPU %s", gpu)
                return await super().run(flow_run, configuration, task_status)
            finally:
                self.release_gpu(gpu)


def run_worker(pool: str, gpus: list[str] | None = None, name: str | None = None) -> None:
    """Serve `pool` until stopped, with the Prefect worker health check (port
    PREFECT_WORKER_WEBSERVER_PORT, default 8080) for the container's health probe."""
    from prefect.utilities.processutils import setup_signal_handlers_worker

    gpus = gpus or discover_gpus()
    worker = GpuDockerWorker(
        work_pool_name=pool, gpus=gpus, name=name or socket.gethostname(), create_pool_if_not_found=False
    )
    setup_signal_handlers_worker(os.getpid(), "the GPU Docker worker", print)
    print(f"GPU Docker worker for pool {pool!r}: GPUs {', '.join(gpus)}", flush=True)
    asyncio.run(worker.start(with_healthcheck=True))
