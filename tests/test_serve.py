"""`distillrec serve` over real HTTP: uvicorn on a free local port, httpx as the client.

Answers equal `load(folder).recommend(...)` exactly (both backends); every bad request is a 4xx
JSON error naming its field; concurrent requests are micro-batched without changing an answer; a
full queue is a 503 with Retry-After; SIGTERM drains in-flight requests and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from distillrec.params import ServeParams
from distillrec.serving.batcher import MicroBatcher, QueueFull
from distillrec.serving.recommender import Recommender, load
from distillrec.serving.server import create_app, main

REPO = Path(__file__).resolve().parents[1]
IDS = [f"i{i:03d}" for i in range(1, 41)]           # conftest.make_release's catalogue
LIMITS = ServeParams(max_histories=4, max_history_items=20, max_k=30, max_body_bytes=4096, max_wait_ms=5.0,
                     max_batch=8)


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """uvicorn serving `app` on a free port of 127.0.0.1 in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, loop="uvloop", http="httptools",
                                           log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def histories(seed: int, n: int, longest: int = 12) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(IDS) for _ in range(rng.randint(1, longest))] for _ in range(n)]


@pytest.fixture(scope="module")
def models(release_dir):
    return {backend: (load(release_dir, backend), load(release_dir / "teacher", backend))
            for backend in ("onnx", "torch")}


@pytest.fixture(scope="module")
def app(models):
    student, teacher = models["onnx"]
    return create_app(student, teacher, LIMITS)


@pytest.fixture(scope="module")
def url(app) -> Iterator[str]:
    with serving(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=20) as http:
        yield http


def expected(recommender: Recommender, hists, k=10, exclude_seen=True) -> list[dict]:
    return [rec.as_dict() for rec in recommender.recommend(hists, k=k, exclude_seen=exclude_seen)]


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_answers_equal_load_recommend(release_dir, models, backend):
    student, teacher = models[backend]
    # one request = one forward pass of exactly its histories, as in recommend() (torch's float sums
    # depend on the batch's shape; ONNX Runtime's do not, see test_concurrent_clients_equal_sequential)
    app = create_app(student, teacher, ServeParams(backend=backend, max_wait_ms=0.0))
    reference = {"student": load(release_dir, backend), "teacher": load(release_dir / "teacher", backend)}
    cases = [(histories(1, 1), 10, True), (histories(2, 3), 5, True), (histories(3, 2, longest=20), 30, False),
             ([IDS[:8]], 1, True), (histories(4, 6), 7, True)]
    with serving(app) as base, httpx.Client(base_url=base, timeout=20) as http:
        for model in ("student", "teacher"):
            for hists, k, exclude_seen in cases:
                answer = http.post("/recommend", json={"histories": hists, "k": k, "exclude_seen": exclude_seen,
                                                       "model": model})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["model"] == model
                assert body["row"] == ("dllm2rec" if model == "student" else reference[model].config["row"])
                assert body["recommendations"] == expected(reference[model], hists, k, exclude_seen)
            one = http.post("/recommend", json={"history": IDS[3:9], "model": model}).json()
            assert one["recommendations"] == expected(reference[model], [IDS[3:9]])
        assert http.get("/health").json()["backend"] == backend


def test_never_padding_or_seen(client):
    history = IDS[:15]
    seen = client.post("/recommend", json={"history": history, "k": 30}).json()["recommendations"][0]
    assert len(seen["item_ids"]) == 25                     # only 40 - 15 items can be recommended
    assert not set(seen["item_ids"]) & set(history) and "<pad>" not in seen["item_ids"]
    assert seen["scores"] == sorted(seen["scores"], reverse=True)
    kept = client.post("/recommend", json={"history": history, "k": 30, "exclude_seen": False}).json()
    assert len(kept["recommendations"][0]["item_ids"]) == 30 and "<pad>" not in kept["recommendations"][0]["item_ids"]
    everything = client.post("/recommend", json={"history": IDS[:20] * 1, "k": 30}).json()
    assert len(everything["recommendations"][0]["item_ids"]) == 20


