"""Deployments, pools and the zombie automation as registered on a real Prefect server, and
prefect.yaml as the rendering of the same definitions."""

from __future__ import annotations

import os
import subprocess

from deployments import prefect_yaml, stack
from deployments.definitions import CRASH_RETRY_AUTOMATION, DEPLOYMENTS, MAINTENANCE_POOL, ZOMBIE_AUTOMATION
from tests.fixtures.prefect import ZOMBIE_SECONDS, PrefectStack


def test_prefect_yaml_is_rendered_from_the_definitions() -> None:
    assert prefect_yaml.PATH.read_text() == prefect_yaml.render(), "run: python -m deployments.prefect_yaml"
    assert subprocess.run([stack.bin_path("python"), "-m", "deployments.prefect_yaml", "--check"],
                          cwd=stack.PROJECT_ROOT).returncode == 0


def test_work_pool_setting_names_the_pool_of_the_reconstruct_deployment() -> None:
    """RECON_WORK_POOL is where the deployment is registered and the embedded workers poll, not
    only what /health checks."""
    code = ("from deployments.definitions import DEPLOYMENTS, EMBEDDED_POOLS; "
            "print(DEPLOYMENTS[0].name, DEPLOYMENTS[0].work_pool, *sorted(EMBEDDED_POOLS))")
    run = subprocess.run([stack.bin_path("python"), "-c", code], cwd=stack.PROJECT_ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "RECON_WORK_POOL": "gpu-east"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["reconstruct", "gpu-east", "gpu-east", MAINTENANCE_POOL]


def test_stack_registers_pools_deployments_and_automation(prefect_stack: PrefectStack) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        gpu = client.read_work_pool("gpu")
        assert gpu.type == "process" and gpu.concurrency_limit == 1
        assert client.read_work_pool(MAINTENANCE_POOL).concurrency_limit is None
        for d in (d for d in DEPLOYMENTS if d.embedded):
            deployment = client.read_deployment_by_name(f"{d.flow_name}/{d.name}")
            assert deployment.work_pool_name == d.work_pool and deployment.entrypoint == d.entrypoint
            step = deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
            assert step["directory"] == str(stack.PROJECT_ROOT)
            schedules = [s.schedule for s in deployment.schedules]
            if d.interval_seconds:
                assert [s.interval.total_seconds() for s in schedules] == [d.interval_seconds]
            elif d.cron:
                assert [s.cron for s in schedules] == [d.cron]
            else:
                assert schedules == []
        automations = client.read_automations_by_name(ZOMBIE_AUTOMATION)
        assert len(automations) == 1 and automations[0].trigger.within.total_seconds() == ZOMBIE_SECONDS
        retry = client.read_automations_by_name(CRASH_RETRY_AUTOMATION)
        assert len(retry) == 1 and retry[0].actions[0].state.value == "SCHEDULED"


def test_prefect_deploy_all_works_offline(prefect_stack: PrefectStack) -> None:
    """`prefect deploy --all` from the checkout (as an operator would) creates every deployment of
    prefect.yaml, with the checkout as the flow runs' working directory."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from deployments.definitions import register

    with get_client(sync_client=True) as client:
        for pool in {d.work_pool for d in DEPLOYMENTS}:
            try:  # production pools (the Docker one) exist before deploying, as in infra/
                client.create_work_pool(WorkPoolCreate(name=pool, type="docker" if "docker" in pool else "process"))
            except ObjectAlreadyExists:
                pass
    env = stack.prefect_env(prefect_stack.home, prefect_stack.api_url, PWD=str(stack.PROJECT_ROOT))
    try:
        done = subprocess.run([stack.bin_path("prefect"), "--no-prompt", "deploy", "--all"], cwd=stack.PROJECT_ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        with get_client(sync_client=True) as client:
            for d in DEPLOYMENTS:
                deployment = client.read_deployment_by_name(f"{d.flow_name}/{d.name}")
                assert deployment.work_pool_name == d.work_pool
                step = deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
                assert step["directory"] in (d.pull_directory or str(stack.PROJECT_ROOT), "{{ $PWD }}")
    finally:  # the other tests use the launcher's registration: restore it exactly
        register(prefect_stack.api_url, gpu_slots=1, zombie_seconds=ZOMBIE_SECONDS)


def test_readme_documents_every_setting_and_both_commands() -> None:
    from jobs.settings import Settings

    readme = (stack.PROJECT_ROOT / "README.md").read_text()
    # A nested section (an engine's config, export) is documented by its `RECON_<SECTION>__<FIELD>` form.
    missing = [f"RECON_{name.upper()}" for name in Settings.model_fields
               if f"`RECON_{name.upper()}`" not in readme and f"`RECON_{name.upper()}__" not in readme]
    assert not missing, f"README.md does not document {missing}"
    assert "make run" in readme and "make test" in readme and "## Production" in readme
