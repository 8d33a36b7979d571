"""HTTP API for a trained run: FastAPI app with micro-batched decoding, plus ``serve`` to run it with uvicorn.

    POST /recommend        {"history": ["50", "172"], "k": 10, "exclude_history": true} -> {"items": [...]}
    POST /recommend/batch  {"requests": [<recommend body>, ...]}      -> {"results": [{"items": [...], "error": null}]}
    GET  /items/{key}      title, SID and text fields of one item
    GET  /health           status, catalogue size, model info

In a batch, an entry with unknown item keys gets ``"items": []`` and its ``"error"``; the others are answered.
Every other error is a 4xx with ``{"detail": "<message>"}``: unknown item keys 404 (naming them), a bad API key 401,
malformed JSON 400, out-of-bounds fields 422, a body over ``max_body_bytes`` 413 (refused before it is read), a
chunked body without ``Content-Length`` 411. Needs the ``serve`` extra (fastapi, uvicorn).
"""

import ipaddress
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sidrec.serve.batcher import MicroBatcher
from sidrec.serve.service import Recommendation, Recommender


class RecommendationOut(BaseModel):
    item: str
    title: str
    score: float
    sid: list[int]


class RecommendResponse(BaseModel):
    items: list[RecommendationOut]


class BatchResult(BaseModel):
    items: list[RecommendationOut]
    error: str | None = None  # why this entry has no items (e.g. unknown item keys); the others are unaffected


class BatchResponse(BaseModel):
    results: list[BatchResult]


class ItemResponse(BaseModel):
    item: str
    title: str
    sid: list[int]
    text: dict[str, str | None]


class HealthResponse(BaseModel):
    status: str
    items: int
    model: dict


def _response(recs: list[Recommendation]) -> RecommendResponse:
    return RecommendResponse(items=[RecommendationOut(**r.__dict__) for r in recs])


def _unknown_message(unknown: list[str], recommender: Recommender) -> str:
    # Keys come from the client: cap how many and how much of each is echoed back.
    names = ", ".join(repr(k[:100]) for k in unknown[:5])
    more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
    return f"unknown item key(s): {names}{more}; {recommender.key_examples()}"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """One readable line per problem, e.g. ``history: List should have at least 1 item``; never the input."""
    errors = exc.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        return JSONResponse(status_code=400, content={"detail": "request body is not valid JSON"})
    lines = []
    for e in errors:
        where = ".".join(str(part) for part in e["loc"] if part != "body")
        lines.append(f"{where}: {e['msg']}" if where else e["msg"])
    return JSONResponse(status_code=422, content={"detail": "; ".join(lines)})


