"""`distillrec serve --model models/release`: the released student (and its teacher) over HTTP.

    POST /recommend   {"histories": [["id", ...], ...], "k": 10, "exclude_seen": true, "model": "student"}
                      (or "history": ["id", ...] for one) -> {"model", "row", "recommendations": [
                      {"item_ids", "titles", "scores"}, ...]}, one list per history, best first
    GET  /items?q=... title search of the catalogue, for picking a history
    GET  /health      row, backend, catalogue size, whether a teacher is served, queue depth
    GET  /            a page to try it (page.html); /docs and /openapi.json describe the API

Every answer comes from the same `Recommender` pieces as `distillrec.load(folder).recommend(...)`
(encode, pad, scores, rank), so the lists and scores are identical. The histories of concurrent
requests are scored together (batcher.py). Every bad request is a 4xx JSON error
{"error": {"field": "histories[0][2]", "message": "..."}}: 400 a body that is not JSON, 413 a body
over max_body_bytes, 415 a body that is not declared JSON, 422 a wrong field (unknown id, empty
history, k out of range, unknown field, ...); 503 with Retry-After when the queue is full.
"""

import argparse
import asyncio
import contextlib
import gc
import importlib.resources
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from distillrec.errors import DistillrecError
from distillrec.params import ServeParams
from distillrec.serving.batcher import MicroBatcher, QueueFull
from distillrec.serving.files import CONFIG, read_config
from distillrec.serving.recommender import Recommender, RequestError, load

log = logging.getLogger("distillrec.serve")

GRACEFUL_S = 30.0   # uvicorn's graceful shutdown: in-flight requests get this long to finish
JSON = "application/json"


# ---- response models (OpenAPI) -------------------------------------------------------------------

class ErrorDetail(BaseModel):
    field: str | None = Field(description="The offending field, e.g. histories[0][2], k or body; "
                                          "null when the error is not about the request's content")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class RecommendationOut(BaseModel):
    item_ids: list[str] = Field(description="Recommended item ids, best first")
    titles: list[str | None]
    scores: list[float] = Field(description="The model's scores, rounded to 6 decimals")


class RecommendResponse(BaseModel):
    model: Literal["student", "teacher"]
    row: str | None = Field(description="The served model's row, e.g. dllm2rec")
    recommendations: list[RecommendationOut] = Field(description="One list per history, in request order")


class ItemOut(BaseModel):
    item_id: str
    title: str | None


class ItemsResponse(BaseModel):
    items: list[ItemOut]


class HealthResponse(BaseModel):
    status: Literal["ok"]
    row: str | None
    backend: str
    items: int = Field(description="Items in the student's catalogue")
    teacher: bool = Field(description="Whether model=teacher can be asked")
    teacher_row: str | None
    queue: int = Field(description="Histories waiting for a batch now")
    limits: dict[str, int]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "The body is not JSON", 413: "The body is larger than max_body_bytes",
            415: "The body is not declared as JSON (Content-Type: application/json)",
            422: "A field is invalid: unknown item id, empty history, k out of range, unknown field, ...",
            503: "The queue is full: retry after the Retry-After header's seconds"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


# ---- errors --------------------------------------------------------------------------------------

