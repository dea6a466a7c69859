"""biomedica_hf.io.plainjson writes json's bytes: on every row of a real build's tables and sample members, on every
code point, and for whatever orjson refuses (which json then encodes, or refuses, as before)."""
from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomedica_hf.io import plainjson
from biomedica_hf.io.tars import compact_json
from biomedica_hf.schema import ARTICLE_FIELDS, LEDGER_FIELDS, SAMPLE_FIELDS, arrow_schema


def _json(record) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def test_the_schema_holds_no_floats():
    """The one thing plainjson leaves to its callers: the records it writes (sample members, table rows, staged
    records) hold no floats. A float column added to the schema fails here first."""
    from biomedica_hf.dataset.tables import _has_floats

    for fields in (SAMPLE_FIELDS, ARTICLE_FIELDS, LEDGER_FIELDS):
        schema = arrow_schema(fields)
        assert [f.name for f in schema if _has_floats(f.type)] == []
    assert _has_floats(pa.list_(pa.float32()))
    assert _has_floats(pa.struct([("a", pa.string()), ("b", pa.list_(pa.float64()))]))
    assert not _has_floats(pa.list_(pa.string()))
    assert _has_floats(pa.dictionary(pa.int32(), pa.float64()))
    assert not _has_floats(pa.dictionary(pa.int32(), pa.string()))


def test_every_table_row_and_sample_member_of_a_real_build_is_jsons_bytes(built_dataset):
    rows = []
    for table in ("articles.parquet", "figures.parquet", "ledger.parquet"):
        rows += pq.read_table(built_dataset / table).to_pylist()
    members = 0
    for tar in sorted(built_dataset.glob("*/**/*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    rows.append(json.loads(tf.extractfile(m).read()))
                    members += 1
    assert members > 20
    assert len(rows) > 100
    assert [r for r in rows if plainjson.dumps(r) != _json(r)] == []
    assert all(plainjson.loads(plainjson.dumps(r)) == r for r in rows)


def test_every_code_point_and_the_integer_edges():
    chars = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    for i in range(0, len(chars), 4096):
        s = chars[i:i + 4096]
        assert plainjson.dumps({"s": s, "k": [s[:7], None, True, False]}) == _json({"s": s, "k": [s[:7], None, True, False]})
    for n in (0, -1, 2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64, -(2 ** 63), -(2 ** 63) - 1,
              10 ** 30):
        assert plainjson.dumps([n, {"n": n}]) == _json([n, {"n": n}])


def test_what_orjson_refuses_is_jsons_to_encode_or_refuse():
    assert plainjson.dumps({1: "a", None: "b"}) == _json({1: "a", None: "b"})          # non-string keys
    with pytest.raises(UnicodeEncodeError):                                             # a lone surrogate
        plainjson.dumps({"name": "caf\udce9.jpg"})
    with pytest.raises(TypeError):
        plainjson.dumps({"path": Path("x")})


def test_staged_records_of_other_types_are_strings_as_before():
    from biomedica_hf.ingest.staging import _dumps

    assert json.loads(_dumps({"p": Path("a/b"), "n": 1})) == {"p": "a/b", "n": 1}
    assert json.loads(_dumps({"name": "caf\udce9.jpg"})) == {"name": "caf\\xe9.jpg"}
    record = {"articles": [{"full_text": "α β — 37 °C\n\t\"q\"", "year": 2020, "kw": ["a", None]}]}
    assert json.loads(_dumps(record)) == record


def test_table_configs_with_a_float_column_keep_jsons_encoder(tmp_path, monkeypatch):
    """A table of floats (not the build's) goes through compact_json: orjson spells 1e-07 as 1e-7."""
    from biomedica_hf.dataset import tables

    assert plainjson.dumps([1e-07]) != compact_json([1e-07])       # why the float check exists
    pq.write_table(pa.table({"pmcid": ["PMC1", "PMC2"], "score": [1e-07, 0.5]}), tmp_path / "t.parquet")
    monkeypatch.setattr(tables, "TABLE_CONFIGS", {"t": ("t.parquet", "pmcid", ())})
    assert tables.write_table_configs(tmp_path) == {"t": 2}
    with tarfile.open(tmp_path / "t" / "t-000000.tar") as tf:
        assert [tf.extractfile(m).read() for m in tf] == [b'{"pmcid":"PMC1","score":1e-07}',
                                                          b'{"pmcid":"PMC2","score":0.5}']
