"""pyarrow's pandas probe, answered "no" in a process that never hands pyarrow a pandas object.

pyarrow imports pandas lazily (``pyarrow.lib._PandasAPIShim``), but its first conversion of a Python list
(``pa.array``, ``Table.from_pylist``, ``RecordBatch.from_pydict``) asks whether pandas is importable, to check whether
the list is a pandas object, and so imports it: 0.2-0.3 s and ~30 MB in every ``biomedica build``, whose code never
uses pandas (the build's first manifest, before its workers fork; measured in ``docs/scale-and-performance.md``,
tenth round).

:func:`skip_pandas_probe` runs that first probe with ``import pandas`` refused, so pyarrow records "no pandas"
without importing it. Nothing else changes: pyarrow's explicit pandas calls (``Table.to_pandas``,
``Table.from_pandas``, ``pa.array(series)`` after either) import pandas when they are made, as they do where pandas
was never imported. What differs, until such a call, is only that a pandas object passed to ``pa.array`` is read as
a plain sequence (a categorical Series becomes strings, not a dictionary array). So it is called only by commands
that use no pandas (``biomedica build``, ``biomedica card``) and only where the command owns its process (the
``biomedica`` console script: ``biomedica_hf.cli.run``); never on import of the library, nor by a command invoked
in-process (``main([...])``, click's CliRunner, a notebook).
"""
from __future__ import annotations

import importlib.abc
import sys


class _RefusePandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (biomedica: pyarrow's pandas probe skipped)",
                                      name=name)
        return None


def skip_pandas_probe() -> bool:
    """Answer pyarrow's "is pandas importable?" with no, without importing pandas (a later call, or one after pyarrow
    has asked, changes nothing). True when this process runs pyarrow without pandas imported; False where pandas was
    imported already (pyarrow then uses it as usual)."""
    if "pandas" in sys.modules:
        return False
    import pyarrow as pa

    refuse = _RefusePandas()
    sys.meta_path.insert(0, refuse)
    try:
        pa.array([0])               # the shim's first probe; a later one is never made again in this process
    finally:
        sys.meta_path.remove(refuse)
    return "pandas" not in sys.modules
