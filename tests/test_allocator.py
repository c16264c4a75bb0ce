"""The allocator settings (recon/allocator.py): freed buffers are reused without new page faults,
and every process that runs jobs starts with them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deployments.docker_pool import job_env
from recon.allocator import MALLOC_ENV, with_malloc_env

ROOT = Path(__file__).resolve().parents[1]

# Allocates a 64 MiB buffer, frees it, and counts the page faults of allocating and filling the
# next one: with freed memory kept, that one reuses the first one's pages.
REFAULTS = """
import resource, sys
import numpy as np
from recon.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "call" else None
a = np.ones(1 << 26, np.uint8); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = np.ones(1 << 26, np.uint8)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = (1 << 26) // 4096


def _refaults(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", REFAULTS, mode], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_a_freed_buffer_without_faulting_it_in_again() -> None:
    applied, faults = _refaults("call")
    assert applied == "True"
    assert faults < PAGES // 100, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's environment variables")
def test_the_environment_settings_do_the_same_from_start_up() -> None:
    import os

    _, faults = _refaults("env", with_malloc_env({k: v for k, v in os.environ.items()
                                                  if not k.startswith("MALLOC_")}))
    assert faults < PAGES // 100, faults


def test_an_operators_own_allocator_settings_win() -> None:
    env = with_malloc_env({"MALLOC_ARENA_MAX": "4", "PATH": "/bin"})
    assert env["MALLOC_ARENA_MAX"] == "4" and env["PATH"] == "/bin"
    assert env["MALLOC_TRIM_THRESHOLD_"] == MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]


def test_job_containers_start_with_the_allocator_settings() -> None:
    env = job_env({"RECON_STORAGE_DIR": "/data", "HOME": "/root"})
    assert {k: env[k] for k in MALLOC_ENV} == MALLOC_ENV
    assert "HOME" not in env
