"""`serve.py` / `fashion-serve --model DIR`: a bundle behind HTTP (FastAPI on uvicorn), with a page to try it.

    POST /v1/predict   photos -> {"predictions": [{"input", "probabilities", "labels", "source"}, ...]}, the
                       same result per photo as `detect.py --json` (single-label bundles: class, score,
                       top_k, probabilities). A photo comes as a multipart upload (any number of file
                       fields), a raw image body, or JSON {"urls": [...]} fetched with ingestion's Fetcher.
    GET  /v1/model     labels, thresholds, input size, task, bundle id
    GET  /healthz      {"status": "ok"}
    GET  /             the page (page/index.html: drop, paste or pick photos; it calls the API above)
    GET  /docs         OpenAPI, as FastAPI gives it

The model is loaded once, before the socket opens (a damaged bundle: one line, exit 2). Photos are decoded
on a pool of threads, off the event loop; the model runs on one thread of its own, on batches that the
Batcher gathers from concurrent requests (the first photo of a batch waits up to --batch-wait-ms for
others, up to --batch-size), as TF Serving and Triton batch. A bad photo is the request's answer, never
the service's end: not an image 400, too large (bytes or pixels) 413, a URL that stalls 504 within
--timeout, a URL that fails otherwise 502; each with detect.py's one-line reason as `detail`. SIGINT and
SIGTERM: uvicorn stops taking connections, lets the requests in flight finish (30 s at most), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.datastructures import UploadFile

from fashion.config.bundle import DetectConfig, ServeConfig
from fashion.data.fetching import Fetcher, FetchError, timed_out
from fashion.data.imaging import ImageError
from fashion.predict import bundle as prediction
from fashion.predict.detect import Detector

PAGE = Path(__file__).with_name("page") / "index.html"
DRAIN_S = 30  # SIGTERM: how long requests in flight may take to finish


class Batcher:
    """Photos from concurrent requests gathered into batches for the model, which runs them one batch after
    another on a thread of its own. (By hand: FastAPI and uvicorn have no batching, and TF Serving's is a
    C++ server of its own; this is the few lines it takes on asyncio.)"""

    def __init__(self, bundle: prediction.Bundle, batch_size: int, wait_s: float, tta: bool):
        self.bundle, self.batch_size, self.wait_s, self.tta = bundle, batch_size, wait_s, tta
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.batches = 0

    async def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One probability row per image, each run in whichever batch it joins."""
        loop = asyncio.get_running_loop()
        futures = []
        for image in images:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self.queue.put_nowait((image, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def run(self) -> None:
        """The batching loop (a task for the service's lifetime)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            images = np.stack([image for image, _ in batch])
            try:
                probs = await loop.run_in_executor(self.model_thread, self._run_model, images)
            except Exception as e:  # the model itself failed: every photo of the batch is told
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            for (_, future), p in zip(batch, probs):
                if not future.done():  # (a client that left has its future cancelled)
                    future.set_result(p)

    def _run_model(self, images: np.ndarray) -> np.ndarray:
        return prediction.predict_arrays(self.bundle, images, tta=self.tta).astype(np.float32)


def bundle_id(bundle: prediction.Bundle) -> str:
    """The bundle's folder name and the start of its meta.json's sha256 (what a client logs beside results)."""
    meta = bundle.path / "meta.json"
    digest = hashlib.sha256(meta.read_bytes()).hexdigest()[:12] if meta.is_file() else "?"
    return f"{bundle.path.name}@{digest}"


def model_info(bundle: prediction.Bundle, detector: Detector) -> dict[str, Any]:
    info: dict[str, Any] = {
        "bundle": bundle_id(bundle),
        "task": bundle.task,
        "labels": list(bundle.labels),
        "classes": list(detector.classes),
        "input_size": bundle.input_size,
        "backbone": bundle.backbone,
    }
    if detector.single:
        info["threshold"] = detector.cut
    else:
        info["thresholds"] = {lb: float(t) for lb, t in zip(bundle.labels, detector.thresholds)}
        info["always"] = [lb for lb, a in zip(bundle.labels, detector.always) if a]
        info["never"] = [lb for lb, n in zip(bundle.labels, detector.never) if n]
    return info


def status_of(e: Exception) -> int:
    """The HTTP status of a photo that could not be read: 413 too large, 504 a fetch past its deadline,
    502 another fetch failure, 400 not an image (or a damaged one)."""
    text = str(e)
    if text.startswith(("too many pixels", "too large")) or "--max-bytes" in text:
        return 413
    if isinstance(e, FetchError):
        return 504 if timed_out(e) or text.startswith("timeout") else 502
    return 400


def create_app(cfg: ServeConfig, bundle: prediction.Bundle) -> FastAPI:
    """The service for a loaded bundle."""
    detector = Detector(DetectConfig(inputs=["-"], tta=cfg.tta), bundle)
    info = model_info(bundle, detector)
    decode_pool = ThreadPoolExecutor(max(2, os.cpu_count() or 1), thread_name_prefix="decode")
    fetcher = Fetcher(timeout=cfg.timeout, min_bytes=0, max_bytes=cfg.max_bytes, retries=2, pool_size=16)
    batcher = Batcher(bundle, cfg.batch_size, cfg.batch_wait_ms / 1000, cfg.tta)
    size = bundle.input_size

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        fetcher.close()
        decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="fashion",
        version=str(info["bundle"]),
        summary="Multi-label fashion-style tags for photos: the same results as detect.py --json.",
        lifespan=lifespan,
    )

    def check_key(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (X-API-Key header or Authorization: Bearer KEY)")

    def pixels(data: bytes) -> np.ndarray:
        """On a decode thread: what detect.py makes of the same bytes (prediction.image_pixels)."""
        if len(data) > cfg.max_bytes:
            raise ImageError(f"too large: {len(data):,} bytes > --max-bytes {cfg.max_bytes:,}")
        return prediction.image_pixels(data, size, cfg.max_pixels)

    def fetched(url: str) -> np.ndarray:
        return pixels(fetcher.fetch(url))

    async def read_photos(request: Request) -> list[tuple[str, Any, Any]]:
        """(name, function, argument) per photo of the request: decoded later, off the loop."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                urls = (await request.json())["urls"]
            except Exception:  # not JSON, not an object, no "urls"
                urls = None
            if not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
                raise HTTPException(400, 'a JSON body must be {"urls": ["https://...", ...]}')
            bad = [u for u in urls if not prediction.is_url(u)]
            if bad:
                raise HTTPException(400, f"{bad[0]}: not an http(s) URL")
            return [(u, fetched, u) for u in urls]
        body = await read_capped(request, cfg.max_bytes * cfg.max_photos + (1 << 20))
        if kind == "multipart/form-data":
            form = await replayed(request, body).form(max_files=cfg.max_photos, max_part_size=cfg.max_bytes + 1)
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            photos = [(f.filename or f"photo {i + 1}", pixels, await f.read()) for i, f in enumerate(files)]
            await form.close()
            return photos
        return [("body", pixels, body)]

    @app.post("/v1/predict", summary="Tags for one or several photos")
    async def predict(request: Request) -> dict[str, Any]:
        """Photos as a multipart upload (file fields), a raw image body (Content-Type image/...), or JSON
        {"urls": [...]}: one result per photo, in order, as detect.py --json gives it."""
        check_key(request)
        photos = await read_photos(request)
        if not photos:
            raise HTTPException(400, 'no photo in the request (multipart file fields, an image body, or {"urls"})')
        if len(photos) > cfg.max_photos:
            raise HTTPException(413, f"{len(photos)} photos in one request; at most --max-photos {cfg.max_photos}")
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(decode_pool, fn, arg) for _, fn, arg in photos), return_exceptions=True
        )
        for (name, _, _), d in zip(photos, decoded):
            if isinstance(d, (FetchError, ImageError, OSError)):
                raise HTTPException(status_of(d), f"{name}: {d}")
            if isinstance(d, BaseException):
                raise d
        probs = await batcher.predict([d for d in decoded if isinstance(d, np.ndarray)])
        return {
            "bundle": info["bundle"],
            "predictions": [{"input": name, **detector.result(name, p)[0]} for (name, _, _), p in zip(photos, probs)],
        }

    @app.get("/v1/model", summary="The bundle: labels, thresholds, input size, task")
    async def model(request: Request) -> dict[str, Any]:
        check_key(request)
        return info

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "bundle": info["bundle"], "batches": batcher.batches}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


