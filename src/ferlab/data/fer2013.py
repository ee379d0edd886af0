"""FER2013 in the Kaggle CSV layout (`emotion,pixels,Usage`, plain or gzip) and FER+ votes.

The 2,304 pixel values of a row are parsed with vectorised numpy over a block of rows (no
per-value Python), and every malformed row is reported as `<file>: line <n>: <problem>`, where
line numbers count the header as line 1. The parsed arrays are cached (see data/cache.py), so
only the first load of a file pays for decompressing and parsing it.

FER+ (`fer2013new.csv`, Barsoum et al. 2016) holds 10 annotator votes per FER2013 row, in the same
row order. `apply_ferplus` turns them into hard labels and vote distributions over ferlab's
8-class FER+ space (FER2013's 7 classes, then contempt; `labels.FERPLUS8_CLASSES`):

- the label is the class with the most votes among the 10 columns (8 emotions, unknown, NF);
- a row is dropped when that plurality is "unknown" or "NF" (not a face), or when two or more
  columns tie for the most votes (the FER+ convention drops unusable rows; we drop ties too
  rather than break them arbitrarily). Note: FER+'s own "majority" mode is stricter (> 50% of
  the votes after removing single votes); ours is the plurality rule most papers use;
- `soft_labels` are the 8 emotion votes normalised to sum 1 (unknown and NF votes excluded).
"""

import gzip
import zlib
from pathlib import Path

import numpy as np

from ferlab.data import cache
from ferlab.data.dataset import FaceDataset
from ferlab.errors import FerlabError
from ferlab.labels import FER2013_CLASSES, FERPLUS8_CLASSES, FERPLUS_CLASSES, FERPLUS_VOTE_COLUMNS, class_index

FER2013_SPLITS = ("Training", "PublicTest", "PrivateTest")
PIXELS = 48 * 48
_PARSER_VERSION = "fer2013-csv-1"
_BLOCK_ROWS = 2048   # rows parsed per numpy pass: bounds memory to ~20 MB of text at a time


def load_fer2013_csv(path, cache_enabled: bool = True) -> FaceDataset:
    """FER2013 CSV (plain or gzip; header `emotion,pixels,Usage`) with its official splits.

    A CSV with only `emotion,pixels` (Kaggle's train.csv) loads as one split named "all".
    """
    path = Path(path)
    if not path.is_file():
        raise FerlabError(f"{path}: no such file")
    stat = path.stat()
    entry = cache.cache_path("fer2013", f"{_PARSER_VERSION}\n{path.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}")
    arrays = cache.load(entry) if cache_enabled else None
    cached = arrays is not None
    if arrays is None:
        arrays = parse_fer2013_csv(path)
        if cache_enabled:
            cache.save(entry, arrays)
    return FaceDataset(images=arrays["images"], labels=arrays["labels"].astype(np.int64), splits=arrays["splits"],
                       classes=FER2013_CLASSES, source=str(path), extra={"cached": cached})


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number (whatever its name)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise FerlabError(f"{path}: cannot read ({e})") from None
    return data


def parse_fer2013_csv(path) -> dict:
    """Parse a FER2013 CSV into {"images": uint8 (N,48,48), "labels": int8 (N,), "splits": str (N,)}."""
    path = Path(path)
    lines = _read_bytes(path).split(b"\n")
    header = lines[0].decode("utf-8-sig", errors="replace").strip()
    columns = [c.strip().strip('"') for c in header.split(",")]
    if columns not in (["emotion", "pixels", "Usage"], ["emotion", "pixels"]):
        raise FerlabError(f"{path}: line 1: expected the header emotion,pixels,Usage, found {header[:60]!r}")

    emotion_of = {str(i).encode(): i for i in range(len(FER2013_CLASSES))}
    usage_of = {s.encode(): s for s in FER2013_SPLITS}
    line_numbers, labels, pixels, splits = [], [], [], []
    for number, line in enumerate(lines[1:], start=2):  # per row, not per pixel: ~0.3 s for 35k rows
        if not line or line.isspace():
            continue
        fields = line.split(b",")
        if len(fields) != len(columns):
            raise FerlabError(f"{path}: line {number}: expected {len(columns)} comma-separated fields "
                              f"({','.join(columns)}), found {len(fields)}")
        label = emotion_of.get(fields[0].strip().strip(b'"'))
        if label is None:
            raise FerlabError(f"{path}: line {number}: emotion {_show(fields[0])} is not a label 0..6")
        if len(columns) == 3:
            usage = usage_of.get(fields[2].strip().strip(b'"'))
            if usage is None:
                raise FerlabError(f"{path}: line {number}: Usage {_show(fields[2])} is not one of {', '.join(FER2013_SPLITS)}")
            splits.append(usage)
        line_numbers.append(number)
        labels.append(label)
        pixels.append(fields[1] if fields[1][:1] != b'"' else fields[1].strip(b'"'))   # some exports quote fields
    if not labels:
        raise FerlabError(f"{path}: no data rows after the header")

    images = np.empty((len(pixels), 48, 48), dtype=np.uint8)
    for lo in range(0, len(pixels), _BLOCK_ROWS):
        hi = min(lo + _BLOCK_ROWS, len(pixels))
        images[lo:hi] = _parse_pixel_block(pixels[lo:hi], line_numbers[lo:hi], path)
    return {"images": images, "labels": np.array(labels, dtype=np.int8),
            "splits": np.array(splits if splits else ["all"] * len(labels))}


