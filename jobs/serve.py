"""Serve stores read-only over HTTP: ``jetscan serve STORE... [--host H] [--port N] [--token-file F]``.

The whole story of the stage:

1. Each named store (a local folder; ``NAME=PATH`` names it, else the folder's name without
   ``.zarr``) is checked and resolved once at start. Only these stores are ever served.
2. ``/stores/NAME/...`` serves the store as zarr v3 over HTTP: every file of the zarr
   hierarchy with HTTP range requests (206, suffix ranges for shard indexes), so
   ``zarr.open_group("http://HOST:PORT/stores/NAME", mode="r", storage_options={"headers":
   {"Authorization": "Bearer TOKEN"}})`` reads any array from another machine. HTTP cannot
   list folders (zarr #1568, #2984), so a group's ``zarr.json`` is answered with zarr's inline
   consolidated metadata of everything below it, built in memory from the folder
   (:func:`jetscan.storage.remote.consolidated_group_json`): serving never writes into a store,
   and the listing is never stale. ``jetscan evaluate`` also consolidates each ``results/<run>/``
   on disk (:func:`jetscan.storage.results.write_run`) for readers of object stores. Folders that are
   not zarr (``_catalog``, ``_results``, ``_runs``), hidden files and anything outside the
   store (``..`` in any encoding, absolute paths, symlinks leading out) are refused.
3. ``/api/...`` answers queries (:class:`jetscan.storage.remote.StoreReader` does the work):
   stores, samples with jet counts from the shard catalog, runs with their settings, the
   metrics table filtered by any column (a safe filter language, never ``eval``), as JSON,
   Arrow IPC or parquet, in pages (``limit``/``offset``, at most ``max_page_rows``); one run's
   ROC curve and score and jet-mass histograms, down-sampled. ``/openapi.json`` is the schema.
4. Safety: a bearer token is required (compared with :func:`hmac.compare_digest`) unless the
   service listens on loopback only and was started with ``--no-auth``. Only GET and HEAD are
   accepted (405 otherwise); requests in flight are bounded (503 beyond ``max_concurrency``);
   whole-file responses are bounded (``max_file_bytes``; ranges beyond it); no CORS unless
   origins are given (then a browser's preflight, which carries no token, is answered before
   the token check); every error is JSON ``{"error": "..."}``, never a traceback.
"""

import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jetscan.core.errors import ConfigError, JetscanError, StorageError

__all__ = ["ServeSettings", "create_app", "parse_stores", "serve", "serve_cmd"]

log = logging.getLogger("jetscan.serve")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
_SEGMENT = re.compile(r"[A-Za-z0-9_.\-]{1,255}")
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"


class ServeSettings(BaseModel):
    """Limits of one service (defaults fit a laptop serving a few studies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_page_rows: int = Field(1000, ge=1, le=100_000, description="rows per page of any table")
    default_page_rows: int = Field(100, ge=1, le=100_000)
    max_concurrency: int = Field(32, ge=1, le=1024, description="requests in flight; more get 503")
    max_file_bytes: int = Field(64 << 20, ge=1, description="largest whole-file response; ask for a Range beyond")
    cors_origins: tuple[str, ...] = Field((), description="origins allowed by CORS (none by default)")

    @model_validator(mode="after")
    def _default_page_fits(self) -> "ServeSettings":
        if self.default_page_rows > self.max_page_rows:
            raise ValueError(
                f"default_page_rows ({self.default_page_rows}) is more than max_page_rows ({self.max_page_rows}): "
                "a page asked for without a limit would exceed the limit; lower default_page_rows or raise max_page_rows"
            )
        return self


def _settings_error(exc: ValidationError) -> ConfigError:
    """One ConfigError naming every invalid setting, its rule and value (no pydantic traceback)."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{key}: {msg} (got {err.get('input')!r})" if key else msg)
    return ConfigError("jetscan serve settings: " + "; ".join(problems))


# --------------------------------------------------------------------------------------
# response models (the OpenAPI schema is the contract)


class ErrorOut(BaseModel):
    error: str


class StoreOut(BaseModel):
    name: str
    study: Optional[str] = None
    jetscan: Optional[str] = None
    zarr_url: str = Field(description="path of the store's zarr root on this service")
    samples: list[str]
    runs: list[str]
    max_page_rows: int


