"""The production GPU work pool: a prefect-docker pool that runs each flow run in its own container
with one GPU, the model-weights cache volume and the service image (docs/architecture.md, infra/).

The base job template is prefect-docker's own default for type "docker" with only the defaults of
its variables changed, so every field used is one prefect-docker 0.7 renders:
- `container_create_kwargs.device_requests`: one GPU (docker-py DeviceRequest, like `--gpus 1`),
- `volumes`: the named weights-cache volume, mounted where RECON_MODEL_CACHE_DIR points,
- `image`, `networks` (the compose network, so jobs reach prefect-server and minio) and `env`:
  the worker's RECON_* settings, with the S3 credentials as Prefect Secret blocks
  (`{{ prefect.blocks.secret.* }}`) so they are not stored in clear in the pool.

The pool's concurrency limit is the number of GPUs the operator declares for the whole pool
(`create --gpus N`); each host's worker (deployments/gpu_worker.py) hands its own GPUs out one per
flow run. Docker's `count: 1` always means "GPU 0" (moby's countToDevices), so that worker
replaces the count by the device id of a free GPU.

CLI:
    python -m deployments.docker_pool create --gpus N [--image IMG]   # pool + secrets (idempotent)
    python -m deployments.docker_pool template [--image IMG]          # print the template JSON
    python -m deployments.docker_pool worker [--gpus 0,1]             # run this host's GPU worker
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
from collections.abc import Mapping
from typing import Any

from recon.allocator import with_malloc_env

DOCKER_POOL = "gpu-docker"
DEFAULT_IMAGE = "recon-gpu:0.1.0"
CACHE_VOLUME = "recon-model-cache"  # compose volume with a fixed `name:`, shared by all job containers
CACHE_MOUNT = "/data/model-cache"
NETWORK = "recon"  # compose network with a fixed `name:`
GPU_LABEL = "recon.gpu"  # container label naming the GPU a flow run holds

# One GPU with the "gpu" capability, exactly what `docker run --gpus 1` sends.
GPU_DEVICE_REQUEST: dict[str, Any] = {"count": 1, "capabilities": [["gpu"]]}

# RECON_* variables that hold secrets: stored as Secret blocks, referenced from the template.
SECRET_VARIABLES: dict[str, str] = {
    "RECON_S3_ACCESS_KEY": "recon-s3-access-key",
    "RECON_S3_SECRET_KEY": "recon-s3-secret-key",
}
# RECON_* variables only the API reads; a flow-run container has no use for them.
API_ONLY_VARIABLES = frozenset({"RECON_API_KEYS", "RECON_RATE_LIMIT_PER_MINUTE", "RECON_API_HOST", "RECON_API_PORT"})
# Prefect settings of the flow-run process itself that the containers must share with the workers.
FLOW_RUN_PREFECT_VARIABLES = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_LOGGING_LEVEL")
# What a GPU flow-run container always needs, whatever the creating process had.
FIXED_JOB_ENV: dict[str, str] = {"RECON_DEVICE": "cuda", "RECON_MODEL_CACHE_DIR": CACHE_MOUNT}


def job_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The env of every flow-run container: the RECON_* settings of `environ` (the process that
    creates the pool runs with the same .env as the workers) and its flow-run heartbeat setting,
    secrets as block references, and the allocator settings jobs run with (recon/allocator.py).
    PREFECT_API_URL is not here: the worker adds its own."""
    env = {k: v for k, v in environ.items()
           if (k.startswith("RECON_") and k not in API_ONLY_VARIABLES) or k in FLOW_RUN_PREFECT_VARIABLES}
    for variable, block in SECRET_VARIABLES.items():
        if variable in env:
            env[variable] = "{{ prefect.blocks.secret." + block + " }}"
    return with_malloc_env({**env, **FIXED_JOB_ENV})


