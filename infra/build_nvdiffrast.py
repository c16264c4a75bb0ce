"""Compile nvdiffrast's CUDA plugin while building infra/Dockerfile.gpu, so the runtime image
needs neither nvcc nor a compiler: at run time diffrp-nvdiffrast first imports the prebuilt module
from TORCH_EXTENSIONS_DIR and only falls back to compiling when it is missing.

The build has no GPU and no driver: compiling needs only nvcc and TORCH_CUDA_ARCH_LIST, but loading
the result may need libcuda.so.1, so an import error after a successful build is reported, not
fatal. A missing .so is fatal.
"""

import os
import sys
from pathlib import Path

import nvdiffrast.torch.ops as ops

root = Path(os.environ["TORCH_EXTENSIONS_DIR"])
print("TORCH_CUDA_ARCH_LIST =", os.environ.get("TORCH_CUDA_ARCH_LIST"), flush=True)
try:
    ops._get_plugin(gl=False)  # the CUDA rasteriser; the OpenGL plugin is not used
except (ImportError, OSError) as exc:
    print(f"built, not loadable without a driver (expected in docker build): {exc}", flush=True)
built = sorted(root.glob("nvdiffrast_plugin*/nvdiffrast_plugin*.so"))
if not built:
    sys.exit(f"nvdiffrast plugin was not built under {root}")
print("built:", *built, sep="\n  ")
