"""How `ferlab serve` runs the app under uvicorn, guarded against slow and too many clients.

A client has --read-timeout seconds (15) to send its request's headers and may pause no longer
within a body, else 408 and the connection closes; past --max-connections (half the open-file
limit less 32) a new connection is answered 503 at once, so the server never runs out of file
descriptors; a request uvicorn cannot parse gets a JSON 400. A warning or error repeated is logged
once per 10 s (RepeatFilter). These live outside the app: uvicorn answers them before a request
reaches it.
"""

import json
import logging
import threading
import time

READ_TIMEOUT = 15.0  # default --read-timeout: seconds for a request's headers, and the longest pause in its body
log = logging.getLogger("ferlab.serve")


def json_response(status: int, reason: str, detail: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 response, `{"detail": detail}`, that closes the connection: for the answers
    given outside the app (a request uvicorn cannot parse, a busy server, a read timeout)."""
    body = json.dumps({"detail": detail}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
             "connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def default_max_connections() -> int:
    """Half the open-file limit less 32 (the model, the log, the listening socket), 8 to 1000: at
    `ulimit -n 1024`, 480 connections, and the server never runs out of file descriptors."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return 1000
    if soft == resource.RLIM_INFINITY:
        return 1000
    return max(8, min(1000, soft // 2 - 32))


def guarded_protocol(max_connections: int, read_timeout: float = READ_TIMEOUT):
    """uvicorn's h11 HTTP protocol with guards against slow and too many clients:

    - read timeouts: a client has read_timeout seconds from connecting (or from the previous
      response) to send its request's headers, and may not pause longer than that while sending
      its body; past that it gets a JSON 408 and the connection is closed (a slow client holds no
      connection for long, however it trickles);
    - a cap on connections: past max_connections, a new connection is answered a JSON 503 at once
      and closed, so the server never runs out of file descriptors and keeps answering;
    - requests uvicorn cannot parse (a malformed request line or header, e.g. `Content-Length: abc`:
      the app never sees them) get a JSON 400 like every other error, not uvicorn's plain text.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        timer = None  # closes the connection when the client is too slow
        headers_deadline = None  # when the request being waited for must have its headers in
        shedding = False  # over max_connections: answered 503, closing

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.shed()
            else:
                self.watch()

        def shed(self) -> None:
            self.shedding = True
            self.connections.discard(self)
            log.warning("more than %d connections: answering 503 (--max-connections)", max_connections)
            self.transport.write(json_response(503, "Service Unavailable", "the server is busy (too many connections); "
                                               "retry in a moment", "retry-after: 1"))
            self.transport.write_eof()  # then close when the request arrives (read, so no reset) or in a second
            self.timer = self.loop.call_later(1.0, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self.shedding:
                self.transport.close()
                return
            super().data_received(data)
            self.watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.watch()

        def connection_lost(self, exc) -> None:
            if self.timer is not None:
                self.timer.cancel()
            super().connection_lost(exc)

        def watch(self) -> None:
            """Arm the timer for what the connection waits for: headers by their deadline, or the next
            piece of a body within read_timeout; none while the app works on a request."""
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # waiting for a request
                if self.headers_deadline is None:
                    self.headers_deadline = self.loop.time() + read_timeout
                self.timer = self.loop.call_at(self.headers_deadline, self.timed_out)
                return
            self.headers_deadline = None
            if self.cycle.more_body:
                self.timer = self.loop.call_later(read_timeout, self.timed_out)

        def timed_out(self) -> None:
            self.timer = None
            if self.flow.read_paused:  # the app has not taken what came: not the client's delay
                self.timer = self.loop.call_later(read_timeout, self.timed_out)
                return
            waiting = self.cycle is None or self.cycle.response_complete  # else a body cut short: the app logs it
            if waiting and not self.conn.trailing_data[0]:  # not a byte of a request: an idle connection
                self.transport.close()
                return
            client = "%s:%d" % self.client if self.client else "?"
            log.warning("client %s sent no complete request within %g s (--read-timeout): closed", client, read_timeout)
            if waiting:
                self.transport.write(json_response(408, "Request Timeout", f"no complete request within {read_timeout:g} s"))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self.transport.write(json_response(400, "Bad Request", "invalid HTTP request: malformed request line or headers"))
            self.transport.close()

    return GuardedH11Protocol


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per `interval` seconds for each logger and message
    template (a flood of one error, e.g. "Too many open files", is one line each interval); the
    next one let through says how many were held back. Lower levels all pass."""

    def __init__(self, interval: float = 10.0):
        super().__init__()
        self.interval = interval
        self.seen = {}  # (logger, level, template) -> (time let through, held back since)
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self.lock:
            last, held = self.seen.get(key, (None, 0))
            if last is not None and now - last < self.interval:
                self.seen[key] = (last, held + 1)
                return False
            if len(self.seen) > 1000:  # templates are few; this bounds messages formatted in advance
                self.seen.clear()
            self.seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.interval:g} s, not logged)"
        return True


def uvicorn_options(host: str, port: int, log_config="ferlab", max_connections: int | None = None,
                    read_timeout: float = READ_TIMEOUT) -> dict:
    """How `ferlab serve` runs the app: uvicorn.run(app, **uvicorn_options(...)) (the tests run a
    live server with uvicorn.Config(app, **the same)). HTTP/1.1 by h11 with read timeouts, a cap on
    connections and JSON errors (guarded_protocol); uvicorn's logging with ferlab's lines (e.g. an
    aborted upload) beside its own and asyncio's, each warning or error once per 10 s at most
    (RepeatFilter), unless another log_config is given (None: leave logging alone)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    if log_config == "ferlab":
        log_config = copy.deepcopy(LOGGING_CONFIG)
        log_config["filters"] = {"once_per_interval": {"()": RepeatFilter, "interval": 10.0}}
        for handler in log_config["handlers"].values():
            handler["filters"] = ["once_per_interval"]
        log_config["loggers"]["ferlab"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
        log_config["loggers"]["asyncio"] = {"handlers": ["default"], "level": "WARNING", "propagate": False}
    protocol = guarded_protocol(max_connections or default_max_connections(), read_timeout)
    return {"host": host, "port": port, "http": protocol, "log_config": log_config, "log_level": "info",
            "timeout_graceful_shutdown": 5}
