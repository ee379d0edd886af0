"""On-disk cache of decoded data sets, so only the first load of a CSV or image tree is slow.

Entries are uncompressed .npz files (read back without pickle) in `$FERLAB_CACHE`, or
`~/.cache/ferlab/` when that variable is unset. The caller builds the key from everything the
content depends on (absolute path, size, mtime, parser version), so a changed source file gets a
new entry and a stale one is never read. A corrupt or unreadable entry counts as a miss; a cache
directory that cannot be written only costs speed.
"""

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from ferlab.atomic import atomic_write

# Bump when the cached arrays' meaning changes, so old entries are ignored.
CACHE_VERSION = "1"


def cache_dir() -> Path:
    return Path(os.environ.get("FERLAB_CACHE") or Path.home() / ".cache" / "ferlab")


def cache_path(kind: str, key: str) -> Path:
    """Entry for a key string: `<cache_dir>/<kind>-<sha1 of version and key>.npz`."""
    digest = hashlib.sha1(f"{CACHE_VERSION}\n{key}".encode()).hexdigest()[:20]
    return cache_dir() / f"{kind}-{digest}.npz"


def file_set_path(kind: str, version: str, root: Path, paths) -> Path:
    """Entry for a set of files under `root`: keyed by their relative paths, sizes and modification
    times, so editing, adding or removing a file makes a new entry."""
    digest = hashlib.sha1()
    for p in paths:
        st = os.stat(p)
        digest.update(f"{os.path.relpath(p, root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return cache_path(kind, f"{version}\n{Path(root).resolve()}\n{digest.hexdigest()}")


def load(path: Path) -> dict | None:
    """The arrays of a cache entry, or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception:  # a truncated or foreign file: treat as a miss and rebuild it
        return None


def save(path: Path, arrays: dict) -> None:
    """Write arrays atomically; a failure (read-only home, full disk) is reported, not raised."""
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
            np.savez(f, **arrays)
    try:
        atomic_write(path, write)
    except OSError as e:
        print(f"ferlab: warning: could not write data cache {path} ({e})", file=sys.stderr)
