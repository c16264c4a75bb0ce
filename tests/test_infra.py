"""The production topology (infra/) as far as it can be checked without a Docker engine or a GPU:
the compose file's structure (and `docker-compose config` where Debian's package is installed),
the compose `deploy` one-shot run for real against a real Prefect server (work pools, Secret
blocks, every deployment of prefect.yaml), and the Docker pool's job configuration rendered for a
real flow run down to the Docker Engine request body that carries the GPU device request."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments import docker_pool, stack
from deployments.definitions import CRASH_RETRY_AUTOMATION, ZOMBIE_AUTOMATION
from deployments.stack import PROJECT_ROOT

INFRA = PROJECT_ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
ENV_EXAMPLE = INFRA / ".env.example"
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|_KEYS?$|TOKEN)")
REQUIRED_REF = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]+\}$")
# Bind mounts allowed in the file: the bootstrap script and the Docker socket of the GPU worker.
ALLOWED_BINDS = {"./minio-bootstrap.sh", "/var/run/docker.sock"}


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and $$ (strict: a variable
    with neither a value nor a default is an error, as a missing .env entry would be)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        current = env.get(name)
        if op in (":-", "-"):
            return current if current or (op == "-" and current is not None) else arg
        if current is None or (op == ":?" and current == ""):
            raise KeyError(f"{name} has no value ({arg or 'no default'})")
        return current

    return re.sub(r"\$\$|\$\{([A-Z0-9_]+)(:-|-|:\?)?([^}]*)\}", one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # resolves the x-* anchors and `<<` merges


# ---- the compose file -------------------------------------------------------------------------


def test_every_service_is_health_checked_or_a_one_shot_waited_for(compose: dict[str, Any]) -> None:
    services = compose["services"]
    one_shots = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shots == {"minio-bootstrap", "deploy"}
    for name, service in services.items():
        if name not in one_shots:
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
            assert service.get("restart") == "unless-stopped", name
        for dep, cond in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dep in one_shots else "service_healthy"
            assert cond == {"condition": expected}, (name, dep)
    # The API replicas start only when storage and every deployment exist.
    assert set(services["api"]["depends_on"]) == {"prefect-server", "minio-bootstrap", "deploy"}


def test_topology_profiles_pools_and_scaling(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker-cpu"]["profiles"] == ["cpu"] and services["worker-gpu"]["profiles"] == ["gpu"]
    assert all("profiles" not in s for n, s in services.items() if n not in ("worker-cpu", "worker-gpu"))
    cpu_cmd = services["worker-cpu"]["command"]
    assert cpu_cmd[cpu_cmd.index("--pool") + 1] == "gpu" and "--with-healthcheck" in cpu_cmd
    assert services["worker-gpu"]["command"] == ["python", "-m", "deployments.docker_pool", "worker"]
    gpu_devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu_devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert services["worker-gpu"]["build"]["dockerfile"] == "infra/Dockerfile.gpu"
    # The Prefect server keeps its state in PostgreSQL, not SQLite.
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    # `--scale api=N`: no fixed name, a host port range rather than one port.
    api = services["api"]
    assert "container_name" not in api and re.fullmatch(r"\$\{RECON_API_PORTS:-\d+-\d+\}:8000", api["ports"][0])
    # The pool's flow-run containers join this network and mount this volume by name.
    assert compose["networks"]["default"]["name"] == docker_pool.NETWORK
    assert compose["volumes"]["model-cache"]["name"] == docker_pool.CACHE_VOLUME


def test_all_state_is_in_declared_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert source in ALLOWED_BINDS, (name, mount)
            else:
                used.add(source)
    assert used == declared
    mounts = {n: s.get("volumes", []) for n, s in compose["services"].items()}
    assert "postgres-data:/var/lib/postgresql/data" in mounts["postgres"]
    assert "minio-data:/data" in mounts["minio"]


def test_no_secrets_in_the_file_and_the_example_env_is_complete(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    example = env_example()
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value and value not in text, f"{name}'s example value appears in compose.yaml"
    for service_name, service in compose["services"].items():
        env = service.get("environment", {})
        for name, value in env.items():
            if SECRET_NAME.search(name) and name != "PREFECT_API_DATABASE_CONNECTION_URL":
                assert REQUIRED_REF.match(str(value)), f"{service_name}.{name} must be a ${{VAR:?}} reference"
        # The service itself is configured only through RECON_* and PREFECT_* variables.
        if service.get("image", "").startswith("${RECON"):
            assert all(k.startswith(("RECON_", "PREFECT_")) for k in env), service_name
    db_url = compose["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "${POSTGRES_PASSWORD:?" in db_url
    # Every variable the file uses is documented in .env.example, so interpolation succeeds...
    interpolate(compose, example)
    # ...and fails without it: nothing secret has a default.
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD|MINIO_ROOT|RECON_S3|RECON_API_KEYS|DOCKER_GID"):
        interpolate(compose, {})
    assert ".env" in (INFRA / ".gitignore").read_text().split()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_docker_compose_config_accepts_the_file(profile: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RECON_", "POSTGRES_", "MINIO_", "COMPOSE_"))}
    base = ["docker-compose", "--env-file", str(env_file), "-f", str(COMPOSE), "--profile", profile]
    ok = subprocess.run([*base, "config"], capture_output=True, text=True, env=clean, timeout=60)
    assert ok.returncode == 0, ok.stderr
    services = subprocess.run([*base, "config", "--services"], capture_output=True, text=True, env=clean, timeout=60)
    assert f"worker-{profile}" in services.stdout.split()
    env_file.write_text("")
    missing = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, env=clean, timeout=60)
    assert missing.returncode != 0 and "in infra/.env" in missing.stderr  # our ${VAR:?message}


def test_dockerfiles_are_multi_stage_non_root_and_pinned() -> None:
    for name, runtime_base in (("Dockerfile", "python:"), ("Dockerfile.gpu", "nvidia/cuda:")):
        text = (INFRA / name).read_text()
        stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
        assert stages[-1][1] == "runtime" and stages[-1][0].startswith(runtime_base), name
        runtime = text.split(" AS runtime", 1)[1]
        assert "\nUSER app" in runtime, name
        assert "build-essential" not in runtime and "apt-get install" not in runtime, name
        assert "-c constraints.txt" in text, name
    gpu = (INFRA / "Dockerfile.gpu").read_text()
    assert 'TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX"' in gpu and "build_nvdiffrast.py" in gpu
    assert "COPY --from=builder /opt/torch-extensions" in gpu
    # constraints.txt pins everything except torch (which comes from the CPU or CUDA index).
    pins = [line for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert all("==" in pin for pin in pins) and not any(pin.lower().startswith("torch==") for pin in pins)


# ---- the Docker work pool on a real Prefect server ---------------------------------------------


def run_compose_deploy(compose: dict[str, Any], api_url: str) -> subprocess.CompletedProcess[str]:
    """The compose `deploy` service's own script and environment (values from .env.example),
    pointed at the test server instead of prefect-server:4200."""
    deploy = interpolate(compose["services"]["deploy"], env_example())
    assert deploy["command"][:2] == ["sh", "-ec"]
    env = {**os.environ, **{k: str(v) for k, v in deploy["environment"].items()}}
    env["PREFECT_API_URL"] = api_url
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python, prefect of the venv
    return subprocess.run(deploy["command"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=400)


async def read_state(pool_name: str) -> dict[str, Any]:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        pool = await client.read_work_pool(pool_name)
        deployments = {f"{d.name}": d for d in await client.read_deployments()}
        automations = [*await client.read_automations_by_name(ZOMBIE_AUTOMATION),
                       *await client.read_automations_by_name(CRASH_RETRY_AUTOMATION)]
    secrets = {name: (await Secret.aload(name)).get() for name in docker_pool.SECRET_VARIABLES.values()}
    return {"pool": pool, "deployments": deployments, "secrets": secrets, "automations": automations}


@pytest.fixture(scope="module")
def infra_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server of this module's own: the deploy script's `prefect deploy --all` and its
    zombie automation would otherwise rewrite what the shared stack's tests rely on."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("infra-prefect")
    proc, url = stack.start_prefect_server(home, stack.free_port(), home / "logs", ui=False)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def deployed(infra_server: str, compose: dict[str, Any]) -> dict[str, Any]:
    done = run_compose_deploy(compose, infra_server)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return asyncio.run(read_state(docker_pool.DOCKER_POOL))


def test_compose_deploy_creates_the_pool_and_registers_prefect_yaml(deployed: dict[str, Any]) -> None:
    example = env_example()
    pool = deployed["pool"]
    assert pool.type == "docker" and pool.concurrency_limit == int(example["RECON_GPUS"])
    props = pool.base_job_template["variables"]["properties"]
    assert props["image"]["default"] == example["RECON_GPU_IMAGE"]
    env = props["env"]["default"]
    assert env["RECON_S3_SECRET_KEY"] == "{{ prefect.blocks.secret.recon-s3-secret-key }}"
    assert example["RECON_S3_SECRET_KEY"] not in str(pool.base_job_template)  # stored as a block only
    assert "RECON_API_KEYS" not in env and env["RECON_DEVICE"] == "cuda"
    assert deployed["secrets"] == {"recon-s3-access-key": example["RECON_S3_ACCESS_KEY"],
                                   "recon-s3-secret-key": example["RECON_S3_SECRET_KEY"]}
    names = {d["name"] for d in yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]}
    assert {"reconstruct", "reconstruct-docker", "cleanup", "reprocess"} <= names <= set(deployed["deployments"])
    docker = deployed["deployments"]["reconstruct-docker"]
    assert docker.work_pool_name == docker_pool.DOCKER_POOL
    assert docker.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    assert deployed["deployments"]["reconstruct"].work_pool_name == "gpu"
    zombie, retry = deployed["automations"]
    assert zombie.trigger.within.total_seconds() == int(example["RECON_ZOMBIE_SECONDS"])
    assert retry.name == CRASH_RETRY_AUTOMATION  # crashed runs are requeued in production too
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"  # flow-run containers send heartbeats


async def render_for_a_flow_run(deployment_id: Any) -> Any:
    """What the GPU worker builds for a flow run of reconstruct-docker (prefect-docker's own
    resolve path), with the worker's PREFECT_API_URL as in compose."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_docker.worker import DockerWorkerJobConfiguration

    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"job_id": "infra001", "model_type": "fusion"}, name="infra001"
        )
        try:
            pool = await client.read_work_pool(docker_pool.DOCKER_POOL)
            with temporary_settings(updates={PREFECT_API_URL: "http://prefect-server:4200/api"}):
                return await DockerWorkerJobConfiguration.resolve_for_flow_run(
                    flow_run, client=client, work_pool=pool, worker_name="test-gpu-worker"
                )
        finally:
            await client.delete_flow_run(flow_run.id)


