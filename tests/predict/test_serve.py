"""serve.py (fashion-serve): the real service started as a process on a real socket (127.0.0.1), called over
HTTP with requests: the same numbers as detect.py --json, one status and one line per bad photo, batching
under concurrent clients, the key, the page, SIGTERM; and the page driven in a real headless browser."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import ROOT, SAMPLE, awkward_files, tiny_bundle
from fashion.cli import detect_main
from fashion.predict.service import listen_socket

pytest.importorskip("fastapi", reason="the serve extra (make test installs it)")

KEY = "sesame"
THRESHOLDS = [0.0, 0.3, 0.5, 0.4, 0.5, 0.45, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 0.5]  # a constant, a never, cuts
PHOTOS = sorted((SAMPLE / "photos").glob("*.jpg"))[:5]


class Service:
    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url

    def post(self, **kw) -> requests.Response:
        headers = {"X-API-Key": KEY, **kw.pop("headers", {})}
        return requests.post(f"{self.url}/v1/predict", headers=headers, timeout=60, **kw)


def start(args: list[str], deadline: float = 120) -> Service:
    """serve.py as its own process on a free port; its URL read from the line it prints when listening."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(deadline)
    match = re.search(r"on (http://127\.0\.0\.1:\d+)/", found[0] if found else "")
    if not match:
        proc.kill()
        raise AssertionError(f"no 'serving ... on' line within {deadline:.0f} s: {proc.stderr.read()}")
    return Service(proc, match.group(1))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("model_save") / "tiny", thresholds=THRESHOLDS)


@pytest.fixture(scope="module")
def service(bundle):
    s = start(["--model", str(bundle), "--api-key", KEY, "--timeout", "2", "--batch-wait-ms", "20"])
    yield s
    s.proc.kill()
    s.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def detected(bundle, tmp_path_factory):
    """detect.py --json on the photos: what the service must answer."""
    out = tmp_path_factory.mktemp("detect") / "d.json"
    assert detect_main([*map(str, PHOTOS), "--model", str(bundle), "--json", str(out), "--quiet"]) == 0
    return {Path(k).name: v for k, v in json.loads(out.read_text()).items()}


