"""Where a `ferlab tune` study lives: its database (an Optuna RDBStorage whose heartbeats re-queue
the trials of dead workers) and the file lock that keeps workers on one SQLite file from claiming
more trials than the study's target. Split from ferlab/training/tune.py, which runs the search."""

import inspect
import os
from pathlib import Path

from ferlab.errors import FerlabError

try:
    import fcntl
except ImportError:  # Windows: no file lock (use a server database for several workers there)
    fcntl = None


def make_storage(url: str, heartbeat: int):
    """An RDBStorage with heartbeats; a stale trial is failed and re-queued with its parameters."""
    import optuna
    from optuna.storages import RDBStorage

    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    retry = retry_cls(max_retry=3)
    engine_kwargs = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}   # wait for a busy database instead of failing
        from sqlalchemy.engine import make_url
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    # optuna >= 4.9 calls the callback heartbeat_stale_trial_callback, older versions failed_trial_callback
    key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters
           else "failed_trial_callback")
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, **{key: retry}), retry
    except Exception as e:  # sqlalchemy raises ArgumentError, OperationalError, ... for a bad URL or path
        raise FerlabError(f"--storage {url}: cannot open ({str(e).splitlines()[0][:200]})") from None


class StudyLock:
    """An exclusive file lock beside a SQLite database (no-op for other storages); release() may be
    called early and again."""

    def __init__(self, url: str):
        self.path = None
        if fcntl is not None and url.startswith("sqlite:///") and ":memory:" not in url:
            from sqlalchemy.engine import make_url
            self.path = Path(make_url(url).database + ".lock")
        self._fd = None

    def __enter__(self):
        if self.path is not None:
            from ferlab.atomic import check_writable

            check_writable(self.path.parent)  # the lock, the database and SQLite's journal go there (FerlabError)
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise FerlabError(f"{self.path}: cannot write the study's lock file ({e.strerror or e})") from None
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __exit__(self, *exc):
        self.release()