def test_health_items_page_openapi(client):
    health = client.get("/health").json()
    assert health == {"status": "ok", "row": "dllm2rec", "backend": "onnx", "items": 40, "teacher": True,
                      "teacher_row": health["teacher_row"], "queue": 0,
                      "limits": {"max_k": 30, "max_histories": 4, "max_history_items": 20}}
    found = client.get("/items", params={"q": "RED number", "limit": 5}).json()["items"]
    assert len(found) == 5 and all(item["title"].startswith("red item number") for item in found)
    assert found[0] == {"item_id": "i003", "title": "red item number 3"}
    assert client.get("/items", params={"q": "i017"}).json()["items"] == [
        {"item_id": "i017", "title": "green item number 17"}]
    assert client.get("/items", params={"q": "no such thing"}).json() == {"items": []}
    assert len(client.get("/items").json()["items"]) == 20
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="q"' in page.text and 'id="student-list"' in page.text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//|@import|<link", page.text)   # works offline
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/items", "/health"} <= set(spec["paths"])
    schema = spec["components"]["schemas"]["RecommendRequest"]["properties"]
    assert json.dumps(schema["histories"]).count('"maxItems": 4') == 1 and schema["k"]["maximum"] == 30
    responses = spec["paths"]["/recommend"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(responses)
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert client.get("/docs").status_code == 200


def _chunks(size: int) -> Iterator[bytes]:
    yield b'{"history": ["i001"], "pad": "'
    for _ in range(size // 1000):
        yield b"x" * 1000
    yield b'"}'


JSON_HEADERS = {"Content-Type": "application/json"}
BAD = [  # (id, method, path, request kwargs, status, field)
    ("unknown-id", "POST", "/recommend", {"json": {"histories": [["i001", "nope"]]}}, 422, "histories[0][1]"),
    ("unknown-id-history", "POST", "/recommend", {"json": {"history": ["i001", "i002", "zz"]}}, 422, "history[2]"),
    ("empty-history", "POST", "/recommend", {"json": {"histories": [["i001"], []]}}, 422, "histories[1]"),
    ("empty-history-single", "POST", "/recommend", {"json": {"history": []}}, 422, "history"),
    ("empty-histories", "POST", "/recommend", {"json": {"histories": []}}, 422, "histories"),
    ("k-zero", "POST", "/recommend", {"json": {"history": ["i001"], "k": 0}}, 422, "k"),
    ("k-over-max", "POST", "/recommend", {"json": {"history": ["i001"], "k": 31}}, 422, "k"),
    ("k-string", "POST", "/recommend", {"json": {"history": ["i001"], "k": "5"}}, 422, "k"),
    ("k-float", "POST", "/recommend", {"json": {"history": ["i001"], "k": 5.0}}, 422, "k"),
    ("k-bool", "POST", "/recommend", {"json": {"history": ["i001"], "k": True}}, 422, "k"),
    ("k-null", "POST", "/recommend", {"json": {"history": ["i001"], "k": None}}, 422, "k"),
    ("histories-not-list", "POST", "/recommend", {"json": {"histories": "i001"}}, 422, "histories"),
    ("histories-flat", "POST", "/recommend", {"json": {"histories": ["i001", "i002"]}}, 422, "histories[0]"),
    ("id-int", "POST", "/recommend", {"json": {"histories": [["i001", 7]]}}, 422, "histories[0][1]"),
    ("too-many-histories", "POST", "/recommend", {"json": {"histories": [["i001"]] * 5}}, 422, "histories"),
    ("too-many-items", "POST", "/recommend", {"json": {"histories": [["i001"], ["i002"] * 21]}}, 422,
     "histories[1]"),
    ("missing-histories", "POST", "/recommend", {"json": {"k": 5}}, 422, "histories"),
    ("both", "POST", "/recommend", {"json": {"history": ["i001"], "histories": [["i002"]]}}, 422, "history"),
    ("extra-field", "POST", "/recommend", {"json": {"history": ["i001"], "user": 7}}, 422, "user"),
    ("exclude-seen-string", "POST", "/recommend", {"json": {"history": ["i001"], "exclude_seen": "no"}}, 422,
     "exclude_seen"),
    ("exclude-seen-int", "POST", "/recommend", {"json": {"history": ["i001"], "exclude_seen": 1}}, 422,
     "exclude_seen"),
    ("model-unknown", "POST", "/recommend", {"json": {"history": ["i001"], "model": "oracle"}}, 422, "model"),
    ("body-array", "POST", "/recommend", {"json": [["i001"]]}, 422, "body"),
    ("body-empty", "POST", "/recommend", {"content": b"", "headers": JSON_HEADERS}, 422, "body"),
    ("body-not-json", "POST", "/recommend", {"content": b'{"history": [i001]}', "headers": JSON_HEADERS}, 400,
     "body"),
    ("body-deep", "POST", "/recommend", {"content": b"[" * 2000 + b"]" * 2000, "headers": JSON_HEADERS}, 400,
     "body"),
    ("content-type", "POST", "/recommend", {"content": b'{"history": ["i001"]}',
                                            "headers": {"Content-Type": "text/plain"}}, 415, "body"),
    ("too-large", "POST", "/recommend", {"content": b'{"history": ["i001"]}' + b" " * 5000,
                                         "headers": JSON_HEADERS}, 413, "body"),
    ("too-large-chunked", "POST", "/recommend", {"content": _chunks(6000), "headers": JSON_HEADERS}, 413, "body"),
    ("items-limit-zero", "GET", "/items?limit=0", {}, 422, "limit"),
    ("items-limit-text", "GET", "/items?limit=ten", {}, 422, "limit"),
    ("items-query-long", "GET", "/items?q=" + "x" * 201, {}, 422, "q"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"), [row[1:] for row in BAD],
                         ids=[row[0] for row in BAD])
def test_bad_request(url, method, path, kwargs, status, field):
    kwargs = dict(kwargs)
    if "content" in kwargs and not isinstance(kwargs["content"], bytes):
        kwargs["content"] = _chunks(6000)                 # a fresh generator per run
    with httpx.Client(base_url=url, timeout=20) as http:
        answer = http.request(method, path, **kwargs)
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()["error"]
        assert error["field"] == field, error
        assert isinstance(error["message"], str) and error["message"]
        # the server still answers well afterwards
        assert http.post("/recommend", json={"history": ["i001"]}).status_code == 200


def test_bad_request_messages(client):
    unknown = client.post("/recommend", json={"histories": [["i001", "nope"]]}).json()["error"]["message"]
    assert "'nope'" in unknown and "40 items" in unknown
    extra = client.post("/recommend", json={"history": ["i001"], "user": 7}).json()["error"]["message"]
    assert "unknown field 'user'" in extra and "histories" in extra
    assert "not valid JSON" in client.post("/recommend", content=b"{", headers=JSON_HEADERS).json()["error"]["message"]
    assert client.get("/nowhere").status_code == 404 and client.get("/recommend").status_code == 405


def test_teacher_absent(models):
    student, _ = models["onnx"]
    with serving(create_app(student, None, LIMITS)) as base, httpx.Client(base_url=base) as http:
        answer = http.post("/recommend", json={"history": ["i001"], "model": "teacher"})
        assert answer.status_code == 422 and answer.json()["error"]["field"] == "model"
        assert http.get("/health").json()["teacher"] is False


def test_concurrent_clients_equal_sequential(url, app, release_dir):
    reference = load(release_dir)
    bodies = [{"histories": histories(100 + c, 1 + c % 3), "k": 5 + c % 7, "exclude_seen": c % 5 != 0}
              for c in range(64)]
    with httpx.Client(base_url=url, timeout=20) as http:
        sequential = [http.post("/recommend", json=body).json() for body in bodies]
    batcher = app.state.batchers["student"]
    before = batcher.batches

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.gather(*(http.post("/recommend", json=body) for body in bodies))

    answers = asyncio.run(all_at_once())
    assert [a.status_code for a in answers] == [200] * 64
    assert [a.json() for a in answers] == sequential
    assert batcher.batches - before < 64                   # requests shared forward passes
    for body, answer in zip(bodies, sequential):
        assert answer["recommendations"] == expected(reference, body["histories"], body["k"], body["exclude_seen"])


def test_full_queue_is_503(models):
    student, _ = models["onnx"]
    settings = ServeParams(queue_size=2, max_wait_ms=1500.0, retry_after_s=3)

    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            first = asyncio.create_task(http.post("/recommend", json={"histories": [["i001"], ["i002"]]}))
            while (await http.get("/health")).json()["queue"] < 2:
                await asyncio.sleep(0.01)
            full = await http.post("/recommend", json={"history": ["i003"]})
            assert full.status_code == 503 and full.headers["retry-after"] == "3"
            assert full.json()["error"]["field"] is None and "queue is full" in full.json()["error"]["message"]
            assert (await first).status_code == 200

    with serving(create_app(student, None, settings)) as base:
        asyncio.run(scenario(base))


def test_scoring_error_is_500(models):
    student, _ = models["onnx"]
    broken = Recommender(lambda padded: np.full((len(padded), 41), np.nan, np.float32), student.catalogue,
                         student.max_length, student.config, "onnx")
    with serving(create_app(broken, None, LIMITS)) as base, httpx.Client(base_url=base) as http:
        answer = http.post("/recommend", json={"histories": [["i001"], ["i002"]]})
        assert answer.status_code == 500 and "non-finite" in answer.json()["error"]["message"]
        assert http.post("/recommend", json={"history": ["nope"]}).status_code == 422   # still a 4xx


def test_batcher_drains_and_splits(models):
    student, _ = models["onnx"]
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 41, size=(n, student.max_length)) for n in (5, 1, 2, 1, 3)]

    async def drain() -> list[np.ndarray]:
        batcher = MicroBatcher(student, max_batch=16, max_wait_ms=10_000, queue_size=12)
        with pytest.raises(QueueFull):
            await batcher.submit(arrays[0])                   # not started
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(a)) for a in arrays]
        await asyncio.sleep(0.05)
        assert batcher.depth == 12 and batcher.batches == 0   # waiting for a fuller batch
        with pytest.raises(QueueFull):
            await batcher.submit(arrays[1])
        await batcher.stop()                                  # scores what waits, without the 10 s
        assert batcher.batches == 1 and batcher.depth == 0
        return await asyncio.gather(*tasks)

    async def split() -> list[np.ndarray]:
        batcher = MicroBatcher(student, max_batch=2, max_wait_ms=0, queue_size=100)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(a) for a in arrays))
        await batcher.stop()
        assert batcher.batches == 5                           # [5 in passes of 2], [1], [2], [1], [3 in 2+1]
        return results

    started = time.monotonic()
    for results in (asyncio.run(drain()), asyncio.run(split())):
        for array, result in zip(arrays, results):
            np.testing.assert_array_equal(result, student.scores(array))
    assert time.monotonic() - started < 5


