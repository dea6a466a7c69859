"""Issue 24: annotation files that name one cluster twice (``"3"`` and ``"03"``, a repeated key), or with ids no
integer reading survives (5,000 digits, non-ASCII digits, deep nesting): refused with an error naming them."""
from __future__ import annotations

import json

import pytest

from biomedica_hf.concepts.label import AnnotationError, read_annotation

ENTRY = {"panel_type": "", "panel_subtype": "", "global_class": [], "local_class": []}


def _entry(panel: str) -> str:
    return json.dumps({**ENTRY, "panel_type": panel})


def test_the_same_cluster_spelled_twice_is_refused(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(f'{{"3": {_entry("Microscopy")}, "03": {_entry("Chart")}}}')
    with pytest.raises(AnnotationError, match=r"cluster ids '3' and '03' are the same cluster 3"):
        read_annotation(f)


def test_a_repeated_key_is_refused(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(f'{{"3": {_entry("Microscopy")}, "4": {_entry("Chart")}, "3": {_entry("Chart")}}}')
    with pytest.raises(AnnotationError, match=r"key\(s\) \['3'\] repeated"):
        read_annotation(f)
    f.write_text('{"3": {"panel_type": "Microscopy", "panel_type": "Chart"}}')      # inside one cluster too
    with pytest.raises(AnnotationError, match=r"key\(s\) \['panel_type'\] repeated"):
        read_annotation(f)


@pytest.mark.parametrize("key", ["9" * 5000, "\u0663", "\u00b2", "-1", "3.0", " 3"])
def test_ids_that_are_not_small_ascii_integers_are_refused(tmp_path, key):
    f = tmp_path / "a.json"
    f.write_text(json.dumps({key: ENTRY, "1": ENTRY}))
    with pytest.raises(AnnotationError, match="cluster ids are non-negative integers"):
        read_annotation(f)


def test_deeply_nested_json_is_an_annotation_error(tmp_path):
    f = tmp_path / "a.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnnotationError, match="not a readable JSON file"):
        read_annotation(f)


def test_distinct_ids_still_read(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(f'{{"0": {_entry("Microscopy")}, "012": {_entry("Chart")}}}')
    assert sorted(read_annotation(f)) == [0, 12]