def _error(status: int, field: str | None, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": {"field": field, "message": message}}, ensure_ascii=False)
    return Response(body.encode(), status, headers, media_type=JSON)


def _field(loc: tuple | list) -> str:
    """("body", "histories", 0, 2) -> "histories[0][2]"; ("query", "limit") -> "limit"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or (str(loc[0]) if loc and loc[0] != "body" else "body")


def _validation_error(exc: RequestValidationError, fields: list[str]) -> Response:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    kind, loc = first.get("type", ""), tuple(first.get("loc", ("body",)))
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "decode error")
        return _error(400, "body", f"the body is not valid JSON: {reason} (at character {loc[-1]})")
    field = _field(loc)
    if kind == "extra_forbidden":
        message = f"unknown field {field!r}: the fields are {', '.join(fields)}"
    elif kind == "missing" and field == "body":
        message = "missing JSON body"
    else:
        message = first.get("msg", "invalid value")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return _error(422, field, message)


class _BodyGuard:
    """ASGI middleware for POST bodies: 413 beyond `limit` bytes, by Content-Length before reading
    and by the bytes actually streamed (a chunked body has no Content-Length); 415 for a body
    declared as something other than JSON."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self) -> Response:
        return _error(413, "body", f"the body is larger than {self.limit} bytes (the server's max_body_bytes)")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        length = ctype = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                ctype = value
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large()(scope, receive, send)
            return
        if ctype is not None:
            media = ctype.split(b";", 1)[0].strip().lower()
            if media != b"application/json" and not media.endswith(b"+json"):
                await _error(415, "body", f"expected Content-Type: application/json, found "
                             f"{ctype.decode('latin-1')!r} (curl: -H 'Content-Type: application/json')"
                             )(scope, receive, send)
                return
        size, over, sent = 0, False, False

        async def guarded_receive() -> dict:
            nonlocal size, over
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal sent
            if over:             # the app's answer to the broken-off body is replaced by the 413
                return
            sent = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if over and not sent:
            await self._too_large()(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


# ---- the app -------------------------------------------------------------------------------------

def _row(recommender: Recommender, default: str) -> str:
    config = recommender.config
    return str(config.get("row") or config.get("method") or default)


def _page() -> bytes:
    return importlib.resources.files("distillrec.serving").joinpath("page.html").read_bytes()


def create_app(student: Recommender, teacher: Recommender | None = None,
               settings: ServeParams | None = None) -> FastAPI:
    """The HTTP service of `student` (and `teacher`, asked with model=teacher) under `settings`'
    limits; its lifespan starts and drains one MicroBatcher per model."""
    settings = settings or ServeParams()
    models: dict[str, tuple[Recommender, MicroBatcher, str]] = {}
    for name, recommender in (("student", student), ("teacher", teacher)):
        if recommender is not None:
            batcher = MicroBatcher(recommender, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                   queue_size=settings.queue_size, name=name)
            models[name] = (recommender, batcher, _row(recommender, name))
    batchers = [batcher for _, batcher, _ in models.values()]
    retry = {"Retry-After": str(settings.retry_after_s)}
    page = _page()

    History = Annotated[list[str], Field(min_length=1, max_length=settings.max_history_items)]
    example = student.catalogue.ids[1:4]

    class RecommendRequest(BaseModel):
        """Exactly one of `history` or `histories`."""

        model_config = ConfigDict(extra="forbid", strict=True, title="RecommendRequest", json_schema_extra={
            "examples": [{"histories": [example], "k": 10, "exclude_seen": True, "model": "student"}]})

        histories: Annotated[list[History], Field(min_length=1, max_length=settings.max_histories)] | None = Field(
            None, description=f"Up to {settings.max_histories} histories, each a list of item ids, oldest first "
                              f"(up to {settings.max_history_items} items; the most recent {student.max_length} "
                              "are read)")
        history: History | None = Field(None, description="One history instead of `histories`")
        k: Annotated[int, Field(ge=1, le=settings.max_k)] = Field(10, description="Items per list")
        exclude_seen: bool = Field(True, description="Never recommend an item of the history")
        model: Literal["student", "teacher"] = Field("student", description="teacher: the teacher served "
                                                     "beside the student (GET /health says whether there is one)")

    fields = list(RecommendRequest.model_fields)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        for batcher in batchers:
            batcher.start()
        gc.collect()
        gc.freeze()   # the loaded model and app are never garbage: keep them out of every later collection
        try:
            yield
        finally:
            for batcher in batchers:
                await batcher.stop()

    app = FastAPI(title="distillrec", version="0.1.0", lifespan=lifespan, strict_content_type=False,
                  description="Top-k recommendations of a distilled sequential recommender (and its teacher).")
    app.state.batchers = {name: batcher for name, (_, batcher, _) in models.items()}
    app.state.flush = lambda: [batcher.flush() for batcher in batchers]
    app.add_middleware(_BodyGuard, limit=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> Response:
        return _validation_error(exc, fields)

    @app.exception_handler(RequestError)
    async def bad_field(request: Any, exc: RequestError) -> Response:
        return _error(422, exc.field, exc.message)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Any, exc: QueueFull) -> Response:
        return _error(503, None, f"{exc}; retry in {settings.retry_after_s} s", retry)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, exc: HTTPException) -> Response:
        return _error(exc.status_code, "body" if exc.status_code == 400 else None, str(exc.detail),
                      getattr(exc, "headers", None))

    @app.post("/recommend", response_model=RecommendResponse, responses=_errors(400, 413, 415, 422, 503),
              summary="Top-k items after each history")
    async def recommend(body: RecommendRequest) -> Response:
        if body.model not in models:
            raise RequestError("model", "this server serves no teacher (GET /health: teacher is false); "
                                        "ask model=student")
        recommender, batcher, row = models[body.model]
        if body.history is not None:
            if body.histories is not None:
                raise RequestError("history", "give either history (one list of item ids) or histories "
                                              "(a list of them), not both")
            try:
                encoded = recommender.encode([body.history], "history")
            except RequestError as exc:  # history[0][2] -> history[2]
                raise RequestError("history" + exc.field[len("history[0]"):], exc.message) from None
        elif body.histories is not None:
            encoded = recommender.encode(body.histories, "histories")
        else:
            raise RequestError("histories", "missing: give histories (a list of lists of item ids, oldest "
                                            "first) or history (one list)")
        try:
            scores = await batcher.submit(recommender.pad(encoded))
        except QueueFull:
            raise
        except Exception as exc:  # the model failed: a server fault, not the caller's
            log.error("scoring failed: %s", exc)
            return _error(500, None, f"the {body.model} model failed to score: {exc}")
        k, exclude_seen = body.k, body.exclude_seen
        lists = [recommender.rank(row_scores, history, k, exclude_seen).as_dict()
                 for row_scores, history in zip(scores, encoded)]
        out = {"model": body.model, "row": row, "recommendations": lists}
        return Response(json.dumps(out, ensure_ascii=False).encode(), media_type=JSON)

    @app.get("/items", response_model=ItemsResponse, responses=_errors(422), summary="Search the catalogue")
    async def items(q: Annotated[str, Query(max_length=200, description="Words of the title or id")] = "",
                    limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Response:
        found = student.catalogue.search(q, limit)
        return Response(json.dumps({"items": found}, ensure_ascii=False).encode(), media_type=JSON)

    @app.get("/health", response_model=HealthResponse, summary="Liveness and what is served")
    async def health() -> Response:
        out = {"status": "ok", "row": models["student"][2], "backend": student.backend,
               "items": len(student.catalogue), "teacher": "teacher" in models,
               "teacher_row": models["teacher"][2] if "teacher" in models else None,
               "queue": sum(batcher.depth for batcher in batchers),
               "limits": {"max_k": settings.max_k, "max_histories": settings.max_histories,
                          "max_history_items": settings.max_history_items}}
        return Response(json.dumps(out).encode(), media_type=JSON)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


# ---- the command ---------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse adds the usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> _Parser:
    parser = _Parser(prog="distillrec serve", description="Serve a release folder (or a saved student) "
                     "over HTTP: POST /recommend, GET /items, /health, / (a page to try it) and /docs.")
    parser.add_argument("--model", type=Path, required=True,
                        help="release folder (e.g. models/release) or a saved student folder (torch only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: a free port (the log line says which)")
    teachers = parser.add_mutually_exclusive_group()
    teachers.add_argument("--teacher", type=Path, help="teacher release folder to serve beside the student "
                          "(default: MODEL/teacher where it exists)")
    teachers.add_argument("--no-teacher", action="store_true", help="serve the student only")
    defaults = ServeParams()
    for name, info in ServeParams.model_fields.items():
        flag = "--" + name.replace("_", "-")
        text = (info.description or "").replace("%", "%%")
        text = f"{text} (default: the release's config.json serve block, else {getattr(defaults, name)})"
        if name == "backend":
            parser.add_argument(flag, choices=["onnx", "torch"], help=text)
        else:
            parser.add_argument(flag, type=float if info.annotation is float else int, help=text, metavar="N")
    return parser


def _settings(parser: _Parser, args: argparse.Namespace) -> ServeParams:
    """The config's serve block (ServeParams defaults for a saved student), then the flags."""
    folder: Path = args.model
    release = (folder / CONFIG).is_file()
    serve = (read_config(folder).get("serve") or {}) if release else {}
    if not isinstance(serve, dict):
        raise DistillrecError(f"{folder / CONFIG}: serve must be a mapping of settings, found {serve!r}")
    flags = {name: value for name in ServeParams.model_fields if (value := getattr(args, name)) is not None}
    if not release and "backend" not in flags:
        serve = {**serve, "backend": "torch"}     # a saved student has no model.onnx
    try:
        return ServeParams.model_validate({**serve, **flags})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else ""
        where = f"--{key.replace('_', '-')}" if key in flags else f"{folder / CONFIG}: serve.{key}"
        parser.error(f"{where}: {error['msg']}")
        raise  # unreachable: parser.error exits


def _load(parser: _Parser, args: argparse.Namespace) -> tuple[Recommender, Recommender | None, ServeParams]:
    settings = _settings(parser, args)
    student = load(args.model, settings.backend, settings.threads)
    teacher_dir = args.teacher
    if teacher_dir is None and not args.no_teacher and (args.model / "teacher").is_dir():
        teacher_dir = args.model / "teacher"
    teacher = None
    if teacher_dir is not None:
        try:
            teacher = load(teacher_dir, settings.backend, settings.threads)
        except DistillrecError as exc:
            raise DistillrecError(f"the teacher: {exc} (--no-teacher serves the student alone)") from None
    return student, teacher, settings


class _Server(uvicorn.Server):
    """uvicorn.Server that flushes the batchers on SIGINT/SIGTERM (waiting requests are scored at
    once; uvicorn's graceful shutdown then lets them finish), exits 0 after a graceful stop and logs
    one line when it listens."""

    def __init__(self, config: uvicorn.Config, flush: Callable[[], Any], banner: Callable[[str], str]):
        super().__init__(config)
        self._flush, self._banner, self._loop = flush, banner, None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            log.info(self._banner(f"http://{f'[{host}]' if ':' in host else host}:{port}"))

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._flush)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after its graceful shutdown (exit status -15); a service
        # that SIGTERM stopped after it drained its requests exits 0 instead
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


WORKER_ARGS = "DISTILLREC_SERVE_ARGS"   # the command line, for each worker process of --workers N


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory, with --workers > 1): the same command line."""
    parser = _parser()
    student, teacher, settings = _load(parser, parser.parse_args(json.loads(os.environ[WORKER_ARGS])))
    return create_app(student, teacher, settings)


def main(argv: list[str] | None = None) -> None:
    """`distillrec serve`: see `distillrec serve --help`."""
    from distillrec.io import setup_logging

    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        student, teacher, settings = _load(parser, args)
    except DistillrecError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    setup_logging(logging.INFO)
    row = _row(student, "student")
    extra = f", teacher {_row(teacher, 'teacher')} beside it" if teacher else ""
    if settings.workers > 1:   # uvicorn's supervisor: each worker loads the model and batches on its own
        os.environ[WORKER_ARGS] = json.dumps(argv)
        log.info("serving %s (%s) on http://%s:%d%s, %d worker processes", row, student.backend, args.host,
                 args.port, extra, settings.workers)
        uvicorn.run("distillrec.serving.server:worker_app", factory=True, host=args.host, port=args.port,
                    workers=settings.workers, loop="uvloop", http="httptools", log_level="warning",
                    access_log=False, timeout_graceful_shutdown=GRACEFUL_S)
        return
    app = create_app(student, teacher, settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                            log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_S)
    server = _Server(config, app.state.flush, lambda url: f"serving {row} ({student.backend}) on {url}{extra}")
    server.run()
    if not server.started:
        sys.exit(1)
