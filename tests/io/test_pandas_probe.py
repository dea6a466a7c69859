"""pyarrow's pandas probe answered without importing pandas (``biomedica_hf.io.pandas_probe``). Each case runs in a
fresh interpreter: the answer is process-wide, and this test process imports pandas elsewhere."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_list_conversions_after_the_probe_import_no_pandas_and_convert_as_before():
    out = _run("""
        import sys
        import pyarrow as pa
        from biomedica_hf.io.pandas_probe import skip_pandas_probe
        rows = [{"a": 1, "b": "x", "c": [1, 2]}, {"a": None, "b": "y", "c": []}]
        assert skip_pandas_probe() is True
        table = pa.Table.from_pylist(rows)
        batch = pa.RecordBatch.from_pydict({"a": [1, 2]})
        print("PANDAS", "pandas" in sys.modules)
        print("TYPES", table.schema.types, batch.schema.types, table.to_pylist() == rows)
        print("AGAIN", skip_pandas_probe(), "pandas" in sys.modules)      # asked already: nothing changes
    """)
    assert "PANDAS False" in out
    assert "TYPES [DataType(int64), DataType(string), ListType(list<item: int64>)] [DataType(int64)] True" in out
    assert "AGAIN True False" in out


def test_pandas_still_works_with_pyarrow_when_asked_for():
    """An explicit pandas call imports pandas as usual; after it pyarrow recognises pandas objects again."""
    out = _run("""
        import pyarrow as pa
        from biomedica_hf.io.pandas_probe import skip_pandas_probe
        assert skip_pandas_probe() is True
        df = pa.table({"a": [1, 2]}).to_pandas()
        print("DF", type(df).__name__, df["a"].tolist())
        import pandas as pd
        print("ARRAY", pa.array(pd.Series(pd.Categorical(["u", "v", "u"]))).type)
        print("BACK", pa.Table.from_pandas(pd.DataFrame({"x": [1.5]})).column("x").to_pylist())
    """)
    assert "DF DataFrame [1, 2]" in out
    assert "ARRAY dictionary<values=" in out
    assert "BACK [1.5]" in out


def test_nothing_changes_where_pandas_is_already_imported():
    out = _run("""
        import pandas as pd
        import pyarrow as pa
        from biomedica_hf.io.pandas_probe import skip_pandas_probe
        print("SKIPPED", skip_pandas_probe())
        print("ARRAY", pa.array(pd.Series(pd.Categorical(["u", "v"]))).type)
    """)
    assert "SKIPPED False" in out
    assert "ARRAY dictionary<values=" in out