def docker_base_job_template(image: str = DEFAULT_IMAGE, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """prefect-docker's default base job template with this service's defaults filled in."""
    from prefect_docker.worker import DockerWorker

    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    props = template["variables"]["properties"]
    props["image"]["default"] = image
    props["image_pull_policy"]["default"] = "IfNotPresent"  # local builds stay local; registries pull once
    props["volumes"]["default"] = [f"{CACHE_VOLUME}:{CACHE_MOUNT}"]
    props["networks"]["default"] = [NETWORK]
    props["env"]["default"] = dict(env if env is not None else FIXED_JOB_ENV)
    props["container_create_kwargs"]["default"] = {"device_requests": [copy.deepcopy(GPU_DEVICE_REQUEST)]}
    return template


def pin_to_gpu(create_kwargs: Mapping[str, Any] | None, gpu: str) -> dict[str, Any]:
    """`create_kwargs` with its GPU device requests naming `gpu` (an index or a GPU UUID) instead of
    a count; other device requests and kwargs are kept."""
    kwargs = copy.deepcopy(dict(create_kwargs or {}))
    requests = []
    for request in kwargs.get("device_requests") or [GPU_DEVICE_REQUEST]:
        request = dict(request)
        if ["gpu"] in (request.get("capabilities") or []):
            request.pop("count", None)
            request["device_ids"] = [gpu]
        requests.append(request)
    kwargs["device_requests"] = requests
    return kwargs


def parse_gpus(value: str) -> list[str]:
    """"2" -> ["0", "1"]; "0,3" or "GPU-uuid,..." -> that list (what Docker accepts as device ids)."""
    value = value.strip()
    if value.isdigit():
        return [str(i) for i in range(int(value))]
    return [v.strip() for v in value.split(",") if v.strip()]


async def store_secrets(environ: Mapping[str, str]) -> list[str]:
    """Save the S3 credentials of `environ` as Secret blocks (overwriting: this is how they rotate)."""
    from prefect.blocks.system import Secret

    saved = []
    for variable, block in SECRET_VARIABLES.items():
        if environ.get(variable):
            secret: Secret[str] = Secret(value=environ[variable])  # type: ignore[arg-type]  # prefect's validator wraps a str; stub omits it
            await secret.asave(block, overwrite=True)
            saved.append(block)
    return saved


async def ensure_docker_pool(
    gpus: int,
    image: str = DEFAULT_IMAGE,
    environ: Mapping[str, str] | None = None,
    name: str = DOCKER_POOL,
) -> Any:
    """Create or update the Docker pool: template from `environ`'s RECON_* settings, concurrency
    limit = `gpus` (the GPUs the pool owns across all its hosts; 0 on a CPU-only site keeps the
    reconstruct-docker deployment valid while nothing runs there). Returns the pool as read back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    if gpus < 0:
        raise ValueError("--gpus / RECON_GPUS must be >= 0 (0: the pool exists but runs nothing, e.g. CPU-only sites)")
    environ = os.environ if environ is None else environ
    await store_secrets(environ)
    template = docker_base_job_template(image, job_env(environ))
    async with get_client() as client:
        try:
            await client.read_work_pool(name)
        except ObjectNotFound:
            await client.create_work_pool(
                WorkPoolCreate(name=name, type="docker", base_job_template=template, concurrency_limit=gpus)
            )
        else:
            await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template, concurrency_limit=gpus))
        return await client.read_work_pool(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.docker_pool", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create/update the Docker GPU pool and its secrets")
    create.add_argument("--gpus", type=int, default=int(os.environ.get("RECON_GPUS", "0")),
                        help="GPUs the pool owns across all hosts (default: $RECON_GPUS)")
    template = sub.add_parser("template", help="print the base job template (for `prefect work-pool create`)")
    worker = sub.add_parser("worker", help="run this host's worker, one GPU per flow run")
    worker.add_argument("--gpus", default=os.environ.get("RECON_WORKER_GPUS") or os.environ.get("RECON_GPUS", ""),
                        help="this host's GPUs: a count or a comma list of ids/UUIDs (default: all GPUs NVML sees)")
    worker.add_argument("--name", default=None, help="worker name (default: the host name)")
    for p in (create, template, worker):
        p.add_argument("--pool", default=DOCKER_POOL)
    for p in (create, template):
        p.add_argument("--image", default=os.environ.get("RECON_GPU_IMAGE", DEFAULT_IMAGE))
    args = parser.parse_args(argv)

    if args.command == "create":
        pool = asyncio.run(ensure_docker_pool(args.gpus, args.image, name=args.pool))
        print(f"work pool {pool.name!r} (docker): concurrency limit {pool.concurrency_limit}, image {args.image}")
    elif args.command == "template":
        print(json.dumps(docker_base_job_template(args.image, job_env(os.environ)), indent=2))
    else:
        from deployments.gpu_worker import run_worker

        run_worker(args.pool, parse_gpus(args.gpus) if args.gpus else None, args.name)


if __name__ == "__main__":
    main()