def _serve_command(*args: str) -> list[str]:
    if "distillrec.serving.server" in (REPO / "src/distillrec/cli.py").read_text():
        return [sys.executable, "-m", "distillrec", "serve", *args]
    return [sys.executable, "-c", "import sys; from distillrec.serving.server import main; main(sys.argv[1:])",
            *args]


def test_sigterm_drains_in_flight(release_dir):
    proc = subprocess.Popen(_serve_command("--model", str(release_dir), "--port", "0", "--max-wait-ms", "8000",
                                           "--no-teacher"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(text) for text in proc.stderr], daemon=True).start()
        line = ""
        while "serving" not in line:
            line = lines.get(timeout=60)
        base = re.search(r"http://[\d.]+:\d+", line)[0]
        assert re.search(r"serving dllm2rec \(onnx\) on http://127\.0\.0\.1:\d+$", line.strip()), line
        bodies = [{"histories": histories(200 + c, 1)} for c in range(8)]

        async def scenario() -> tuple[list[httpx.Response], float]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                tasks = [asyncio.create_task(http.post("/recommend", json=body)) for body in bodies]
                while (await http.get("/health")).json()["queue"] < len(bodies):
                    await asyncio.sleep(0.02)
                signalled = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                answers = await asyncio.gather(*tasks)
                return answers, time.monotonic() - signalled

        answers, waited = asyncio.run(scenario())
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [a.status_code for a in answers] == [200] * len(bodies)
    reference = load(release_dir)
    assert [a.json()["recommendations"] for a in answers] == [expected(reference, b["histories"]) for b in bodies]
    assert waited < 6                                          # flushed at SIGTERM, not after max_wait_ms
    assert "Traceback" not in "".join(lines.queue)