def _show(field: bytes) -> str:
    return repr(field.strip()[:20].decode("utf-8", errors="replace"))


# Byte classes for the pixel parser: 0 = separator (space, tab, CR), 1 = digit, 2 = anything else.
_BYTE_CLASS = np.full(256, 2, dtype=np.uint8)
_BYTE_CLASS[[ord(" "), ord("\t"), ord("\r")]] = 0
_BYTE_CLASS[ord("0"):ord("9") + 1] = 1


def _parse_pixel_block(fields: list[bytes], line_numbers: list[int], path) -> np.ndarray:
    """Parse rows of space-separated integers 0..255 into uint8 (rows, 48, 48), vectorised.

    The rows are joined with spaces into one byte buffer; digit runs are found with array ops
    and their values summed digit by digit (at most 3 passes). Any problem is traced back to
    its row with `searchsorted` over the row start offsets.
    """
    n = len(fields)
    row_start = np.concatenate(([1], 1 + np.cumsum([len(f) + 1 for f in fields])[:-1]))
    buf = np.frombuffer(b" " + b" ".join(fields) + b"   ", dtype=np.uint8)   # separators at both ends
    kind = _BYTE_CLASS[buf]

    def fail(byte_pos: int, problem: str):
        row = int(np.searchsorted(row_start, byte_pos, side="right") - 1)
        raise FerlabError(f"{path}: line {line_numbers[row]}: {problem}")

    if kind.max() > 1:
        pos = int(np.argmax(kind > 1))
        row = int(np.searchsorted(row_start, pos, side="right") - 1)
        tokens = [t for t in fields[row].split() if not t.isdigit()]
        fail(pos, f"pixel value {_show(tokens[0] if tokens else b'?')} is not an integer 0..255")

    step = np.diff(kind.view(np.int8))          # +1 where a digit run starts, -1 after it ends
    starts = np.flatnonzero(step == 1) + 1
    ends = np.flatnonzero(step == -1) + 1
    counts = np.diff(np.append(np.searchsorted(starts, row_start), len(starts)))
    wrong = np.flatnonzero(counts != PIXELS)
    if wrong.size:
        r = int(wrong[0])
        raise FerlabError(f"{path}: line {line_numbers[r]}: expected {PIXELS} pixel values, found {counts[r]}")

    lengths = ends - starts
    too_long = np.flatnonzero(lengths > 3)
    if too_long.size:
        i = int(too_long[0])
        fail(int(starts[i]), f"pixel value {buf[starts[i]:ends[i]].tobytes().decode()!r} is out of range 0..255")
    # Horner's rule over the (at most 3) digits of every value at once; buf has 2 spare bytes at the end.
    values = buf.take(starts).astype(np.int16) - ord("0")
    values = np.where(lengths > 1, values * 10 + (buf.take(starts + 1).astype(np.int16) - ord("0")), values)
    values = np.where(lengths > 2, values * 10 + (buf.take(starts + 2).astype(np.int16) - ord("0")), values)
    over = np.flatnonzero(values > 255)
    if over.size:
        i = int(over[0])
        fail(int(starts[i]), f"pixel value {int(values[i])} is out of range 0..255")
    return values.astype(np.uint8).reshape(n, 48, 48)


