"""Environment fix (not part of the product): make PyPI's CUDA-built torchvision importable with the
CPU build of torch.

torchvision 0.28.0 on PyPI is built for CUDA; with ``torch==2.13.0+cpu`` its compiled ops do not load
and ``import torchvision`` fails with "operator torchvision::nms does not exist" (and so do open_clip
and the transformers modules that import it). Registering the schemas of the two ops torchvision's
Python code expects, before it is imported, is enough for transforms and models; the compiled
detection ops stay unavailable.

Run with the virtual environment's python: it writes a ``.pth`` import hook into that environment's
site-packages only when the installed torch is a ``+cpu`` build and ``import torchvision`` fails.
The hook is lazy: torch is imported only when something imports torchvision, not when a library only
asks whether torchvision is installed (``datasets`` does at import: with an eager hook, ``import datasets``
cost ~2 CPU s, most of it torch, in every command that writes a dataset card).
"""
import subprocess
import sys
import sysconfig
from pathlib import Path

SHIM = '''\
import importlib.abc
import importlib.machinery
import sys


def _register_ops():
    """torchvision's two op schemas, once (this imports torch)."""
    if getattr(_TorchvisionCpuShim, "lib", None) is None:
        import torch

        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TorchvisionCpuShim.lib = lib  # keep the registration alive


class _Loader(importlib.abc.Loader):
    """torchvision's own loader, with the op schemas registered right before its code runs."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        _register_ops()
        self.inner.exec_module(module)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _TorchvisionCpuShim(importlib.abc.MetaPathFinder):
    """Register torchvision's op schemas right before torchvision is first imported (not when something
    only asks whether it is installed: ``importlib.util.find_spec("torchvision")``, as ``datasets`` does)."""

    lib = None

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or isinstance(spec.loader, _Loader):
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


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