async def read_capped(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `cap` bytes (never held past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"request body of {int(declared):,} bytes; at most {cap:,}")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > cap:
            raise HTTPException(413, f"request body over {cap:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def replayed(request: Request, body: bytes) -> Request:
    """A request whose body is `body` (already read, capped), for Starlette's multipart parser."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return Request(request.scope, receive)


def listen_socket(host: str, port: int) -> socket.socket:
    """The service's bound socket (port 0: a free one); a port in use is an OSError naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP;
    # without it every answer on a kept-alive connection waited ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def run(cfg: ServeConfig) -> int:
    """serve.py: load the bundle (a damaged one goes up as BundleError: one line, exit 2), bind the socket (a
    port in use: OSError, one line), then serve until SIGINT/SIGTERM, which drain and return 0."""
    sock = listen_socket(cfg.host, cfg.port)  # first: a port in use is said at once, not after the model loads
    try:
        bundle = prediction.load_bundle(cfg.model, cfg.model_save)
    except BaseException:
        sock.close()
        raise
    app = create_app(cfg, bundle)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=DRAIN_S, access_log=False)
    server = _Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            print(f"serving {bundle_id(bundle)} on http://{cfg.host}:{port}/ (API /v1/predict, docs /docs)", flush=True)
        await task

    asyncio.run(serve())
    print("stopped: requests in flight answered", file=sys.stderr, flush=True)
    return 0


class _Server(uvicorn.Server):
    """uvicorn's Server, but a SIGINT or SIGTERM drains the requests in flight and then returns: uvicorn
    raises the signal again after its graceful shutdown, which would end the process by that signal
    instead of exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