# ---------------------------------------------------------------------------------------- FER+

def read_ferplus_votes(path, n_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(votes int64 (N, 10) in FERPLUS_VOTE_COLUMNS order, usage str (N,)) from fer2013new.csv."""
    path = Path(path)
    if not path.is_file():
        raise FerlabError(f"{path}: no such file")
    lines = _read_bytes(path).decode("utf-8-sig", errors="replace").splitlines()
    expected = ["Usage", "Image name", *FERPLUS_VOTE_COLUMNS]
    columns = [c.strip() for c in lines[0].split(",")] if lines else []
    if columns != expected:
        raise FerlabError(f"{path}: line 1: expected the FER+ header {','.join(expected)}, found {','.join(columns)[:120]!r}")
    rows = [(number, line.split(",")) for number, line in enumerate(lines[1:], start=2) if line.strip()]
    if n_rows is not None and len(rows) != n_rows:
        raise FerlabError(f"{path}: {len(rows)} FER+ rows but the FER2013 CSV has {n_rows}; "
                          "the two files must hold the same rows in the same order")
    for number, fields in rows:
        if len(fields) != len(expected):
            raise FerlabError(f"{path}: line {number}: expected {len(expected)} fields, found {len(fields)}")
    text = np.array([fields[2:] for _, fields in rows], dtype=str).reshape(len(rows), len(FERPLUS_VOTE_COLUMNS))
    try:
        votes = text.astype(np.int64)
        bad_row = np.flatnonzero((votes < 0).any(1))[0] if (votes < 0).any() else None
    except ValueError:   # find the culprit only when there is one
        bad_row = next((i for i, (_, fields) in enumerate(rows) if not all(v.strip().isdigit() for v in fields[2:])), 0)
    if bad_row is not None:
        number, fields = rows[int(bad_row)]
        raise FerlabError(f"{path}: line {number}: vote counts must be integers >= 0, found {','.join(fields[2:])!r}")
    usage = np.array([fields[0].strip() for _, fields in rows])
    return votes, usage


def ferplus_majority(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(labels in FERPLUS8_CLASSES, keep mask, drop counts) from (N, 10) FER+ votes; see module doc."""
    top = votes.max(1)
    winner = votes.argmax(1)
    tie = (votes == top[:, None]).sum(1) > 1
    unknown = ~tie & (winner == FERPLUS_VOTE_COLUMNS.index("unknown"))
    not_face = ~tie & (winner == FERPLUS_VOTE_COLUMNS.index("NF"))
    keep = ~(tie | unknown | not_face)
    to_ferlab = np.array([class_index(c, FERPLUS8_CLASSES) for c in FERPLUS_CLASSES] + [-1, -1])
    dropped = {"unknown": int(unknown.sum()), "not_face": int(not_face.sum()), "tie": int(tie.sum())}
    return to_ferlab[winner], keep, dropped


def apply_ferplus(dataset: FaceDataset, ferplus_path) -> FaceDataset:
    """The FER2013 rows relabelled with FER+ majority labels and vote distributions (see module doc)."""
    ferplus_path = Path(ferplus_path)
    votes, usage = read_ferplus_votes(ferplus_path, n_rows=len(dataset))
    if dataset.split_names() != ["all"]:
        mismatch = np.flatnonzero(usage != dataset.splits)
        if mismatch.size:
            i = int(mismatch[0])
            raise FerlabError(f"{ferplus_path}: line {i + 2}: Usage {str(usage[i])!r} but row {i + 1} of {dataset.source} "
                              f"is {str(dataset.splits[i])!r}; the two files are not aligned row by row")
    labels, keep, dropped = ferplus_majority(votes)
    columns = [class_index(c, FERPLUS_CLASSES) for c in FERPLUS8_CLASSES]   # FER+ column of each ferlab class
    emotion_votes = votes[:, columns].astype(np.float32)   # reordered into FERPLUS8_CLASSES order
    soft = emotion_votes / np.maximum(emotion_votes.sum(1, keepdims=True), 1)
    out = dataset.subset(keep)
    out.labels = labels[keep].astype(np.int64)
    out.soft_labels = soft[keep]
    out.classes = FERPLUS8_CLASSES
    out.source = f"{dataset.source} + FER+ {ferplus_path}"
    out.extra["ferplus_dropped"] = dropped
    return out