def test_job_configuration_requests_one_gpu_and_mounts_the_cache(deployed: dict[str, Any]) -> None:
    import docker.types
    from docker.models.containers import _create_container_args
    from prefect_docker.worker import DockerWorker

    config = asyncio.run(render_for_a_flow_run(deployed["deployments"]["reconstruct-docker"].id))
    assert config.container_create_kwargs == {"device_requests": [{"count": 1, "capabilities": [["gpu"]]}]}
    assert config.volumes == [f"{docker_pool.CACHE_VOLUME}:{docker_pool.CACHE_MOUNT}"]
    assert config.networks == [docker_pool.NETWORK] and config.image_pull_policy == "IfNotPresent"
    assert config.env["RECON_S3_SECRET_KEY"] == env_example()["RECON_S3_SECRET_KEY"]  # block resolved
    assert config.env["RECON_S3_ENDPOINT"] == "minio:9000" and "{{" not in str(config.env)
    assert config.env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert config.env["RECON_MODEL_CACHE_DIR"] == docker_pool.CACHE_MOUNT
    assert "prefect flow-run execute" in config.command or "prefect.engine" in config.command

    # The kwargs prefect-docker hands to docker-py, turned into the Engine API's create body the
    # way docker-py's containers.create does (API 1.44 = Docker 25).
    settings = DockerWorker(work_pool_name=docker_pool.DOCKER_POOL)._build_container_settings(None, config)
    create = _create_container_args({**settings, "version": "1.44"})
    host = create["host_config"]
    assert host["DeviceRequests"] == [{"Driver": "", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    assert host["Binds"] == [f"{docker_pool.CACHE_VOLUME}:{docker_pool.CACHE_MOUNT}"]
    assert create["image"] == env_example()["RECON_GPU_IMAGE"] and create["volumes"] == [docker_pool.CACHE_MOUNT]

    pinned = docker_pool.pin_to_gpu(config.container_create_kwargs, "GPU-1234")
    pinned_host = docker.types.HostConfig(version="1.44", **pinned)
    assert pinned_host["DeviceRequests"] == [
        {"Driver": "", "Count": 0, "DeviceIDs": ["GPU-1234"], "Capabilities": [["gpu"]], "Options": {}}
    ]


def test_pool_limit_follows_the_declared_gpus(deployed: dict[str, Any]) -> None:
    # Runs after the render test: it rewrites the pool (new image, rotated secret).
    environ = {"RECON_STORAGE": "s3", "RECON_S3_SECRET_KEY": "rotated-secret", "RECON_S3_ACCESS_KEY": "svc"}
    pool = asyncio.run(docker_pool.ensure_docker_pool(3, "registry.example/recon-gpu:2", environ))
    assert pool.concurrency_limit == 3
    assert pool.base_job_template["variables"]["properties"]["image"]["default"] == "registry.example/recon-gpu:2"
    state = asyncio.run(read_state(docker_pool.DOCKER_POOL))
    assert state["secrets"]["recon-s3-secret-key"] == "rotated-secret"  # rotation = rerun with new keys
    with pytest.raises(ValueError):
        asyncio.run(docker_pool.ensure_docker_pool(-1))


def test_gpu_worker_runs_one_flow_run_per_gpu() -> None:
    # A subprocess: defining the worker class re-registers Prefect's "docker" worker type there.
    code = (
        "from deployments.gpu_worker import GpuDockerWorker\n"
        "w = GpuDockerWorker(work_pool_name='gpu-docker', gpus=['0', '1', '3'])\n"
        "assert w._limit == 3 and w.gpus == ['0', '1', '3'], (w._limit, w.gpus)\n"
        "from prefect.workers.base import BaseWorker\n"
        "assert BaseWorker.get_worker_class_from_type('docker') is GpuDockerWorker\n"
    )
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert docker_pool.parse_gpus("2") == ["0", "1"] and docker_pool.parse_gpus("0, 3") == ["0", "3"]
