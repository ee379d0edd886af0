"""Atomic file writes: write to a temporary file in the same directory, then rename it into place.

A killed process leaves either the old file or the new one, never half of one. Torch-free, so
the data layer can use it without importing torch.
"""

import os
import tempfile
from pathlib import Path


def atomic_write(path, write) -> None:
    """Call write(tmp_path) and rename the result onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def check_writable(folder) -> None:
    """Create `folder` if needed and write a probe file in it, so a command that writes there fails
    in one line before its work, not after (FerlabError)."""
    from ferlab.errors import FerlabError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".ferlab-probe-"):
            pass
    except OSError as e:
        raise FerlabError(f"{folder}: cannot write there ({e.strerror or e})") from None


def remove_leftovers(folder) -> list[Path]:
    """Delete the temporary files (.NAME.XXXX.tmp) that atomic_write leaves when its process is
    killed mid-write; call it before a process starts writing into `folder`. Returns them."""
    removed = []
    for path in Path(folder).glob(".*.*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def refuse_overwrite(outputs, inputs) -> None:
    """FerlabError (one line) when an output would overwrite an input or another output.

    outputs: (option, path) pairs, e.g. ("--out", "clip.mp4"); inputs: paths. Paths are the same
    file when they resolve to one path, or (for files that exist) are os.path.samefile: a hard
    link or a case-insensitive file system's other spelling of a name.
    """
    from ferlab.errors import FerlabError

    taken = {}
    for path in inputs:
        for key in _file_keys(path):
            taken.setdefault(key, f"the input {path}")
    for option, path in outputs:
        keys = _file_keys(path)
        clash = next((taken[key] for key in keys if key in taken), None)
        if clash is not None:
            raise FerlabError(f"{path}: {option} would overwrite {clash}; choose another name")
        taken.update((key, f"the {option} output") for key in keys)


def _file_keys(path) -> set:
    """The path resolved, and (device, inode) when the file exists: equal keys, same file."""
    keys = {os.path.realpath(path)}
    try:
        st = os.stat(path)
        keys.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    return keys
