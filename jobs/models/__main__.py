"""`python -m jobs.models publish DIR --name N --version V [--required-vram-gb G]` puts a local
weights folder into the configured object store (RECON_STORAGE, RECON_S3_*, RECON_DATA_DIR);
`python -m jobs.models list NAME` shows the published versions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.settings import Settings
from jobs.storage import get_store

from .manifest import list_versions, publish


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.models", description="Model store")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="upload a weights folder as models/{name}/{version}/")
    pub.add_argument("directory", type=Path)
    pub.add_argument("--name", required=True)
    pub.add_argument("--version", required=True)
    pub.add_argument("--required-vram-gb", type=float, default=0.0, help="free VRAM the loaded model needs")
    pub.add_argument("--framework", action="append", default=[], metavar="NAME=VERSION",
                     help="framework version the weights need (repeatable); installed ones are recorded anyway")
    pub.add_argument("--force", action="store_true", help="replace an already published version")
    lst = sub.add_parser("list", help="published versions of a model")
    lst.add_argument("name")
    args = parser.parse_args(argv)

    store = get_store(Settings())
    if args.command == "list":
        for version in list_versions(store, args.name):
            print(version)
        return 0
    frameworks = {}
    for item in args.framework:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--framework expects NAME=VERSION, got {item!r}")
        frameworks[key] = value
    try:
        manifest = publish(store, args.directory, args.name, args.version,
                           required_vram_gb=args.required_vram_gb, frameworks=frameworks, force=args.force)
    except (FileExistsError, NotADirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"published {manifest.name}/{manifest.version} to {store!r}: {len(manifest.files)} files, "
          f"{manifest.total_bytes} bytes, required_vram_gb={manifest.required_vram_gb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
