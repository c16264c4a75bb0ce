"""recon.threads: results in input order, exceptions reach the caller, one thread is a plain map."""

import threading

import pytest

from recon.threads import core_count, map_in_threads


def test_results_come_back_in_input_order_from_several_threads() -> None:
    seen: set[int] = set()

    def work(k: int) -> int:
        seen.add(threading.get_ident())
        threading.Event().wait(0.01 * (5 - k % 5))  # later items finish first
        return k * k

    assert list(map_in_threads(work, range(10), threads=3)) == [k * k for k in range(10)]
    assert len(seen) > 1


def test_one_thread_runs_in_the_callers_thread_and_errors_propagate() -> None:
    caller = threading.get_ident()
    assert list(map_in_threads(lambda _: threading.get_ident(), range(3), threads=1)) == [caller] * 3

    def fail(k: int) -> int:
        if k == 2:
            raise ValueError("item 2")
        return k

    with pytest.raises(ValueError, match="item 2"):
        list(map_in_threads(fail, range(4), threads=2))
    assert core_count() >= 1


def test_the_callers_context_reaches_the_threads() -> None:
    import contextvars

    job: contextvars.ContextVar[str] = contextvars.ContextVar("job", default="none")
    token = job.set("job-1")
    try:
        assert list(map_in_threads(lambda _: job.get(), range(4), threads=2)) == ["job-1"] * 4
    finally:
        job.reset(token)


def test_a_gpu_backend_gets_one_thread_and_the_cpu_at_most_the_limit() -> None:
    from recon.threads import threads_for

    assert threads_for("cuda") == 1 and threads_for("cuda", 4) == 1
    assert threads_for("cpu") == core_count()
    assert threads_for("cpu", 1) == 1 and threads_for("cpu", 2) == min(2, core_count())
