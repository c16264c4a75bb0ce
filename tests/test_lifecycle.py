"""jobs.lifecycle owns job state: the source of api/, flows/ and tasks/ builds no object keys,
writes no record fields and calls no Prefect client for job state itself (checked on their syntax
trees), and the transitions it offers do what the API and the flows rely on, on both stores."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from prefect.client.schemas.objects import StateType

from jobs.errors import ServiceError
from jobs.lifecycle import JobStatus, changes, keys
from jobs.lifecycle.record import JobRecord, ModelResult, load_record
from jobs.options import JobOptions

ROOT = Path(__file__).resolve().parent.parent
CALLERS = ("api", "flows", "tasks")
# Prefect modules a flow or task may use for being a flow or task; everything else of Prefect
# (client, deployments, artifacts, states, exceptions, server) is jobs.lifecycle's.
ALLOWED_PREFECT = {"prefect", "prefect.context", "prefect.cache_policies", "prefect.tasks"}
ALLOWED_FROM_PREFECT = {"flow", "task", "get_run_logger"}
KEY_ROOTS = (keys.RECORDS, keys.INPUTS, keys.OUTPUTS)
RECORD_FIELDS = set(JobRecord.model_fields) | set(ModelResult.model_fields)
RECORD_WRITERS = {"save_record", "update_record", "delete_job_files"}
RECORD_CLASSES = {"JobRecord", "ModelResult", "InputFile", "InputManifest"}


def caller_modules(root: Path) -> Iterator[tuple[str, ast.Module]]:
    for folder in CALLERS:
        for path in sorted((root / folder).rglob("*.py")):
            yield str(path.relative_to(root)), ast.parse(path.read_text(), str(path))


def type_checking_only(tree: ast.Module) -> set[int]:
    """Nodes under `if TYPE_CHECKING:` (type hints name Prefect's classes; nothing runs)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            found |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return found


def docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def prefect_client_methods() -> set[str]:
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

    return {n for c in (PrefectClient, SyncPrefectClient) for n in dir(c)
            if not n.startswith("_") and callable(getattr(c, n, None))}


def violations(root: Path = ROOT) -> list[str]:
    client_methods = prefect_client_methods()
    found = []
    for name, tree in caller_modules(root):
        skip, hints = docstrings(tree), type_checking_only(tree)
        for node in ast.walk(tree):
            where = f"{name}:{getattr(node, 'lineno', '?')}"
            if id(node) in hints:
                continue
            if isinstance(node, ast.Import):
                found += [f"{where} imports {a.name}" for a in node.names
                          if a.name.startswith("prefect") and a.name not in ALLOWED_PREFECT]
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("prefect"):
                    if node.module not in ALLOWED_PREFECT or (
                            node.module == "prefect" and {a.name for a in node.names} - ALLOWED_FROM_PREFECT):
                        found.append(f"{where} imports from {node.module}")
                if node.module.startswith("jobs."):
                    found += [f"{where} imports {a.name}" for a in node.names if a.name in RECORD_WRITERS]
                if node.module in ("jobs.record", "jobs.orchestration"):
                    found.append(f"{where} imports {node.module}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                attr, owner = node.func.attr, node.func.value
                if attr in client_methods:
                    found.append(f"{where} calls Prefect's client .{attr}()")
                if attr in ("split", "rsplit", "partition", "rpartition") and isinstance(owner, ast.Attribute) \
                        and owner.attr == "key":
                    found.append(f"{where} parses an object key by hand")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in RECORD_CLASSES:
                found.append(f"{where} makes a {node.func.id}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value in RECORD_FIELDS:
                found.append(f"{where} sets record field {node.args[1].value}")
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found += [f"{where} assigns .{t.attr}" for t in targets  # (an object's own fields are its own)
                          if isinstance(t, ast.Attribute) and t.attr in RECORD_FIELDS
                          and not (isinstance(t.value, ast.Name) and t.value.id == "self")]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if node.value.startswith(KEY_ROOTS) or keys.RECORD_NAME in node.value.split("/")[-1:] \
                        or ".staging" in node.value:
                    found.append(f"{where} builds an object key by hand: {node.value!r}")
    return found


def test_only_the_lifecycle_touches_job_state() -> None:
    assert violations() == []


def test_the_check_sees_each_kind_of_violation(tmp_path: Path) -> None:
    """The ownership check is not vacuous: one module doing each forbidden thing is caught."""
    bad = tmp_path / "api"
    bad.mkdir()
    (bad / "bad.py").write_text(
        "from prefect.client.orchestration import get_client\n"
        "from jobs.lifecycle.record import update_record\n"
        "def f(client, store, record, info, job_id):\n"
        "    client.read_flow_run(record.flow_run_id)\n"
        "    record.cancelled_at = JobRecord(job_id=job_id)\n"
        "    setattr(record, 'error', None)\n"
        "    store.list(f'inputs/{job_id}/')\n"
        "    return info.key.split('/')[1]\n")
    found = "\n".join(violations(tmp_path))
    for needle in ("imports from prefect.client.orchestration", "imports update_record", ".read_flow_run()",
                   "assigns .cancelled_at", "makes a JobRecord", "sets record field error", "by hand: 'inputs/'", "parses an object key"):
        assert needle in found, found


def test_each_name_means_one_thing() -> None:
    """One discard_cancelled_job, one JobStatus, and no two progress classes sharing a name."""
    definitions: dict[str, list[str]] = {}
    for folder in ("api", "flows", "tasks", "jobs", "deployments"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.col_offset == 0:
                    definitions.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert definitions["discard_cancelled_job"] == ["jobs/lifecycle/changes.py"]
    assert definitions["JobStatus"] == ["jobs/lifecycle/status.py"]
    assert "JobProgress" not in definitions
    assert definitions["ReportedProgress"] == ["jobs/lifecycle/progress.py"]
    assert definitions["ProgressReporter"] == ["tasks/progress.py"]


def test_status_enum_is_the_specs() -> None:
    from api.schemas import JobStatusResponse

    assert [s.value for s in JobStatus] == ["queued", "processing", "completed", "failed", "cancelled"]
    schema = JobStatusResponse.model_json_schema()
    assert schema["$defs"]["JobStatus"]["enum"] == [s.value for s in JobStatus]
    assert JobStatus.PROCESSING.spec_state == "PROGRESS" and JobStatus.COMPLETED.finished


# ---- the transitions, on the filesystem and S3 stores ------------------------------------------


class Upload:
    def __init__(self, index: int, filename: str, path: Path) -> None:
        self.index, self.filename, self.path = index, filename, path
        self.size, self.sha256 = path.stat().st_size, "00" * 32


def new_job(store, tmp_path: Path, model_type: str = "both") -> JobRecord:
    files = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        path.write_bytes(b"png-%d" % i)
        files.append(Upload(i, f"../view {i}.png", path))
    transforms = tmp_path / "transforms.json"
    transforms.write_text("{}")
    return changes.create_job(store, model_type, JobOptions(), files, files, transforms)


def test_create_and_discard(store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    assert load_record(store, record.job_id) == record
    assert record.models == ["reconviagen", "nvdiffrec"]
    assert record.inputs.views[3].key == f"inputs/{record.job_id}/views/3-view_3.png"
    assert store.exists(keys.transforms_key(record.job_id)) and changes.inputs_stored(store, record.job_id)
    assert changes.job_ids(store) == [record.job_id]
    changes.attach_run(store, record, "run-1")
    assert load_record(store, record.job_id).flow_run_id == "run-1"
    changes.discard_job(store, record.job_id)
    assert load_record(store, record.job_id) is None and store.list(keys.input_prefix(record.job_id)) == []


def test_run_transitions(store, tmp_path: Path) -> None:
    job_id = new_job(store, tmp_path).job_id
    started = changes.start_run(store, job_id, "run-1", ["reconviagen", "nvdiffrec"])
    assert [started.result(m).status for m in started.models] == ["running", "pending"]
    error = ServiceError("MODEL_VRAM_OOM", details={"model": "reconviagen"}).to_error_object()
    failed = changes.fail_run(store, job_id, "reconviagen", error)
    assert failed.error == error and {r.status for r in failed.results.values()} == {"failed"}
    done = changes.complete_run(store, job_id, {"reconviagen": ["mesh.glb"]}, {"reconviagen": "1.0", "nvdiffrec": "0.3"}, 1.0)
    assert done.error is None and done.expires_at is not None and done.engine_versions == {"reconviagen": "1.0", "nvdiffrec": "0.3"}
    assert done.result("reconviagen").files == ["mesh.glb"] and done.result("nvdiffrec").status == "completed"


def test_cancellation_marks_unfinished_models_and_deletes_files(store, tmp_path: Path) -> None:
    job_id = new_job(store, tmp_path).job_id
    changes.start_run(store, job_id, "run-1", ["reconviagen", "nvdiffrec"])
    store.put_bytes(keys.output_key(job_id, "reconviagen", "mesh.glb"), b"glb")
    store.put_bytes(keys.staging_prefix(job_id, "run-1", "nvdiffrec") + "mesh.glb", b"glb")
    assert changes.request_cancel(store, job_id).cancel_requested_at is not None
    assert changes.record_cancellation(store, job_id, StateType.CANCELLED)
    record = load_record(store, job_id)
    assert record.cancelled_at is not None and record.results_deleted_at is not None
    assert {m: r.status for m, r in record.results.items()} == {"reconviagen": "cancelled", "nvdiffrec": "cancelled"}
    assert all(store.list(prefix) == [] for prefix in keys.job_prefixes(job_id))
    assert not changes.record_cancellation(store, job_id, StateType.COMPLETED)  # finished meanwhile
    changes.discard_cancelled_job(store, "nojob000")  # no record: nothing to mark, no error


def test_key_layout_round_trips() -> None:
    assert keys.job_of_record_key(keys.record_key("abcd1234")) == "abcd1234"
    assert keys.job_of_record_key("jobs/abcd1234/other.json") is None
    assert keys.job_of_input_key(keys.input_key("abcd1234", "depths", 2, "d.png")) == "abcd1234"
    assert keys.input_name(keys.input_key("abcd1234", "views", 12, "a-b.png")) == (12, "a-b.png")
    assert keys.run_of_staged_key(keys.staging_prefix("abcd1234", "run-1", "fusion") + "x.png") == ("abcd1234", "run-1")
    assert keys.staged_file("abcd1234", "run-1", keys.staging_prefix("abcd1234", "run-1", "fusion") + "a/b.png") \
        == ("fusion", "a/b.png")
    assert keys.output_file("abcd1234", keys.output_key("abcd1234", "fusion", "mesh.glb")) == ("fusion", "mesh.glb")
    assert keys.output_file("abcd1234", "outputs/abcd1234/fusion/sub/x") is None