class _BodyLimit:
    """ASGI middleware: a request body must declare its size (``Content-Length``) and stay within ``limit`` bytes.

    Checked from the headers alone, so an oversized body is refused before any of it is read into memory.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            problem = None
            if b"transfer-encoding" in headers:
                problem = 411, "send the body with a Content-Length header (chunked bodies are not accepted)"
            elif length is not None and (not length.isdigit() or int(length) > self.limit):
                problem = 413, f"request body over {self.limit} bytes"
            if problem is not None:
                response = JSONResponse(status_code=problem[0], content={"detail": problem[1]})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(recommender: Recommender, api_key: str | None = None, max_history: int = 200,
               max_k: int = 100, max_batch: int = 256, max_wait_ms: float = 5.0,
               max_body_bytes: int = 1 << 20) -> FastAPI:
    """A FastAPI app serving ``recommender``; concurrent requests share batched decodes.

    Args:
        recommender: the loaded run (see ``Recommender.from_run``).
        api_key: if set, every request must send it in the ``X-API-Key`` header (else 401).
        max_history: most item keys accepted in one history.
        max_k: largest ``k`` accepted (also capped at the catalogue size).
        max_batch: most requests in one ``/recommend/batch`` call and in one decode.
        max_wait_ms: how long a request waits for others to share its decode.
        max_body_bytes: largest request body accepted (413 above it).

    Returns:
        The app; run it with uvicorn (``serve`` does) or any ASGI server.

    Example:
        >>> app = create_app(Recommender.from_run("runs/ml-100k"), api_key="secret")  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    for name, value in (("max_history", max_history), ("max_k", max_k), ("max_batch", max_batch),
                        ("max_body_bytes", max_body_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if api_key is not None and not api_key:
        raise ValueError("api_key is empty: pass None to serve without a key, or a non-empty key")
    k_limit = min(max_k, recommender.dataset.num_items)

    # The request models are built here because their bounds are this app's limits.
    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: list[str] = Field(min_length=1, max_length=max_history,
                                   description="item keys, oldest first")
        k: int = Field(default=min(10, k_limit), ge=1, le=k_limit)
        exclude_history: bool = True

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        requests: list[RecommendRequest] = Field(min_length=1, max_length=max_batch)

    batcher = MicroBatcher(recommender, max_batch=max_batch, max_wait_ms=max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="sidrec", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.state.batcher = batcher
    app.add_middleware(_BodyLimit, limit=max_body_bytes)  # added first: the API-key check below runs before it

    if api_key is not None:
        expected = api_key.encode("utf-8")

        # A middleware, not a dependency: it runs before the body is parsed, so a client without the key
        # learns nothing, not even whether its JSON was valid.
        @app.middleware("http")
        async def check_key(request: Request, call_next):
            # Starlette decodes headers as latin-1: encoding back gives the raw bytes the client sent.
            given = request.headers.get("x-api-key", "").encode("latin-1")
            # compare_digest: the time taken does not reveal how much of a guessed key was right.
            if not secrets.compare_digest(given, expected):
                return JSONResponse(status_code=401, content={"detail": "missing or invalid X-API-Key header"})
            return await call_next(request)

    async def decode(requests: list[RecommendRequest]) -> list[list[Recommendation]]:
        try:
            return await batcher.submit_many([(r.history, r.k, r.exclude_history) for r in requests])
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        unknown = recommender.unknown_items(body.history)
        if unknown:
            raise HTTPException(status_code=404, detail=_unknown_message(unknown, recommender))
        return _response((await decode([body]))[0])

    @app.post("/recommend/batch", response_model=BatchResponse)
    async def recommend_batch(body: BatchRequest) -> BatchResponse:
        errors = []
        for r in body.requests:
            unknown = recommender.unknown_items(r.history)
            errors.append(_unknown_message(unknown, recommender) if unknown else None)
        known = [r for r, error in zip(body.requests, errors) if error is None]
        answers = iter(await decode(known) if known else [])
        return BatchResponse(results=[
            BatchResult(items=[], error=error) if error is not None
            else BatchResult(items=_response(next(answers)).items) for error in errors])

    @app.get("/items/{key:path}", response_model=ItemResponse)
    async def item(key: str) -> ItemResponse:
        if recommender.unknown_items([key]):
            raise HTTPException(status_code=404, detail=_unknown_message([key], recommender))
        i = recommender.item_indices([key])[0]
        ds = recommender.dataset
        return ItemResponse(item=key, title=ds.title(i), sid=recommender.item_sids[i].tolist(),
                            text={name: values[i] for name, values in ds.item_text.items()})

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse(status="ok", items=recommender.dataset.num_items, model=recommender.info())

    return app


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1), which other machines cannot reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key_env: str | None = None,
          device: str = "auto", quiet: bool = False, bf16: bool = False, allow_stale: bool = False) -> None:
    """Load a run and serve it with uvicorn until interrupted.

    Args:
        run_dir: a finished run directory.
        host: interface to bind; anything but loopback requires an API key.
        port: TCP port.
        api_key_env: name of the environment variable holding the API key (the key itself never goes on the
            command line, where other users could see it in the process list).
        device: "auto", "cpu", "cuda", ...
        quiet: log only warnings and errors, without the startup banner or the access log.
        bf16: decode under bf16 autocast where it is fast (CUDA, or a CPU with native bf16: AMX or AVX512-BF16).
        allow_stale: serve a stale ``model/`` with a warning instead of refusing (``Recommender.from_run``).

    Example:
        >>> serve("runs/ml-100k", port=8000)  # doctest: +SKIP
    """
    import uvicorn

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {api_key_env}: environment variable {api_key_env} is unset or empty")
    if api_key is None and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could query the model. "
            "Set a key in an environment variable and pass --api-key-env NAME, or bind to 127.0.0.1"
        )
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port}: must be in 0..65535")
    app = create_app(Recommender.from_run(run_dir, device, bf16, allow_stale), api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet)
