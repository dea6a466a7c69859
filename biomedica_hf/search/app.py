"""The search web API (FastAPI) and its page.

Routes: ``/`` (search page), ``/search`` (GET ``q`` / POST multipart ``text`` + ``image``), ``/figure/{key}``,
``/figure/{key}/image`` (``?size=`` for a thumbnail), ``/article/{pmcid}``, ``/facets``, ``/health``;
OpenAPI at ``/docs``. Every error is JSON: ``{"error": {"status", "code", "message"}, "detail": ...}``.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..schema import SUBSETS
from .engine import QueryError, SearchEngine, SearchResponse
from .meta import Filters
from .page import PAGE_HTML

log = logging.getLogger(__name__)
IMAGE_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"}
THUMB_MIN, THUMB_MAX = 16, 1024


@dataclass(frozen=True)
class Limits:
    """Request limits (4xx beyond them)."""

    max_upload_bytes: int = 10 * 1024 * 1024   # 413
    max_image_pixels: int = 40_000_000         # 413 (checked from the header, before decoding)
    max_query_chars: int = 1000                # 422
    max_limit: int = 100                       # results per page (422)
    max_depth: int = 1000                      # offset + limit (422)
    max_filter_values: int = 50                # values per filter field (422)


# ---------------------------------------------------------------------------------- response models
class Hit(BaseModel):
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
    image_url: str
    thumbnail_url: str
    figure_url: str
    article_url: str
    pmc_url: Optional[str] = None


class SearchOut(BaseModel):
    query: dict[str, Any]
    total: int
    offset: int
    limit: int
    sources: list[str]
    timings_ms: dict[str, float]
    results: list[Hit]


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

    def run_search(text: str | None, image: bytes | None, subset: list[str], license: list[str], year_min: int | None,
                   year_max: int | None, concept: list[str], offset: int, limit: int, sources: str | None) -> dict:
        if offset + limit > lim.max_depth:
            raise HTTPException(422, f"offset + limit must be <= {lim.max_depth}")
        if year_min is not None and year_max is not None and year_min > year_max:
            raise HTTPException(422, f"year_min ({year_min}) > year_max ({year_max})")
        unknown = [s for s in subset if s not in SUBSETS]
        if unknown:
            raise HTTPException(422, f"unknown subset(s) {unknown}: choose from {list(SUBSETS)}")
        for name, values in (("subset", subset), ("license", license), ("concept", concept)):
            if len(values) > lim.max_filter_values:
                raise HTTPException(422, f"at most {lim.max_filter_values} {name} values")
        if text is not None and len(text) > lim.max_query_chars:
            raise HTTPException(422, f"query of {len(text)} characters exceeds the limit of {lim.max_query_chars}")
        filters = Filters(subsets=subset, licenses=license, year_min=year_min, year_max=year_max, concepts=concept)
        res: SearchResponse = engine.search(text=text, image=image, filters=filters, offset=offset, limit=limit,
                                            sources=_split_sources(sources))
        results = []
        for h in res.hits:
            h = {k: v for k, v in h.items() if k not in ("shard", "image_offset", "image_size", "row")}
            h["references"] = (h.get("references") or [])[:3]
            h["concepts"] = h.get("concepts") or []
            key = h["key"]
            h.update(image_url=f"/figure/{key}/image", thumbnail_url=f"/figure/{key}/image?size=320",
                     figure_url=f"/figure/{key}", article_url=f"/article/{h['pmcid']}")
            results.append(h)
        return {"query": {"text": text, "image": image is not None, **filters.as_dict()}, "total": res.total,
                "offset": res.offset, "limit": res.limit, "sources": res.sources, "timings_ms": res.timings_ms,
                "results": results}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    @app.get("/search", response_model=SearchOut, summary="Text search (hybrid BM25 + dense, RRF)")
    def search_get(
        q: str = Query(..., min_length=1, description="query text"),
        subset: list[str] = Query([], description="commercial / noncommercial / other (any of)"),
        license: list[str] = Query([], description="licence codes, e.g. 'CC BY' (any of)"),
        year_min: Optional[int] = Query(None, ge=0, le=9999),
        year_max: Optional[int] = Query(None, ge=0, le=9999),
        concept: list[str] = Query([], description="concept labels (any of)"),
        offset: int = Query(0, ge=0),
        limit: int = Query(10, ge=1, le=lim.max_limit),
        sources: Optional[str] = Query(None, description="comma list of bm25,text,text2image,image,image2text"),
    ) -> dict:
        return run_search(q, None, subset, license, year_min, year_max, concept, offset, limit, sources)

    @app.post("/search", response_model=SearchOut, summary="Text and/or image search (multipart form)")
    def search_post(
        text: Optional[str] = Form(None, description="query text"),
        image: Optional[UploadFile] = File(None, description="query image (JPEG, PNG, GIF, WebP, TIFF, BMP)"),
        subset: list[str] = Form([]),
        license: list[str] = Form([]),
        year_min: Optional[int] = Form(None, ge=0, le=9999),
        year_max: Optional[int] = Form(None, ge=0, le=9999),
        concept: list[str] = Form([]),
        offset: int = Form(0, ge=0),
        limit: int = Form(10, ge=1, le=lim.max_limit),
        sources: Optional[str] = Form(None),
    ) -> dict:
        data = None
        if image is not None:
            data = image.file.read(lim.max_upload_bytes + 1)
            if not data and not image.filename:
                data = None  # an empty file input
            elif not data:
                raise HTTPException(400, "the uploaded image is empty")
            else:
                check_image(data, lim)
        text = text if text and text.strip() else None
        if text is None and data is None:
            raise HTTPException(400, "empty query: give `text` and/or an `image` file")
        return run_search(text, data, subset, license, year_min, year_max, concept, offset, limit, sources)

    @lru_cache(maxsize=1024)
    def thumbnail(key: str, size: int) -> tuple[bytes, str]:
        from PIL import Image

        found = engine.image_bytes(key)
        assert found is not None
        img = Image.open(io.BytesIO(found[0]))
        img.draft("RGB", (size, size))
        img = img.convert("RGB")
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"

    def _image(key: str, size: int | None) -> tuple[bytes, str]:
        if engine.meta.key_to_row.get(key) is None:
            raise HTTPException(404, f"no figure {key!r}")
        try:
            return thumbnail(key, size) if size else engine.image_bytes(key)
        except FileNotFoundError as exc:
            raise HTTPException(503, f"image not available: {exc}") from None

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
    def figure_image(key: str, size: Optional[int] = Query(None, ge=THUMB_MIN, le=THUMB_MAX)) -> Response:
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
        return {"status": "ok", "version": __version__, "figures": len(engine.meta),
                "encoder": m["encoder"]["spec"], "joint": engine.joint, "sources": engine.available_sources(),
                "dense": {n: p["factory"] for n, p in m["dense"].items()},
                "dataset_available": engine.dataset is not None,
                "limits": {k: getattr(lim, k) for k in lim.__dataclass_fields__}}

    return app
