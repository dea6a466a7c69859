"""The search web API (FastAPI) and its page.

Routes: ``/`` (search page), ``/search`` (GET query string, POST form / multipart with an ``image`` file,
POST JSON: the same parameters, :class:`SearchParams`), ``/figure/{key}``, ``/figure/{key}/image``
(``?size=`` for a thumbnail), ``/article/{pmcid}``, ``/facets``, ``/health``; OpenAPI at ``/docs``.
Every error is JSON: ``{"error": {"status", "code", "message"}, "detail": ...}``; unknown parameters
are a 422 that names them, and so are unknown filter values (a misspelt licence or concept: the message names the
closest valid ones); a valid licence or concept the index lacks finds nothing (``notes`` says so).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from biomedica_hf import __version__
from biomedica_hf.filters import UnknownFilterValue
from biomedica_hf.schema import SUBSETS
from biomedica_hf.search.engine import QueryError, SearchEngine, SearchResponse
from biomedica_hf.search.meta import as_query, selection_of
from biomedica_hf.search.page import PAGE_HTML
from biomedica_hf.search.thumbs import SIZES, Thumbnailer, TooLarge

log = logging.getLogger(__name__)
IMAGE_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"}
THUMB_MIN, THUMB_MAX = 16, SIZES[-1]


@dataclass(frozen=True)
class Limits:
    """Request limits (4xx beyond them)."""

    max_upload_bytes: int = 10 * 1024 * 1024   # 413
    max_image_pixels: int = 40_000_000         # 413 (checked from the header, before decoding)
    max_query_chars: int = 1000                # 422
    max_limit: int = 100                       # results per page (422)
    max_depth: int = 1000                      # offset + limit (422)
    max_filter_values: int = 50                # values per filter field (422)
    max_decodes: int = 2                       # thumbnails decoded at the same time
    decode_budget_bytes: int = 512 * 1024 * 1024  # memory for decoding images that cannot be decoded in strips


class SearchParams(BaseModel):
    """The parameters of ``/search``: the same names for a GET query string, a POST form and a POST JSON body."""

    model_config = ConfigDict(extra="forbid")
    q: Optional[str] = Field(None, description="query text (a POST may send an `image` instead or as well)")
    subset: list[str] = Field([], description="commercial / noncommercial / other (any of; repeat the parameter "
                                              "or give a JSON list)")
    license: list[str] = Field([], description="licence codes, e.g. 'CC BY' (any of; case-insensitive; a code this "
                                               "index lacks finds nothing, a misspelt one is a 422)")
    year_min: Optional[int] = Field(None, ge=0, le=9999, description="first publication year")
    year_max: Optional[int] = Field(None, ge=0, le=9999, description="last publication year")
    concept: list[str] = Field([], description="concept labels, e.g. 'Plots and Charts' (any of; case-insensitive; "
                                               "a taxonomy concept this index lacks finds nothing, a misspelt one is "
                                               "a 422)")
    offset: int = Field(0, ge=0, description="figures to skip (paging)")
    limit: int = Field(10, ge=1, description="figures per page (at most the server's max_limit, 100 by default)")
    sources: Optional[str] = Field(None, description="comma list of ranked lists to fuse: bm25, text, "
                                                     "text2image, image, image2text [default: by query type]")


LIST_PARAMS = {"subset", "license", "concept"}
#: how the API names licence codes and concepts in its errors and notes (biomedica_hf.filters.Selection.resolved)
API_WORDS = {"licenses": ("license value(s)", "license"), "concepts": ("concept value(s)", "concept")}
PARAMS = list(SearchParams.model_fields)
HINTS = {"text": "q", "query": "q", "top_k": "limit", "k": "limit", "page": "offset", "licence": "license",
         "subsets": "subset", "licenses": "license", "concepts": "concept", "start": "offset"}


# ---------------------------------------------------------------------------------- response models
class Panel(BaseModel):
    key: str
    panel_index: Optional[int] = None
    image_url: str
    thumbnail_url: str


class Hit(BaseModel):
    """One figure (its best-ranked panel's key; every panel in ``panels``)."""

    model_config = ConfigDict(extra="allow")
    rank: int
    key: str
    pmcid: str
    score: float
    ranks: dict[str, int]
    caption: str
    references: list[str] = []
    figure_label: Optional[str] = None
    title: Optional[str] = None
    journal: Optional[str] = None
    year: Optional[int] = None
    subset: Optional[str] = None
    license_code: Optional[str] = None
    concepts: list[str] = []
    panels: list[Panel] = []
    image_url: str
    thumbnail_url: str
    figure_url: str
    article_url: str
    pmc_url: Optional[str] = None


class SearchOut(BaseModel):
    query: dict[str, Any]
    total: int = Field(description="figures found (a text query with no known term finds none)")
    offset: int
    limit: int
    sources: list[str]
    timings_ms: dict[str, float]
    results: list[Hit]
    notes: list[str] = Field([], description="filter values valid but absent from this index (they select nothing)")


class ErrorBody(BaseModel):
    error: dict[str, Any]
    detail: Any = None


class _TooLarge(HTTPException):
    """Raised while the body streams in; an HTTPException so FastAPI's body parsing passes it on as 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_json(send, 413, "payload_too_large",
                                    f"request body of {int(declared)} bytes exceeds the limit of {self.limit} bytes")
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, "payload_too_large",
                                 f"request body exceeds the limit of {self.limit} bytes")


async def _send_json(send, status: int, code: str, message: str) -> None:
    import json

    body = json.dumps({"error": {"status": status, "code": code, "message": message}, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error(status: int, code: str, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message},
                         "detail": message if detail is None else jsonable_encoder(detail)}, status_code=status)


_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
          415: "unsupported_media_type", 422: "invalid_request", 500: "internal_error", 503: "unavailable"}


def check_image(data: bytes, limits: Limits):
    """The uploaded image, opened and decoded, or an HTTPException (400 / 413 / 415)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"image of {len(data)} bytes exceeds the limit of {limits.max_upload_bytes} bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise HTTPException(415, "unsupported media type: the upload is not a JPEG, PNG, GIF, WebP, TIFF or BMP image"
                            ) from None
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"image has too many pixels: {exc}") from None
    if img.format not in IMAGE_FORMATS:
        raise HTTPException(415, f"unsupported image format {img.format}: use JPEG, PNG, GIF, WebP, TIFF or BMP")
    w, h = img.size
    if w * h > limits.max_image_pixels:
        raise HTTPException(413, f"image of {w}x{h} = {w * h} pixels exceeds the limit of {limits.max_image_pixels}")
    try:
        img.load()
    except Exception as exc:  # truncated / corrupt
        raise HTTPException(400, f"cannot decode the image: {exc}") from None
    return img