def assert_equal(result: dict, expected: dict) -> None:
    assert result["labels"] == expected["labels"] and result["source"] == expected["source"]
    for label, p in expected["probabilities"].items():
        assert abs(result["probabilities"][label] - p) <= 1e-5, label


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (a decompression bomb's header) with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_photos_as_uploads_bodies_and_urls_get_detect_pys_results(service, detected, server):
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in PHOTOS[:3]]
    r = service.post(files=files)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [g["input"] for g in got] == [p.name for p in PHOTOS[:3]], "one result per photo, in order"
    for g in got:
        assert_equal(g, detected[g["input"]])
    r = service.post(data=PHOTOS[3].read_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["predictions"][0]["input"] == "body"
    assert_equal(r.json()["predictions"][0], detected[PHOTOS[3].name])
    r = service.post(json={"urls": [f"{server.url}/photos/{PHOTOS[4].name}"]})
    assert r.status_code == 200, r.text
    assert_equal(r.json()["predictions"][0], detected[PHOTOS[4].name])
    model = requests.get(f"{service.url}/v1/model", headers={"X-API-Key": KEY}, timeout=10).json()
    assert model["labels"][:2] == ["shoes", "bag"] and model["input_size"] == 32 and model["task"] == "multilabel"
    assert model["thresholds"]["bag"] == 0.3 and model["always"] == ["shoes"] and model["never"] == ["sneakers"]
    assert requests.get(f"{service.url}/openapi.json", timeout=10).json()["paths"]["/v1/predict"]


def test_bad_photos_get_their_status_and_detect_pys_reason_and_the_service_stays_up(service, server, tmp_path, capsys):
    odd = awkward_files()
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n")
    assert detect_main([str(text), "--model", str(service_bundle(service))]) == 1
    assert f"error: {text}: not an image: a text file" in capsys.readouterr().err  # the service's reason, below
    cases = [
        (
            {"files": [("file", ("notes.txt", b"not a photo\n", "text/plain"))]},
            400,
            "notes.txt: not an image: a text file",
        ),
        (
            {"data": odd["truncated.jpg"], "headers": {"Content-Type": "image/jpeg"}},
            400,
            "body: decode error: truncated JPEG",
        ),
        ({"data": png_header_only(30000, 30000)}, 413, "body: too many pixels"),
        ({"json": {"urls": [f"{server.url}/drip/x.jpg"]}}, 504, "timeout: not complete within the 2s deadline"),
        ({"json": {"urls": [f"{server.url}/page.jpg"]}}, 400, "not an image: content is an HTML page"),
        ({"json": {"urls": [f"{server.url}/status/404"]}}, 502, "http 404: Not Found"),
        ({"json": {"urls": "x"}}, 400, 'a JSON body must be {"urls"'),
        ({"data": b""}, 400, "body: not an image"),
    ]
    for kw, status, reason in cases:
        started = time.monotonic()
        r = service.post(**kw)
        assert r.status_code == status, (reason, r.text)
        assert reason in r.json()["detail"], r.json()
        assert "\n" not in r.json()["detail"] and "Traceback" not in r.text
        assert time.monotonic() - started < 30, "every wait has a deadline"
    big = b"\xff\xd8" + os.urandom(64) * (33 * 1024 * 1024 // 64)
    assert service.post(data=big, headers={"Content-Type": "image/jpeg"}).status_code == 413
    assert requests.post(f"{service.url}/v1/predict", data=PHOTOS[0].read_bytes(), timeout=10).status_code == 401
    assert requests.get(f"{service.url}/healthz", timeout=10).json()["status"] == "ok"
    assert service.proc.poll() is None, "still serving"


def service_bundle(service: Service) -> Path:
    return Path(service.proc.args[service.proc.args.index("--model") + 1])


@pytest.mark.slow
def test_twenty_concurrent_clients_are_batched_and_answered_alike(service, detected):
    before = requests.get(f"{service.url}/healthz", timeout=10).json()["batches"]

    def one(i: int) -> dict:
        p = PHOTOS[i % len(PHOTOS)]
        r = service.post(data=p.read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        return {"name": p.name, **r.json()["predictions"][0]}

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(40)))
    for r in results:
        assert_equal(r, detected[r["name"]])
    batches = requests.get(f"{service.url}/healthz", timeout=10).json()["batches"] - before
    assert batches < 40, f"40 photos from 20 clients in {batches} batches: concurrent requests share batches"


@pytest.mark.slow  # a second service process
def test_sigterm_answers_the_request_in_flight_then_exits_0(bundle, server):
    s = start(["--model", str(bundle)])
    server.delay = 3
    answer: list[requests.Response] = []
    t = threading.Thread(
        target=lambda: answer.append(s.post(json={"urls": [f"{server.url}/delay/{PHOTOS[0].name}"]})), daemon=True
    )
    t.start()
    time.sleep(1)  # the request is in flight, its photo still on its way
    s.proc.send_signal(signal.SIGTERM)
    out, err = s.proc.communicate(timeout=60)
    t.join(timeout=30)
    assert s.proc.returncode == 0, err
    assert answer and answer[0].status_code == 200, "the request in flight was answered"
    assert "stopped" in err and "Traceback" not in err


def test_a_damaged_bundle_or_a_taken_port_is_one_line_and_exit_2(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "meta.json").write_text("{not json")
    r = subprocess.run(
        [sys.executable, str(ROOT / "serve.py"), "--model", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "meta.json" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow  # a browser: Debian's chromium, driven by selenium through chromedriver
def test_the_page_in_a_real_browser_shows_detect_pys_tags(service, detected):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, (
        "no chromium/chromedriver: make test installs them (apt-get install chromium chromium-driver)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=DriverService(executable_path=driver_path), options=options)
    try:
        browser.set_page_load_timeout(60)
        browser.get(service.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "API key" in b.find_element(By.ID, "model").text)  # the service wants its key
        browser.find_element(By.ID, "apikey").send_keys(KEY)
        photo = PHOTOS[1]
        browser.find_element(By.ID, "pick").send_keys(str(photo))
        box = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, '[data-testid="result"][data-state]'))
        assert box.get_attribute("data-state") == "done", box.text
        assert box.get_attribute("data-input") == photo.name
        rows = box.find_elements(By.CSS_SELECTOR, "tr[data-label]")
        shown = {r.get_attribute("data-label"): r for r in rows}
        expected = detected[photo.name]
        assert set(shown) == set(expected["probabilities"])
        chosen = sorted(lb for lb, r in shown.items() if r.get_attribute("data-chosen") == "1")
        assert chosen == sorted(expected["labels"])
        for label, p in expected["probabilities"].items():
            assert abs(float(shown[label].get_attribute("data-p")) - p) <= 1e-5
            assert f"{p:.3f}" in shown[label].text, "the probability as the page shows it"
        assert shown["shoes"].get_attribute("data-source") == "constant"
        assert "constant" in shown["shoes"].text and "threshold 0.300" in shown["bag"].text
    finally:
        browser.quit()


def test_answers_on_a_kept_alive_connection_are_not_held_by_nagle():
    """The service's connections have TCP_NODELAY: asyncio sets it only where the socket's proto is TCP,
    and a socket made with proto 0 kept every answer on a kept-alive connection ~40 ms (delayed ACK)."""

    async def main() -> int:
        seen: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            seen.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listen_socket("127.0.0.1", 0)
        server = await asyncio.start_server(handle, sock=sock)
        _, writer = await asyncio.wait_for(asyncio.open_connection(*sock.getsockname()), 10)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        writer.close()
        server.close()
        return seen[0]

    assert asyncio.run(main()) != 0
