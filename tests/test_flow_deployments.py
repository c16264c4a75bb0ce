"""Deployments, pools and the zombie automation as registered on a real Prefect server, and
prefect.yaml as the rendering of the same definitions."""

from __future__ import annotations

import subprocess

from deployments import prefect_yaml, stack
from deployments.definitions import DEPLOYMENTS, MAINTENANCE_POOL, ZOMBIE_AUTOMATION
from tests.fixtures.prefect import ZOMBIE_SECONDS, PrefectStack


def test_prefect_yaml_is_rendered_from_the_definitions() -> None:
    assert prefect_yaml.PATH.read_text() == prefect_yaml.render(), "run: python -m deployments.prefect_yaml"
    assert subprocess.run([stack.bin_path("python"), "-m", "deployments.prefect_yaml", "--check"],
                          cwd=stack.PROJECT_ROOT).returncode == 0


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
