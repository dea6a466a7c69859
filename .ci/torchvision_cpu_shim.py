"""Environment fix (not part of the product): make PyPI's CUDA-built torchvision importable with the
CPU build of torch.

torchvision 0.28.0 on PyPI is built for CUDA; with ``torch==2.13.0+cpu`` its compiled ops do not load
and ``import torchvision`` fails with "operator torchvision::nms does not exist" (and so do open_clip
and the transformers modules that import it). Registering the schemas of the two ops torchvision's
Python code expects, before it is imported, is enough for transforms and models; the compiled
detection ops stay unavailable.

Run with the virtual environment's python: it writes a ``.pth`` import hook into that environment's
site-packages only when the installed torch is a ``+cpu`` build and ``import torchvision`` fails.
The hook is lazy: torch is imported only when something imports torchvision.
"""
import subprocess
import sys
import sysconfig
from pathlib import Path

SHIM = '''\
import importlib.abc
import sys


class _TorchvisionCpuShim(importlib.abc.MetaPathFinder):
    """Register torchvision's op schemas right before torchvision is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TorchvisionCpuShim.lib = lib  # keep the registration alive
        return None


if not any(isinstance(f, _TorchvisionCpuShim) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionCpuShim())
'''


def main() -> int:
    import torch

    site = Path(sysconfig.get_paths()["purelib"])
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if probe.returncode == 0:
        print("torchvision imports fine: no shim needed")
        return 0
    if "+cpu" not in torch.__version__ or "torchvision::nms" not in probe.stderr:
        print(probe.stderr[-2000:], file=sys.stderr)
        return 1
    (site / "_torchvision_cpu_shim.py").write_text(SHIM)
    (site / "_torchvision_cpu_shim.pth").write_text("import _torchvision_cpu_shim\n")
    check = subprocess.run([sys.executable, "-c", "import torchvision, torchvision.transforms"], capture_output=True,
                           text=True)
    if check.returncode != 0:
        print(check.stderr[-2000:], file=sys.stderr)
        return 1
    print(f"installed the torchvision CPU shim in {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
