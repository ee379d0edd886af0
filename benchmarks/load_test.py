"""Load test of a local `ferlab serve`: N concurrent clients posting a photo to /v1/predict.

    ferlab serve --model RUN_OR_WEIGHTS --port 8000 &
    python benchmarks/load_test.py http://127.0.0.1:8000 --concurrency 4 --requests 200

Each client (an asyncio task sharing one httpx connection pool) sends the photo (--image, default
scikit-image's astronaut as PNG), waits for the answer, and sends again, until --requests answers
or --duration seconds, whichever comes first. Prints one JSON object: throughput, latency
percentiles (ms), errors by kind, and how many answers had the expected number of faces.

When the server stops answering (connection refused or dropped, timeouts), a client waits before
trying again, 0.05 s doubling up to 2 s, and the test stops once no answer has come for --give-up
seconds (default 10): the report then says so in "stopped", and the exit status is 1.

Loopback only: the URL's host must resolve to 127.0.0.0/8 or ::1, so this cannot be pointed at
someone else's server.
"""

import argparse
import asyncio
import io
import ipaddress
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

MAX_REQUESTS, MAX_DURATION, MAX_CONCURRENCY = 10_000, 300.0, 256
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0  # seconds a client waits after a failed connection, doubling


def loopback_only(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"load_test: {url}: expected http://HOST:PORT")
    try:
        addrs = {info[4][0].split("%")[0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80)}
    except socket.gaierror as e:
        raise SystemExit(f"load_test: {parts.hostname}: cannot resolve ({e})") from None
    if not addrs or not all(ipaddress.ip_address(a).is_loopback for a in addrs):
        raise SystemExit(f"load_test: refusing {parts.hostname} ({', '.join(sorted(addrs))}): loopback addresses only")
    return url.rstrip("/")


def default_photo() -> tuple[bytes, str]:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, "PNG")
    return buf.getvalue(), "astronaut.png"


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return round(sorted_values[i] * 1000, 1)


async def run(url, photo, name, concurrency, requests, duration, expect_faces, give_up=10.0):
    latencies, errors, wrong_faces = [], {}, 0
    issued, stopped = 0, None
    last_answer = time.perf_counter()  # of any HTTP answer, even an error status
    deadline = time.perf_counter() + duration
    mime = "image/png" if name.lower().endswith(".png") else "image/jpeg"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0, trust_env=False) as client:
        try:
            health = (await client.get("/healthz")).json()
        except (httpx.HTTPError, ValueError) as e:
            raise SystemExit(f"load_test: {url}/healthz: no ferlab serve answering ({type(e).__name__}: {e})") from None

        async def worker():
            nonlocal issued, wrong_faces, stopped, last_answer
            backoff = 0.0
            while issued < requests and time.perf_counter() < deadline and stopped is None:
                issued += 1
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", files={"image": (name, photo, mime)})
                except httpx.HTTPError as e:  # no answer: the server is down, restarting or overloaded
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    if time.perf_counter() - last_answer > give_up:
                        stopped = f"no answer for {give_up:g} s (last error: {type(e).__name__}); server down?"
                        return
                    backoff = min(BACKOFF_MAX, backoff * 2 or BACKOFF_FIRST)
                    await asyncio.sleep(min(backoff, max(0.0, deadline - time.perf_counter())))
                    continue
                elapsed, backoff, last_answer = time.perf_counter() - t, 0.0, time.perf_counter()
                if r.status_code != 200:
                    errors[f"HTTP {r.status_code}"] = errors.get(f"HTTP {r.status_code}", 0) + 1
                    continue
                if expect_faces is not None and len(r.json()["faces"]) != expect_faces:
                    wrong_faces += 1
                latencies.append(elapsed)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "url": url, "model": health.get("model"), "backend": health.get("backend"), "image": name,
        "image_bytes": len(photo), "concurrency": concurrency, "requests": issued, "ok": len(lat),
        "errors": sum(errors.values()), "errors_by_kind": errors, "wrong_face_count": wrong_faces, "stopped": stopped,
        "seconds": round(seconds, 2), "throughput_rps": round(len(lat) / seconds, 2) if seconds else None,
        "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
                       "max": percentile(lat, 100), "mean": round(statistics.fmean(lat) * 1000, 1) if lat else None},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="base URL of a local ferlab serve, e.g. http://127.0.0.1:8000")
    p.add_argument("--concurrency", "-c", type=int, default=4, help=f"concurrent clients (1-{MAX_CONCURRENCY})")
    p.add_argument("--requests", "-n", type=int, default=200, help=f"total requests (at most {MAX_REQUESTS})")
    p.add_argument("--duration", "-d", type=float, default=60.0, help=f"stop after this many seconds (at most {MAX_DURATION:g})")
    p.add_argument("--image", type=Path, help="photo to send (default: scikit-image's astronaut, PNG)")
    p.add_argument("--give-up", type=float, default=10.0,
                   help="stop when the server has not answered for this many seconds (default 10)")
    p.add_argument("--expect-faces", type=int, help="count answers with another number of faces (default: 1 for the astronaut)")
    args = p.parse_args()
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        sys.exit(f"load_test: --concurrency must be 1-{MAX_CONCURRENCY}")
    if not 1 <= args.requests <= MAX_REQUESTS or not 0 < args.duration <= MAX_DURATION:
        sys.exit(f"load_test: --requests must be 1-{MAX_REQUESTS} and --duration 0-{MAX_DURATION:g} s")
    if not 0 < args.give_up <= MAX_DURATION:
        sys.exit(f"load_test: --give-up must be 0-{MAX_DURATION:g} s")
    url = loopback_only(args.url)
    if args.image:
        photo, name, expect = args.image.read_bytes(), args.image.name, args.expect_faces
    else:
        (photo, name), expect = default_photo(), 1 if args.expect_faces is None else args.expect_faces
    report = asyncio.run(run(url, photo, name, args.concurrency, args.requests, args.duration, expect, args.give_up))
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] or report["wrong_face_count"] or report["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
