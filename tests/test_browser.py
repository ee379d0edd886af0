"""End to end: `ferlab serve` in a subprocess, its web page in headless Chromium.

Needs Debian's chromium (/usr/bin/chromium) and the Python `playwright` package (its driver
only: Playwright's own browser download is never used); skipped when either is missing.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from synthetic import wait_until

CHROMIUM = os.environ.get("FERLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a synthetic webcam

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)), reason=f"no Chromium at {CHROMIUM}"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(fernet_weights, tmp_path_factory):
    """`ferlab serve` on a free loopback port; yields its base URL."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ferlab", "serve", "--model", str(fernet_weights), "--port", str(port),
                                 "--threads", "1", "--detector", "blazeface"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: proc.poll() is not None or healthy(url), timeout=90, interval=0.2) or proc.poll() is not None:
            pytest.fail(f"ferlab serve did not start:\n{log.read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with tempfile.TemporaryDirectory(prefix="ferlab-chromium-") as profile, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 800})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def test_photo_upload_draws_faces_and_bars(server, browser_page, astronaut, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(photo)
    page = browser_page
    errors, console = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)  # CSP violations too
    page.goto(server + "/")
    expect(page.locator("#model-info")).to_contain_text("fernet_s", timeout=10_000)
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("canvas[data-faces='1']", timeout=20_000)
    cards = page.locator("#results .face")
    assert cards.count() == 1
    bars = cards.first.locator(".bar")
    assert bars.count() == 7
    probs = [float(bars.nth(i).get_attribute("data-p")) for i in range(7)]
    assert abs(sum(probs) - 1) < 0.01
    top = cards.first.locator(".top .bar")
    track = cards.first.locator(".track.top")
    assert top.bounding_box()["width"] == pytest.approx(max(probs) * track.bounding_box()["width"], abs=2)
    label = cards.first.get_attribute("data-label")
    assert label in cards.first.locator("h2").inner_text()
    assert "1 face" in page.locator("#status").inner_text()
    # the box really is drawn: the canvas has the box colour along the face's top edge
    green = page.evaluate("""() => {
        const c = document.getElementById('canvas'), d = c.getContext('2d').getImageData(180, 68, 90, 3).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 80 && d[i + 1] > 150 && d[i + 2] < 130) n++;
        return n; }""")
    assert green > 30
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("FERLAB_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["FERLAB_SCREENSHOT"])
    assert console == []
    # a bad file gives a readable error and the page keeps working
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#status.error", timeout=10_000)
    assert "not an image" in page.locator("#status").inner_text()
    assert errors == []


def test_webcam_frames_are_sent(server, browser_page):
    """Chromium's fake camera (a moving test pattern, no face): Start, then "every 0.5 s"."""
    from playwright.sync_api import expect

    page = browser_page
    page.context.grant_permissions(["camera"], origin=server)
    sent = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/v1/predict") else None)
    page.goto(server + "/")
    page.click("#webcam-toggle")
    expect(page.locator("#status")).to_contain_text("webcam: no face", timeout=15_000)
    assert page.locator("canvas").get_attribute("data-faces") == "0"
    assert page.locator("#results .none").inner_text() == "No face found."
    page.check("#webcam-auto")
    page.wait_for_timeout(1600)
    page.click("#webcam-toggle")
    assert 2 <= len(sent) <= 6  # the first frame, then one per 0.5 s (fewer when answers are slow)
    assert page.locator("#webcam-capture").is_disabled()