def _split_sources(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [s.strip() for s in value.split(",") if s.strip()]


def _query_parameters() -> list[dict[str, Any]]:
    """OpenAPI ``parameters`` for GET /search, from :class:`SearchParams` (the one definition)."""
    schema = SearchParams.model_json_schema()
    out = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        out.append({"name": name, "in": "query", "required": False, "description": prop.pop("description", ""),
                    "schema": prop, **({"explode": True} if name in LIST_PARAMS else {})})
    return out


def _post_body() -> dict[str, Any]:
    """OpenAPI ``requestBody`` for POST /search: the same fields as a form (+ image file) or JSON (+ base64)."""
    schema = SearchParams.model_json_schema()
    form = {**schema, "properties": {**schema["properties"],
                                     "image": {"type": "string", "format": "binary",
                                               "description": "query image (JPEG, PNG, GIF, WebP, TIFF, BMP)"}}}
    js = {**schema, "properties": {**schema["properties"],
                                   "image": {"type": "string", "format": "byte", "description": "query image, base64"}}}
    return {"required": True, "content": {"multipart/form-data": {"schema": form},
                                          "application/x-www-form-urlencoded": {"schema": schema},
                                          "application/json": {"schema": js}}}


def create_app(engine: SearchEngine, limits: Limits | None = None) -> FastAPI:
    """The FastAPI app over a loaded :class:`SearchEngine`."""
    lim = limits or Limits()
    app = FastAPI(title="BIOMEDICA search", version=__version__,
                  description="Hybrid (dense + BM25, reciprocal rank fusion k=60) search over BIOMEDICA figures "
                              "and captions from PubMed Central Open Access.",
                  responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody},
                             415: {"model": ErrorBody},
                             422: {"model": ErrorBody}})
    app.add_middleware(BodyLimit, limit=lim.max_upload_bytes + 64 * 1024)
    app.state.engine = engine
    app.state.limits = lim

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, _CODES.get(exc.status_code, "error"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = ["/".join(str(p) for p in e.get("loc", ())[1:]) + ": " + e.get("msg", "") for e in exc.errors()]
        return _error(422, "invalid_request", "invalid request: " + "; ".join(parts), exc.errors())

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError):
        return _error(400, "bad_request", str(exc))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        """The safety net: anything a route let escape is the API's JSON error (logged with its traceback)."""
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", f"internal error ({type(exc).__name__}); the server log has the details")

    def parse_params(items: list[tuple[str, Any]], where: str) -> SearchParams:
        """One :class:`SearchParams` from (name, value) pairs: unknown names and repeated scalars are 422."""
        unknown = sorted({k for k, _ in items if k not in PARAMS})
        if unknown:
            hints = [f"{k!r} -> use {HINTS[k]!r}" for k in unknown if k in HINTS]
            raise HTTPException(422, f"unknown parameter(s) {', '.join(unknown)} in the {where}"
                                     + (f" ({'; '.join(hints)})" if hints else "")
                                     + f": /search takes {', '.join(PARAMS)}"
                                     + (" and image" if where != "query string" else ""))
        data: dict[str, Any] = {}
        for k, v in items:
            if k in LIST_PARAMS:
                data.setdefault(k, []).extend(v if isinstance(v, list) else [v])
            elif k in data:
                raise HTTPException(422, f"parameter {k} given more than once")
            else:
                data[k] = v
        try:
            params = SearchParams.model_validate(data)
        except ValidationError as exc:
            parts = ["/".join(str(p) for p in e.get("loc", ())) + ": " + e.get("msg", "") for e in exc.errors()]
            raise HTTPException(422, "invalid request: " + "; ".join(parts)) from None
        if params.limit > lim.max_limit:
            raise HTTPException(422, f"limit: must be <= {lim.max_limit}")
        return params

    def run_search(p: SearchParams, image: bytes | None) -> dict:
        text = p.q if p.q and p.q.strip() else None
        if text is None and image is None:
            raise HTTPException(422, "empty query: give q (text) and/or, with POST, an image")
        if p.offset + p.limit > lim.max_depth:
            raise HTTPException(422, f"offset + limit must be <= {lim.max_depth}")
        if p.year_min is not None and p.year_max is not None and p.year_min > p.year_max:
            raise HTTPException(422, f"year_min ({p.year_min}) > year_max ({p.year_max})")
        unknown = [s for s in p.subset if s not in SUBSETS]
        if unknown:
            raise HTTPException(422, f"unknown subset(s) {unknown}: choose from {list(SUBSETS)}")
        for name, values in (("subset", p.subset), ("license", p.license), ("concept", p.concept)):
            if len(values) > lim.max_filter_values:
                raise HTTPException(422, f"at most {lim.max_filter_values} {name} values")
        if text is not None and len(text) > lim.max_query_chars:
            raise HTTPException(422, f"query of {len(text)} characters exceeds the limit of {lim.max_query_chars}")
        try:   # one rule with load_biomedica (biomedica_hf.filters): absent-but-valid finds nothing, misspelt is 422
            selection, notes = selection_of(p.subset, p.license, p.year_min, p.year_max, p.concept).resolved(
                lambda: engine.meta.license_values, lambda: engine.meta.concept_names.values(), words=API_WORDS)
        except (UnknownFilterValue, ValueError) as e:
            raise HTTPException(422, str(e)) from None
        res: SearchResponse = engine.search(text=text, image=image, filters=selection, offset=p.offset,
                                            limit=p.limit, sources=_split_sources(p.sources))
        results = []
        for h in res.hits:
            h = {k: v for k, v in h.items() if k not in ("shard", "image_offset", "image_size", "row")}
            h["references"] = (h.get("references") or [])[:3]
            h["concepts"] = h.get("concepts") or []
            key = h["key"]
            h["panels"] = [{**panel, "image_url": f"/figure/{panel['key']}/image",
                            "thumbnail_url": f"/figure/{panel['key']}/image?size=320"} for panel in h["panels"]]
            h.update(image_url=f"/figure/{key}/image", thumbnail_url=f"/figure/{key}/image?size=320",
                     figure_url=f"/figure/{key}", article_url=f"/article/{h['pmcid']}")
            results.append(h)
        return {"query": {"q": text, "image": image is not None, **as_query(selection)}, "total": res.total,
                "offset": res.offset, "limit": res.limit, "sources": res.sources, "timings_ms": res.timings_ms,
                "results": results, "notes": notes}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    @app.get("/search", response_model=SearchOut, summary="Search by text (query string)",
             openapi_extra={"parameters": _query_parameters()})
    def search_get(request: Request) -> dict:
        """Hybrid text search (BM25 + dense, reciprocal rank fusion k = 60): one hit per figure."""
        return run_search(parse_params(list(request.query_params.multi_items()), "query string"), None)

    @app.post("/search", response_model=SearchOut, summary="Search by text and/or image (form, multipart or JSON)",
              openapi_extra={"requestBody": _post_body()})
    async def search_post(request: Request) -> dict:
        """The same parameters as GET, as a form (``multipart/form-data`` with an optional ``image`` file, or
        ``application/x-www-form-urlencoded``) or a JSON object (``image``: base64 bytes)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        image = None
        if ctype == "application/json":
            try:
                body = await request.json()
            except RecursionError:       # json's parser refuses deep nesting this way, not as a ValueError
                raise HTTPException(400, "the body is not valid JSON: nested too deeply") from None
            except ValueError as exc:
                raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise HTTPException(422, "the JSON body must be an object of search parameters")
            if body.get("image") is not None:
                import base64
                import binascii

                try:
                    image = base64.b64decode(str(body["image"]), validate=True)
                except (binascii.Error, ValueError):
                    raise HTTPException(400, "image: not valid base64") from None
            items = [(k, v) for k, v in body.items() if k != "image"]
            where = "JSON body"
        elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded", ""):
            form = await request.form(max_files=1, max_fields=500)
            items = []
            for k, v in form.multi_items():
                if k != "image":
                    items.append((k, v if isinstance(v, str) else None))
                elif isinstance(v, UploadFile):
                    data = await v.read(lim.max_upload_bytes + 1)
                    if data or v.filename:
                        if not data:
                            raise HTTPException(400, "the uploaded image is empty")
                        image = data
                elif v:
                    raise HTTPException(422, "image: send the image as a file (multipart/form-data)")
            where = "form"
        else:
            raise HTTPException(415, f"unsupported content type {ctype!r}: send multipart/form-data, "
                                     "application/x-www-form-urlencoded or application/json")
        params = parse_params(items, where)
        if image is not None:
            await run_in_threadpool(check_image, image, lim)
        return await run_in_threadpool(run_search, params, image)

    def read_image(key: str) -> bytes:
        found = engine.image_bytes(key)
        assert found is not None
        return found[0]

    thumbnails = Thumbnailer(read_image, max_concurrent=lim.max_decodes, decode_budget=lim.decode_budget_bytes)
    app.state.thumbnails = thumbnails

    def _image(key: str, size: int | None) -> tuple[bytes, str]:
        if engine.meta.key_to_row.get(key) is None:
            raise HTTPException(404, f"no figure {key!r}")
        try:
            return (thumbnails.thumbnail(key, size), "image/jpeg") if size else engine.image_bytes(key)
        except FileNotFoundError as exc:
            raise HTTPException(503, f"image not available: {exc}") from None
        except TooLarge as exc:
            raise HTTPException(413, f"{exc}; the original is at /figure/{key}/image") from None

    @app.get("/figure/{key}", summary="A figure: caption, references, licence, article metadata (+ image bytes)")
    def figure(key: str, include_image: bool = Query(False, description="add the image as base64")) -> dict:
        fig = engine.figure(key)
        if fig is None:
            raise HTTPException(404, f"no figure {key!r}")
        fig = {k: v for k, v in fig.items() if k not in ("image_offset", "image_size", "row")}
        fig.update(image_url=f"/figure/{key}/image", thumbnail_url=f"/figure/{key}/image?size=320")
        if include_image:
            import base64

            data, mime = _image(key, None)
            fig["image"] = {"mime": mime, "bytes": len(data), "base64": base64.b64encode(data).decode()}
        return fig

    @app.get("/figure/{key}/image", summary="The figure's image bytes (or a JPEG thumbnail with ?size=)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
    def figure_image(key: str, size: Optional[int] = Query(
            None, ge=THUMB_MIN, le=THUMB_MAX,
            description=f"longest side of a JPEG thumbnail, rounded up to one of {list(SIZES)}")) -> Response:
        data, mime = _image(key, size)
        return Response(data, media_type=mime, headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/article/{pmcid}", summary="Article metadata and its figures")
    def article(pmcid: str) -> dict:
        art = engine.article(pmcid)
        if art is None:
            raise HTTPException(404, f"no article {pmcid!r}")
        return art

    @app.get("/facets", summary="Values and counts for the filters")
    def facets() -> dict:
        return engine.facets()

    @app.get("/health", summary="Liveness and what the index holds")
    def health() -> dict:
        m = engine.manifest
        return {"status": "ok", "version": __version__, "figures": engine.meta.n_figures, "panels": len(engine.meta),
                "encoder": m["encoder"]["spec"], "joint": engine.joint, "sources": engine.available_sources(),
                "image_search": engine.image_search,
                "dense": {n: p["factory"] for n, p in m["dense"].items()},
                "dataset_available": engine.dataset is not None,
                "limits": {k: getattr(lim, k) for k in lim.__dataclass_fields__}}

    return app