@pytest.mark.parametrize(("flags", "says"), [
    (["--max-batch", "0"], "--max-batch: Input should be greater than or equal to 1"),
    (["--max-wait-ms", "soon"], "--max-wait-ms: invalid float value"),
    (["--backend", "tpu"], "--backend: invalid choice"),
    (["--max-body-bytes", "10"], "--max-body-bytes: Input should be greater than or equal to 1024"),
])
def test_cli_bad_flag(release_dir, capsys, flags, says):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(release_dir), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("distillrec serve: error: ") and says in err, err


def test_cli_bad_model_folder(tmp_path, capsys):
    for folder in (tmp_path / "absent", tmp_path):
        with pytest.raises(SystemExit) as exit_:
            main(["--model", str(folder)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(folder) in err, err
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path)])
    assert "config.json: not a release's config" in capsys.readouterr().err


def test_cli_settings_and_teacher(release_dir):
    from distillrec.serving import server

    parser = server._parser()
    student, teacher, settings = server._load(parser, parser.parse_args(["--model", str(release_dir), "--max-k", "7"]))
    assert teacher is not None and student.backend == teacher.backend == "onnx"
    assert settings == ServeParams(max_k=7)                    # the release's serve block, then the flag
    _, teacher, settings = server._load(parser, parser.parse_args(
        ["--model", str(release_dir), "--no-teacher", "--backend", "torch", "--max-wait-ms", "2.5"]))
    assert teacher is None and settings.backend == "torch" and settings.max_wait_ms == 2.5


def test_workers_share_the_port_and_answer_alike(release_dir):
    """--workers 2: uvicorn's supervisor, each worker with its own model and batcher; same answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(_serve_command("--model", str(release_dir), "--port", str(port), "--workers", "2",
                                           "--no-teacher"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        reference, bodies = load(release_dir), [{"histories": histories(300 + c, 2)} for c in range(16)]
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            answers = [http.post("/recommend", json=body).json()["recommendations"] for body in bodies]
        assert answers == [expected(reference, b["histories"]) for b in bodies]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stderr.read()