class PageOut(BaseModel):
    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="non-finite floats as 'NaN', 'Infinity', '-Infinity'")
    total: int
    offset: int
    limit: int
    next_offset: Optional[int] = None


class RocOut(BaseModel):
    run: str
    signal: str
    eps_b: list[float | str]
    eps_s: list[float | str]
    threshold: list[float | str] = Field(description="cut score >= threshold; the first is 'Infinity'")


class HistOut(BaseModel):
    edges: list[float | str]
    counts: dict[str, list[int]]


class SelectionOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    counts: list[float | str]


class MassHistOut(HistOut):
    background: Optional[str] = None
    inclusive: list[float | str]
    selections: dict[str, SelectionOut]


class HistogramsOut(BaseModel):
    run: str
    score: HistOut
    mass: MassHistOut


_ERRORS = {400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 422: {"model": ErrorOut}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_TABLE_RESPONSES = {
    **_ERRORS,
    200: {
        "description": "one page of the table: JSON, Arrow IPC stream or parquet (headers X-Total-Rows, X-Next-Offset)",
        "content": {ARROW: _BINARY, PARQUET: _BINARY},
    },
}


# --------------------------------------------------------------------------------------
# stores


def parse_stores(specs: list[str]) -> dict[str, Path]:
    """``[PATH or NAME=PATH, ...]`` -> {name: resolved folder}; every problem named at once."""
    out: dict[str, Path] = {}
    problems = []
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec and "://" not in spec.split("=", 1)[0] else ("", "", spec)
        if "://" in path:
            problems.append(f"{spec}: jetscan serve serves local folders; read object stores directly (jetscan.connect({path!r}))")
            continue
        folder = Path(path).expanduser()
        name = name or (folder.name[: -len(".zarr")] if folder.name.endswith(".zarr") else folder.name)
        if not _NAME.match(name):
            problems.append(f"{spec}: store name {name!r} must be letters, digits, '_', '-', '.' (name it with NAME=PATH)")
        elif name in out:
            problems.append(f"{spec}: two stores named {name!r}: name them with NAME=PATH")
        elif not (folder / "zarr.json").is_file():
            problems.append(f"{spec}: no jetscan store there (no zarr.json in {str(folder)!r})")
        else:
            out[name] = folder.resolve()
    if problems:
        raise ConfigError("cannot serve: " + "; ".join(problems))
    if not out:
        raise ConfigError("name at least one store to serve: jetscan serve out/quickstart.zarr")
    return out


def _resolve(root: Path, path: str) -> Path:
    """The file ``path`` names inside ``root``, or an HTTP error (400 bad path, 404 not served)."""
    from fastapi import HTTPException

    parts = path.split("/")
    if not path or any(not _SEGMENT.fullmatch(p) or p in (".", "..") for p in parts):
        raise HTTPException(400, f"path {path!r} is not a path inside the store (segments of letters, digits, '_', '-', '.')")
    if any(p[0] in "._" for p in parts):
        raise HTTPException(404, f"{path!r} is not served: only the store's zarr hierarchy is")
    full = (root / path).resolve()
    if not full.is_relative_to(root) or not full.is_file():
        raise HTTPException(404, f"no file {path!r} in the store")
    return full


_RANGE = re.compile(r"bytes=(\d{1,19})-(\d{0,19})|bytes=-(\d{1,19})")


def _check_range(value: str, size: int) -> None:
    """One byte range (``bytes=a-b``, ``bytes=a-`` or the suffix ``bytes=-n``), as zarr asks:
    anything else is a JSON 400, a range past the end a JSON 416."""
    from fastapi import HTTPException

    m = _RANGE.fullmatch(value.strip())
    if not m:
        raise HTTPException(400, f"Range {value[:100]!r} not supported: ask for one range, bytes=START-END, bytes=START- or bytes=-N")
    start, end, suffix = m.groups()
    if suffix is not None:
        if int(suffix) == 0:
            raise HTTPException(416, f"Range {value!r}: an empty suffix selects nothing", headers={"content-range": f"bytes */{size}"})
        if size == 0:
            raise HTTPException(416, f"Range {value!r}: the file is empty (0 bytes)", headers={"content-range": "bytes */0"})
        return
    if int(start) >= size or (end and int(end) < int(start)):
        raise HTTPException(416, f"Range {value!r} is outside the file's {size} bytes", headers={"content-range": f"bytes */{size}"})


# --------------------------------------------------------------------------------------
# the guard: auth, verbs, concurrency, last-resort errors (one ASGI middleware)


class _Guard:
    def __init__(self, app, *, token: str | None, max_concurrency: int):
        self.app = app
        self.token = token.encode() if token else None
        self.max_concurrency = max_concurrency
        self.active = 0

    async def _reply(self, send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    def _authorised(self, scope) -> bool:
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token is not None and not self._authorised(scope):
            return await self._reply(send, 401, "missing or wrong token: send 'Authorization: Bearer TOKEN'", {"www-authenticate": "Bearer"})
        if scope["method"] not in ("GET", "HEAD"):
            return await self._reply(send, 405, f"{scope['method']} is not allowed: this service is read-only (GET, HEAD)", {"allow": "GET, HEAD"})
        if self.active >= self.max_concurrency:
            return await self._reply(send, 503, f"busy: {self.active} requests in flight; retry shortly", {"retry-after": "1"})
        self.active += 1
        started = False
        done = False

        def finish() -> None:
            nonlocal done
            if not done:
                done = True
                self.active -= 1

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()  # the answer is out: the client may send its next request before this task ends
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # noqa: BLE001 - the last resort: log it, answer JSON, never a traceback
            log.exception("request %s %s failed", scope["method"], scope.get("path"))
            if not started:
                await self._reply(send, 500, "internal error (logged by the service)")
        finally:
            finish()


# --------------------------------------------------------------------------------------
# the app


def create_app(stores: dict[str, str | Path] | list[str], *, token: str | None, settings: ServeSettings | None = None):
    """The FastAPI app serving ``stores`` ({name: folder} or ``parse_stores`` specs).

    ``token=None`` serves without authentication (``serve`` allows that on loopback only).
    """
    from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from jetscan.storage import remote

    settings = settings or ServeSettings()
    roots = parse_stores(list(stores)) if isinstance(stores, list) else {n: Path(p).resolve() for n, p in stores.items()}
    # readers name their store by its served name: answers never show the server's folders
    readers = {name: remote.StoreReader(str(path), name=name) for name, path in roots.items()}
    consolidated: dict = {}  # group folder -> (signature of the zarr.json files below, answer)

    app = FastAPI(
        title="jetscan results",
        version="1",
        description="Read-only access to jetscan stores: zarr v3 over HTTP under /stores/NAME, queries under /api.",
        docs_url=None,
        redoc_url=None,
    )

    def error(status: int, message: str, headers=None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        if any(e.get("loc", ("",))[0] == "path" for e in exc.errors()):  # e.g. /stores/../x: no such resource
            return error(404, f"not found: {request.url.path!r}")
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path"))
            parts.append(f"{where}: {e.get('msg')}")
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(ConfigError)
    async def _config_error(request: Request, exc: ConfigError):
        return error(400, str(exc))

    @app.exception_handler(JetscanError)
    async def _jetscan_error(request: Request, exc: JetscanError):
        return error(404 if isinstance(exc, StorageError) else 400, str(exc))

    @app.exception_handler(Exception)
    async def _any_error(request: Request, exc: Exception):
        log.exception("request %s failed", request.url.path)
        return error(500, "internal error (logged by the service)")

    def reader(store: str) -> remote.StoreReader:
        if store not in readers:
            raise HTTPException(404, f"no store {store!r} here; stores: {', '.join(readers)}")
        return readers[store]

    def store_out(name: str) -> StoreOut:
        info = readers[name].info()
        return StoreOut(name=name, zarr_url=f"/stores/{name}", max_page_rows=settings.max_page_rows, **info)

    def table_response(table, fmt: str, limit: Optional[int], offset: int):
        limit = settings.default_page_rows if limit is None else limit
        total = table.num_rows
        page = table.slice(offset, limit) if offset < total else table.slice(0, 0)
        next_offset = offset + page.num_rows if offset + page.num_rows < total else None
        headers = {"X-Total-Rows": str(total)}
        if next_offset is not None:
            headers["X-Next-Offset"] = str(next_offset)
        if fmt == "arrow":
            return Response(remote.table_to_ipc(page), media_type=ARROW, headers=headers)
        if fmt == "parquet":
            return Response(remote.table_to_parquet(page), media_type=PARQUET, headers=headers)
        rows = remote.json_safe(page.to_pylist())
        return JSONResponse(
            PageOut(columns=page.column_names, rows=rows, total=total, offset=offset, limit=limit, next_offset=next_offset).model_dump(),
            headers=headers,
        )

    store_param = dict(pattern=NAME_PATTERN, description="store name (GET /api/stores lists them)")
    fmt_param = Query("json", description="json, arrow (Arrow IPC stream) or parquet")
    limit_param = Query(None, ge=1, le=settings.max_page_rows, description=f"rows per page (default {settings.default_page_rows})")
    offset_param = Query(0, ge=0, le=2**53, description="first row of the page")

    api = APIRouter(prefix="/api", responses=_ERRORS)

    @api.get("/stores", response_model=list[StoreOut], summary="the stores served here")
    def list_stores():
        return [store_out(n) for n in readers]

    from fastapi import Path as PathParam

    @api.get("/stores/{store}", response_model=StoreOut, summary="one store: study, samples, evaluated runs")
    def get_store(store: str = PathParam(..., **store_param)):
        reader(store)
        return store_out(store)

    @api.get("/stores/{store}/samples", response_model=PageOut, responses=_TABLE_RESPONSES, summary="samples with jet counts from the shard catalog")
    def samples(
        store: str = PathParam(..., **store_param),
        format: Literal["json", "arrow", "parquet"] = fmt_param,
        limit: Optional[int] = limit_param,
        offset: int = offset_param,
    ):
        return table_response(reader(store).samples(), format, limit, offset)

    @api.get("/stores/{store}/runs", response_model=PageOut, responses=_TABLE_RESPONSES, summary="evaluated runs with their settings")
    def runs(
        store: str = PathParam(..., **store_param),
        format: Literal["json", "arrow", "parquet"] = fmt_param,
        limit: Optional[int] = limit_param,
        offset: int = offset_param,
    ):
        return table_response(reader(store).runs(), format, limit, offset)

    @api.get(
        "/stores/{store}/results",
        response_model=PageOut,
        responses=_TABLE_RESPONSES,
        summary="the metrics table (one row per run and signal), filtered by any column",
    )
    def results(
        store: str = PathParam(..., **store_param),
        query: Optional[str] = Query(
            None, max_length=remote.MAX_QUERY_CHARS,
            description="filter, e.g. model == 'pca' and signal in ['top', 'gluino'] and e100 > 0.1 (and/or/not, == != < <= > >=, in)",
        ),
        columns: Optional[str] = Query(None, max_length=4000, description="comma-separated columns to return (default all)"),
        format: Literal["json", "arrow", "parquet"] = fmt_param,
        limit: Optional[int] = limit_param,
        offset: int = offset_param,
    ):
        cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        return table_response(reader(store).results(query, cols), format, limit, offset)

    run_param = dict(pattern=NAME_PATTERN, description="run name")

    @api.get("/stores/{store}/runs/{run}/roc", response_model=RocOut, summary="one run's ROC curve for one signal, down-sampled")
    def roc(
        store: str = PathParam(..., **store_param),
        run: str = PathParam(..., **run_param),
        signal: str = Query(..., pattern=NAME_PATTERN, description="signal sample"),
        max_points: int = Query(200, ge=10, le=remote.MAX_ROC_POINTS),
    ):
        t = reader(store).roc(run, signal, max_points)
        return RocOut(run=run, signal=signal, **{k: remote.json_safe(t.column(k).to_numpy()) for k in t.column_names})

    @api.get("/stores/{store}/runs/{run}/histograms", response_model=HistogramsOut, summary="one run's score and jet-mass histograms")
    def histograms(
        store: str = PathParam(..., **store_param),
        run: str = PathParam(..., **run_param),
        bins: int = Query(40, ge=2, le=remote.MAX_HIST_BINS),
    ):
        return remote.json_safe(reader(store).histograms(run, bins))

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def index():
        return {"service": "jetscan", "stores": {n: f"/stores/{n}" for n in readers}, "openapi": "/openapi.json"}

    def zarr_file(request: Request, store: str = PathParam(..., **store_param), path: str = PathParam(...)):
        reader(store)
        full = _resolve(roots[store], path)
        if full.name == "zarr.json":
            rel = str(full.parent.relative_to(roots[store])).replace(os.sep, "/")
            node = remote.consolidated_group_json(str(roots[store]), "" if rel == "." else rel, cache=consolidated)
            return JSONResponse(node)
        size = full.stat().st_size
        if "range" in request.headers:
            _check_range(request.headers["range"], size)
        elif size > settings.max_file_bytes:
            raise HTTPException(413, f"{path!r} is larger than {settings.max_file_bytes} bytes: ask for byte ranges (Range: bytes=...)")
        return FileResponse(full, media_type="application/octet-stream")

    for method in ("GET", "HEAD"):
        app.add_api_route(
            "/stores/{store}/{path:path}",
            zarr_file,
            methods=[method],
            operation_id=f"zarr_file_{method.lower()}",
            summary="a file of the store's zarr hierarchy (HTTP Range supported; a group's zarr.json carries consolidated metadata)",
            response_class=Response,
            responses={
                **_ERRORS,
                200: {"description": "the file (zarr.json as JSON)", "content": {"application/octet-stream": _BINARY, "application/json": {"schema": {"type": "object"}}}},
                206: {"description": "the requested byte range", "content": {"application/octet-stream": _BINARY}},
                413: {"model": ErrorOut},
                416: {"model": ErrorOut},
            },
        )

    app.add_middleware(_Guard, token=token, max_concurrency=settings.max_concurrency)
    if settings.cors_origins:  # outermost (added last): preflights carry no token, refusals get CORS headers
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD"],
            allow_headers=["authorization", "range"],
            expose_headers=["x-total-rows", "x-next-offset", "content-range", "accept-ranges"],
        )
    app.state.settings = settings
    app.state.roots = roots
    return app


# --------------------------------------------------------------------------------------
# the command


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: Optional[Path]) -> Optional[str]:
    """The token from ``token_file`` (or ``$JETSCAN_TOKEN``); None if neither is given."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {str(token_file)!r}: {exc.strerror}") from None
        if len(token) < 16:
            raise ConfigError(f"--token-file {str(token_file)!r} holds a token of {len(token)} characters; use at least 16")
        return token
    return os.environ.get("JETSCAN_TOKEN") or None


def serve(
    stores: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8750,
    token: Optional[str] = None,
    no_auth: bool = False,
    settings: ServeSettings | None = None,
    announce=print,
) -> None:
    """Check everything, bind, print the URL(s) and serve until interrupted."""
    import uvicorn

    if no_auth and not _is_loopback(host):
        raise ConfigError(
            f"--no-auth on host {host!r} would serve the stores to anyone on the network: "
            "use --no-auth only with --host 127.0.0.1 (or ::1), or give a --token-file"
        )
    if no_auth and token:
        raise ConfigError("--no-auth and a token (--token-file or $JETSCAN_TOKEN) contradict each other: drop one")
    roots = parse_stores(stores)
    generated = False
    if not no_auth and not token:
        token, generated = secrets.token_urlsafe(32), True
    app = create_app(roots, token=None if no_auth else token, settings=settings)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from now on, so the printed URL works at once
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    for name in roots:
        announce(f"serving {name} ({roots[name]}) at http://{shown}:{bound}/stores/{name}")
    if generated:
        announce(f"token (new; pass --token-file to keep one): {token}")
    elif not no_auth:
        announce("token: from --token-file / $JETSCAN_TOKEN")
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level="warning", server_header=False, date_header=True, timeout_keep_alive=5)
    uvicorn.Server(config).run(sockets=[sock])


def serve_cmd(
    store: list[str] = typer.Argument(..., metavar="STORE...", help="store folders to serve (NAME=PATH names one)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback by default)"),
    port: int = typer.Option(8750, "--port", help="port (0: any free port, printed)"),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="file holding the bearer token (default: $JETSCAN_TOKEN, else a new one is printed)"),
    no_auth: bool = typer.Option(False, "--no-auth", help="no token (loopback hosts only)"),
    max_concurrency: int = typer.Option(32, "--max-concurrency", help="requests in flight; more get 503"),
    max_page_rows: int = typer.Option(1000, "--max-page-rows", help="rows per page of any table"),
) -> None:
    """Serve stores read-only over HTTP: zarr v3 (range requests) and query endpoints."""
    try:
        settings = ServeSettings(max_concurrency=max_concurrency, max_page_rows=max_page_rows, default_page_rows=min(100, max(1, max_page_rows)))
    except ValidationError as exc:
        raise _settings_error(exc) from None
    token = read_token(token_file) if token_file is not None else (None if no_auth else read_token(None))
    serve(store, host=host, port=port, token=token, no_auth=no_auth, settings=settings)
