"""`recon`: the reconstruction API from the command line (see `recon --help` and README "Client")."""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recon_client.client import ApiError, ReconClient

EXIT_OK = 0
EXIT_DECLINED = 1  # cancel: the confirmation was not given
EXIT_USAGE = 2  # bad arguments, or the API refused the request (422, 400, 401, 409)
EXIT_NOT_FOUND = 3
EXIT_JOB_FAILED = 4
EXIT_CANCELLED = 5
EXIT_EXPIRED = 6
EXIT_UNAVAILABLE = 7  # server error, or unreachable after the retries
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0    success (status: the job is queued, processing or completed)
  1    cancel: not confirmed at the prompt
  2    usage error, or the API refused the request (422 validation, 400/409 wrong job state, 401 key)
  3    job not found (404)
  4    the job failed (its error is printed: code, message, suggestion)
  5    the job was cancelled
  6    the job's results expired (410)
  7    server error or API unreachable (5xx, after retries)
  130  interrupted (Ctrl-C); a submitted job keeps running

environment: RECON_API_URL (default http://127.0.0.1:8000), RECON_API_KEY (sent as X-API-Key)"""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def print_error(error: dict[str, Any], heading: str = "error") -> None:
    """The API's error object, readable: code and message, then details and the suggestion."""
    _say(f"{heading}: {error.get('code', 'ERROR')}: {error.get('message', '')}")
    if error.get("details"):
        _say(f"  details: {json.dumps(error['details'], ensure_ascii=False)}")
    if error.get("suggestion"):
        _say(f"  suggestion: {error['suggestion']}")


def exit_code_of(exc: ApiError) -> int:
    if exc.status == 404:
        return EXIT_NOT_FOUND
    if exc.status == 410:
        return EXIT_EXPIRED
    if 400 <= exc.status < 500:
        return EXIT_USAGE
    return EXIT_UNAVAILABLE


def status_exit_code(status: dict[str, Any]) -> int:
    return {"failed": EXIT_JOB_FAILED, "cancelled": EXIT_CANCELLED}.get(status.get("status", ""), EXIT_OK)


def _describe(status: dict[str, Any]) -> str:
    parts = [status.get("job_id", ""), status.get("status", "")]
    parts += [p for p in (status.get("current_model"), status.get("stage")) if p]
    return " ".join(parts)


class ProgressBar:
    """A tqdm bar on stderr fed with status bodies (events or polls)."""

    def __init__(self, job_id: str) -> None:
        self.bar = tqdm(total=100, desc=job_id, file=sys.stderr, dynamic_ncols=True, mininterval=0.2,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")

    def __call__(self, status: dict[str, Any]) -> None:
        progress = int(status.get("progress") or 0)
        self.bar.set_description_str(_describe(status), refresh=False)
        self.bar.update(max(0, progress - self.bar.n))
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _finish(status: dict[str, Any]) -> int:
    """Report a terminal status that is not `completed`; returns its exit code."""
    code = status_exit_code(status)
    if code == EXIT_JOB_FAILED:
        print_error(status.get("error") or {}, heading=f"job {status.get('job_id')} failed")
    elif code == EXIT_CANCELLED:
        _say(f"job {status.get('job_id')} was cancelled")
    return code


def fetch(client: ReconClient, job_id: str, out: Path, unzip: bool) -> int:
    """Download (resumably) and unpack into out/{job_id}/; prints the result's path on stdout."""
    with tqdm(desc=f"{job_id}.zip", unit="B", unit_scale=True, file=sys.stderr, mininterval=0.2) as bar:
        def progress(done: int, total: int | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        try:
            path = client.download(job_id, out, on_progress=progress)
        except ApiError as exc:
            if exc.status >= 500 and exc.status != 503:  # a failed job's download answers its error with 500
                status = client.status(job_id)
                if status.get("status") == "failed":
                    return _finish(status)
            raise
    if not unzip:
        print(path)
        return EXIT_OK
    target = out / job_id
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
        if bad is not None:
            raise ApiError(0, {"code": "INCOMPLETE_RESULTS", "message": f"{path}: {bad} is corrupt",
                               "details": {}, "suggestion": "Delete the ZIP and download again."})
        archive.extractall(target)
    path.unlink()
    print(target)
    return EXIT_OK


# ---- commands ------------------------------------------------------------------------------------


def cmd_submit(client: ReconClient, args: argparse.Namespace) -> int:
    formats = [f.strip() for value in args.formats or [] for f in value.split(",") if f.strip()]
    job = client.submit(args.views, args.depths, args.model, target_faces=args.target_faces,
                        texture_size=args.texture_size, formats=formats or None)
    job_id = job["job_id"]
    print(job_id, flush=True)
    _say(f"submitted job {job_id} (model_type={job.get('model_type')})")
    if not args.wait:
        return EXIT_OK
    bar = ProgressBar(job_id)
    try:
        status = client.follow(job_id, bar)
    except KeyboardInterrupt:
        bar.close()
        _say(f"job {job_id} keeps running: recon status {job_id}; recon cancel {job_id}")
        raise
    finally:
        bar.close()
    if status.get("status") != "completed":
        return _finish(status)
    return fetch(client, job_id, Path(args.out), not args.no_unzip)


def cmd_status(client: ReconClient, args: argparse.Namespace) -> int:
    status = client.status(args.job_id)
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return status_exit_code(status)
    print(f"{status['job_id']}: {status['status']} {status.get('progress', 0)}%"
          + (f" ({status['current_model']})" if status.get("current_model") else ""))
    print(f"  created {status.get('created_at')}, updated {status.get('updated_at')}")
    for row in status.get("models") or []:
        print(f"  {row['model']}: {row['status']} {row['progress']}%")
    if status.get("error"):
        print_error(status["error"], heading="job failed")
    return status_exit_code(status)


def cmd_cancel(client: ReconClient, args: argparse.Namespace, ask: Callable[[str], str] = input) -> int:
    if not args.yes:
        try:
            answer = ask(f"Cancel job {args.job_id}? Its files will be deleted. [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            _say("not cancelled")
            return EXIT_DECLINED
    result = client.cancel_job(args.job_id)
    print(f"{result['job_id']}: {result['status']}: {result.get('message', '')}")
    return EXIT_OK if result.get("status") == "cancelled" else EXIT_USAGE


def cmd_download(client: ReconClient, args: argparse.Namespace) -> int:
    return fetch(client, args.job_id, Path(args.out), not args.no_unzip)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description="Client of the 3D reconstruction API.",
                                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="API base URL (env RECON_API_URL, default http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (env RECON_API_KEY), sent as X-API-Key")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries of a request on 429/503 (after Retry-After) or a connection error (default 5)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="submit six views and six depth renders",
                                 epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    submit.add_argument("views", help="folder of the six view PNGs, or their paths separated by commas")
    submit.add_argument("depths", help="folder of the six depth PNGs, or their paths separated by commas")
    submit.add_argument("--model", help="model_type: reconviagen (server default), nvdiffrec, both, fusion")
    submit.add_argument("--target-faces", type=int, help="face budget of the mesh (1000..500000)")
    submit.add_argument("--texture-size", type=int, help="texture edge in pixels (power of two, 512..4096)")
    submit.add_argument("--formats", action="append", help="mesh formats, e.g. glb,obj (glb obj ply stl gltf)")
    submit.add_argument("--wait", action="store_true", help="follow progress, then download and unzip")
    submit.add_argument("--out", default=".", help="with --wait: where the result goes (OUT/JOB_ID/)")
    submit.add_argument("--no-unzip", action="store_true", help="with --wait: keep OUT/JOB_ID.zip unpacked")
    submit.set_defaults(run=cmd_submit)

    status = commands.add_parser("status", help="show a job's status")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print the API's JSON body")
    status.set_defaults(run=cmd_status)

    cancel = commands.add_parser("cancel", help="cancel a job (both steps of the API's confirmation)")
    cancel.add_argument("job_id")
    cancel.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    cancel.set_defaults(run=cmd_cancel)

    download = commands.add_parser("download", help="download a completed job's results (resumable)")
    download.add_argument("job_id")
    download.add_argument("--out", default=".", help="folder for JOB_ID.zip / JOB_ID/ (default: .)")
    download.add_argument("--no-unzip", action="store_true", help="keep the ZIP instead of unpacking it")
    download.set_defaults(run=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = ReconClient(args.url, args.api_key, timeout=args.timeout, retries=max(0, args.retries))
    try:
        return args.run(client, args)
    except ApiError as exc:
        print_error(exc.error)
        return exit_code_of(exc)
    except FileNotFoundError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
