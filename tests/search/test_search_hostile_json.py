"""Issue 24: a deeply nested JSON body is the API's JSON error (4xx, application/json), never a 500 text/plain.
Real parts: the fixture dataset built by the pipeline, its CLIP index, FastAPI's TestClient."""
from __future__ import annotations

import pytest
from test_search_support import engine

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from biomedica_hf.search.app import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    return TestClient(create_app(engine(tmp_path_factory, "clip")), raise_server_exceptions=False)


@pytest.mark.parametrize(("body", "status"), [
    ("[" * 100_000 + "]" * 100_000, 400),                                  # past the parser's recursion limit
    ('{"q": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}", 400),
    ('{"q": "cells", "subset": ' + "[" * 5_000 + '"other"' + "]" * 5_000 + "}", 400),
    ('{"q": "cells", "subset": ' + "[" * 200 + '"other"' + "]" * 200 + "}", 422),   # parses: a wrong type
    ('{"q": ' + '{"a": ' * 200 + "1" + "}" * 200 + "}", 422),
])
def test_deeply_nested_json_is_a_json_error(client, body, status):
    res = client.post("/search", content=body.encode(), headers={"content-type": "application/json"})
    assert res.status_code == status, res.text[:300]
    assert res.headers["content-type"] == "application/json"
    err = res.json()["error"]
    assert err["status"] == status
    assert err["message"]
    if status == 400:
        assert "nested too deeply" in err["message"]


def test_an_unexpected_error_is_still_json(tmp_path_factory):
    """The safety net: whatever escapes a route is a JSON 500 (no traceback text), not Starlette's text/plain."""
    app = create_app(engine(tmp_path_factory, "clip"))

    def boom() -> dict:
        raise RecursionError("maximum recursion depth exceeded")

    app.add_api_route("/boom", boom)
    res = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert res.status_code == 500
    assert res.headers["content-type"] == "application/json"
    assert res.json()["error"] == {"status": 500, "code": "internal_error",
                                   "message": "internal error (RecursionError); the server log has the details"}
