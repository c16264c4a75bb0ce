"""Command line: `python -m recon reconstruct VIEWS_DIR DEPTHS_DIR OUT_DIR [--engine fusion]`.

Runs the whole pipeline without the service, with a progress bar; a malformed input ends with
its error code and message (exit status 2), not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recon.allocator import keep_freed_memory
from recon.engines.base import EngineConfig
from recon.errors import Cancelled, ReconError
from recon.hooks import Hooks
from recon.options import DEFAULT_FORMATS, MESH_FORMATS, ReconOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("reconstruct", help="six views + six depth maps -> textured mesh")
    rec.add_argument("views_dir", type=Path, help="folder with the six colour PNGs")
    rec.add_argument("depths_dir", type=Path, help="folder with the six depth PNGs")
    rec.add_argument("out_dir", type=Path, help="where the meshes, previews and reports go")
    rec.add_argument("--engine", default="fusion", help="fusion (default), nvdiffrec or reconviagen")
    rec.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    rec.add_argument("--transforms", type=Path, default=None,
                     help="optional NeRF-style transforms.json with known cameras")
    rec.add_argument("--target-faces", type=int, default=None,
                     help="at most this many faces in the mesh (default: the engine's own budget)")
    rec.add_argument("--texture-size", type=int, default=None,
                     help="texture side in texels, a power of two (default: from the views' size)")
    rec.add_argument("--config", type=Path, default=None,
                     help='JSON file of engine configs, e.g. {"nvdiffrec": {"cpu": {"joint_iterations": 100}}} '
                          "(fields of recon/engines' *Config; the service takes them from RECON_<ENGINE>__<FIELD>)")
    rec.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                     help=f"comma-separated mesh formats among {','.join(MESH_FORMATS)} "
                          f"(default {','.join(DEFAULT_FORMATS)})")
    args = parser.parse_args(argv)
    keep_freed_memory()  # before the pipeline starts threads
    try:
        configs = _engine_configs(args.config)
        options = ReconOptions(target_faces=args.target_faces, texture_size=args.texture_size,
                               formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()))
    except ReconError as exc:
        parser.error(exc.message)
    except (OSError, ValueError) as exc:  # unreadable file, bad JSON, pydantic's ValidationError
        parser.error(f"--config: {exc}")

    from tqdm import tqdm

    from recon.pipeline import reconstruct

    with tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed}") as bar:
        def progress(fraction: float, message: str) -> None:
            bar.n = round(100 * min(max(fraction, 0.0), 1.0), 1)
            bar.set_description(message[:40].ljust(40), refresh=False)
            bar.refresh()

        try:
            report = reconstruct(args.views_dir, args.depths_dir, args.out_dir, engine=args.engine,
                                 hooks=Hooks(progress=progress), device=args.device,
                                 transforms=args.transforms, options=options, configs=configs)
        except ReconError as exc:
            bar.close()
            details = json.dumps(exc.details) if exc.details else ""
            print(f"error {exc.code}: {exc.message} {details}".rstrip(), file=sys.stderr)
            return 2
        except (Cancelled, KeyboardInterrupt):
            bar.close()
            print("cancelled", file=sys.stderr)
            return 130
    cal = report.get("calibration", {})
    print(f"{report['status']}: PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f}, "
          f"mask IoU {report['mask_iou']:.4f}; rig {cal.get('variant')}, fov {cal.get('fov_deg')} deg; "
          f"{report['timings']['total_s']:.1f} s -> {args.out_dir}")
    return 0


def _engine_configs(path: Path | None) -> dict[str, EngineConfig] | None:
    """The engine configs of a JSON file (engine name -> fields), validated; None: defaults."""
    if path is None:
        return None
    from recon.engines import engine_config

    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError("expected an object of engine name -> config fields")
    return {name: type(engine_config(name)).model_validate(fields) for name, fields in raw.items()}


if __name__ == "__main__":
    sys.exit(main())
