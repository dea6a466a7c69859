"""JSON of plain records (str, int, bool, None, and lists and str-keyed dicts of them: every column of the dataset's
schema, the build's staged records) with orjson: the bytes of ``json.dumps(ensure_ascii=False, separators=(",",
":"))``, 5-10x faster (a 2,000-figure build encodes ~60 MB of article text and sample metadata twice).

orjson writes the same bytes as ``json`` for strings (every code point, tested), integers below 2^64, booleans,
null, lists and dicts. It differs where ``json`` would write a float in exponent form (``1e-07`` vs ``1e-7``),
``NaN`` / ``Infinity`` (orjson: ``null``), and it refuses lone surrogates, integers of 2^64 and more, non-string
keys and dataclasses, datetimes and other types: a record it refuses is encoded by ``json``. Left to the caller:
no floats (the schema has none: tests/io/test_plainjson.py checks), and no ``uuid.UUID`` or plain ``Enum`` values,
which orjson writes and ``json`` refuses. Without orjson (a platform without its wheels) ``json``
does everything."""
from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:                      # pragma: no cover - a platform without orjson's wheels
    orjson = None

_PASS = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME) if orjson is not None else 0


def _refuse(obj: Any) -> Any:
    raise TypeError(f"not plain JSON data: {type(obj).__name__}")


def compact(record: Any) -> bytes:
    """The dataset's JSON encoding (every ``json`` member, ``io.tars.compact_json``): ``json``'s, UTF-8, no spaces."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def dumps(record: Any) -> bytes:
    """:func:`compact` of a plain record, byte for byte, by orjson where it can (:func:`compact` itself handles, and
    raises for, whatever orjson refuses)."""
    if orjson is not None:
        try:
            return orjson.dumps(record, default=_refuse, option=_PASS)
        except TypeError:                # orjson.JSONEncodeError included
            pass
    return compact(record)


def loads(data: bytes | str) -> Any:
    """``json.loads``, with orjson where it is installed (standard JSON reads alike; orjson refuses ``NaN``)."""
    return orjson.loads(data) if orjson is not None else json.loads(data)


__all__ = ["compact", "dumps", "loads"]
