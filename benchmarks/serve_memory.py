"""Peak memory of a local `ferlab serve` answering huge images: one at a time and several at once.

    python benchmarks/serve_memory.py [--model default] [--concurrency 4]
    PYTHONPATH=/path/to/other/src python benchmarks/serve_memory.py   # the same against another tree

For each image, starts `python -m ferlab serve` on 127.0.0.1 (a free port; the server inherits
this environment, so PYTHONPATH picks the ferlab tree under test), warms it up with one small
photo, resets its peak-RSS counter (writing 5 to /proc/PID/clear_refs) and posts the image once
alone, then --concurrency times at once. Prints one JSON object: per case the HTTP statuses, the
server's RSS before, its peak (VmHWM) during and its RSS after, in MB. Linux only (reads /proc).

Cases (all built in memory, none is stored):
  bomb-9400-rgba.png  9400x9400 RGBA, all zero, ~350 KB: 88 MP, under Pillow's 89 MP bomb limit
  big-6300-rgba.png   6300x6300 RGBA gradient: 39.7 MP, the largest square under the default 40 MP
                      limit, so accepted: the largest image the server decodes (then reduces 1/2)
  big-5100-rgba.png   5100x5100 RGBA gradient: 26 MP, the largest square converted to RGB at full size
  big-8000.jpg        8000x6000 JPEG (48 MP): decoded at 1/2 scale (12 MP)
"""

import argparse
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np

HOST = "127.0.0.1"  # loopback only


def blank_png(width: int, height: int) -> bytes:
    """An all-zero RGBA PNG written row by row (no full-size buffer in this process)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row = zlib.compressobj(9), bytes(1 + 4 * width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def encoded(width: int, height: int, fmt: str, mode: str) -> bytes:
    from PIL import Image

    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.broadcast_to(ramp, (height, width))
    im = Image.fromarray(np.ascontiguousarray(pixels)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()


def small_photo() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def post_all(url: str, name: str, data: bytes, n: int) -> list:
    mime = "image/jpeg" if name.endswith(".jpg") else "image/png"

    def one(_):
        try:
            r = httpx.post(f"{url}/v1/predict", files={"image": (name, data, mime)}, timeout=300, trust_env=False)
            return r.status_code
        except httpx.HTTPError as e:
            return type(e).__name__

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def measure(pid: int, url: str, name: str, data: bytes, n: int) -> dict:
    time.sleep(0.5)
    before = proc_mb(pid, "VmRSS")
    reset_peak(pid)
    t = time.perf_counter()
    statuses = post_all(url, name, data, n)
    seconds = time.perf_counter() - t
    time.sleep(0.5)
    return {"image": name, "bytes": len(data), "at_once": n, "statuses": statuses, "seconds": round(seconds, 2),
            "rss_before_mb": before, "peak_rss_mb": proc_mb(pid, "VmHWM"), "rss_after_mb": proc_mb(pid, "VmRSS")}


@contextmanager
def server(model: str, extra: list):
    """A `ferlab serve` on a free loopback port, warmed up with one photo: yields (pid, url, /healthz)."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-m", "ferlab", "serve", "--host", HOST, "--port", str(port), "--model", model, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"{url}/healthz", timeout=2, trust_env=False).json()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"serve_memory: the server did not start: {' '.join(cmd)}")
                time.sleep(0.5)
        post_all(url, "warmup.png", small_photo(), 1)
        yield proc.pid, url, health
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="--model for ferlab serve (default: the bundled model)")
    p.add_argument("--concurrency", type=int, default=4, help="requests at once in the second round (1-16)")
    p.add_argument("--cases", help="comma-separated image names to run (default: all)")
    p.add_argument("--serve-args", default="", help="extra arguments for ferlab serve, e.g. '--max-megapixels 20'")
    args = p.parse_args()
    if not 1 <= args.concurrency <= 16:
        sys.exit("serve_memory: --concurrency must be 1-16")
    cases = {"bomb-9400-rgba.png": blank_png(9400, 9400), "big-6300-rgba.png": encoded(6300, 6300, "PNG", "RGBA"),
             "big-5100-rgba.png": encoded(5100, 5100, "PNG", "RGBA"),
             "big-8000.jpg": encoded(8000, 6000, "JPEG", "RGB")}
    if args.cases:
        cases = {name: cases[name] for name in args.cases.split(",")}
    report = {"ferlab": os.environ.get("PYTHONPATH", "installed"), "cpus": os.cpu_count(), "results": []}
    for name, data in cases.items():  # a fresh server per image: memory one case keeps does not hide the next
        with server(args.model, args.serve_args.split()) as (pid, url, health):
            report.update(server_args=args.serve_args, model=health.get("model"))
            report["results"] += [measure(pid, url, name, data, n) for n in (1, args.concurrency)]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
