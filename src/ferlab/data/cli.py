"""`ferlab data summary SPEC`: load a data set the way training will, and print what is in it.

Prints per-class counts for every split and in total (and, for FERGIT, per source), the FER+
rows dropped, the subjects found, and how long loading took (first load parses, later loads
read the cache). SPEC is anything `load_dataset` accepts (see data/load.py).
"""

import argparse
import time

import numpy as np

from ferlab.data import cache
from ferlab.data.dataset import FaceDataset
from ferlab.data.load import load_dataset
from ferlab.labels import LABEL_SPACES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("summary", help="per-split, per-class counts of a data set",
                       description="Load a data set and print per-split, per-class counts and the load time.")
    p.add_argument("spec", metavar="SPEC",
                   help="FER2013 CSV (.csv/.csv.gz), image folder, ckplus:DIR, ferplus8:DIR or fergit:CSV,DIR")
    p.add_argument("--ferplus", metavar="PATH", help="FER+ votes (fer2013new.csv) to relabel a FER2013 CSV")
    p.add_argument("--classes", choices=sorted(LABEL_SPACES), help="label space of an image folder (default fer2013)")
    p.add_argument("--seed", type=int, default=0, help="seed of FERGIT's random split (default 0)")
    p.add_argument("--no-cache", action="store_true", help="parse the files even if a cached copy exists")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "summary":
        return summary(args)
    raise AssertionError(args.data_command)


def summary(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    ds = load_dataset(args.spec, ferplus=args.ferplus, seed=args.seed, classes=args.classes, cache=not args.no_cache)
    seconds = time.perf_counter() - start
    print(describe(ds))
    how = "no cache" if args.no_cache else ("from cache" if ds.extra.get("cached") else "parsed, now cached")
    print(f"\nloaded in {seconds:.2f} s ({how}; cache dir {cache.cache_dir()})")
    return 0


def describe(ds: FaceDataset) -> str:
    """A readable report: header line, class x split table, and per-source tables when present."""
    splits = ds.split_names()
    h, w = ds.images.shape[1:]
    lines = [f"{ds.source}", f"{len(ds):,} faces ({h}x{w} {ds.images.dtype}), {len(ds.classes)} classes, "
                             f"splits: {', '.join(splits)}"]
    dropped = ds.extra.get("ferplus_dropped")
    if dropped:
        total = sum(dropped.values())
        lines.append(f"FER+ labels: dropped {total:,} rows (plurality vote unknown {dropped['unknown']:,}, "
                     f"not a face {dropped['not_face']:,}, tie {dropped['tie']:,}); soft labels = vote distributions")
    if ds.groups is not None:
        lines.append(f"subjects: {len(np.unique(ds.groups))} (from S<subject>_<seq>_<frame> file names)")
    lines += ["", _table("class", list(ds.classes), splits, _counts(ds.labels, len(ds.classes), ds.splits, splits))]
    if ds.origins is not None:
        origins = list(dict.fromkeys(ds.origins.tolist()))
        _, origin_index = np.unique(ds.origins, return_inverse=True)
        order = [sorted(origins).index(o) for o in origins]
        by_split = _counts(origin_index, len(origins), ds.splits, splits)[order]
        lines += ["", _table("source", origins, splits, by_split)]
        by_origin = np.stack([np.bincount(ds.labels[ds.origins == o], minlength=len(ds.classes)) for o in origins], 1)
        lines += ["", _table("class", list(ds.classes), origins, by_origin)]
    return "\n".join(lines)


def _counts(row_key: np.ndarray, n_rows: int, splits: np.ndarray, split_names: list[str]) -> np.ndarray:
    """(n_rows, n_splits) counts of each key value in each split."""
    return np.stack([np.bincount(row_key[splits == s], minlength=n_rows) for s in split_names], 1)


def _table(corner: str, rows: list[str], columns: list[str], counts: np.ndarray) -> str:
    """Right-aligned count table with a total column, a share column and a total row."""
    counts = np.asarray(counts)
    totals = counts.sum(1)
    grand = max(int(totals.sum()), 1)
    header = [corner, *columns, "total", "share"]
    body = [[name, *[f"{c:,}" for c in row], f"{t:,}", f"{100 * t / grand:.1f}%"] for name, row, t in zip(rows, counts, totals)]
    body.append(["total", *[f"{c:,}" for c in counts.sum(0)], f"{int(totals.sum()):,}", "100.0%"])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join([r[0].ljust(widths[0])] + [v.rjust(wd) for v, wd in zip(r[1:], widths[1:])])
    return "\n".join([fmt(header), *[fmt(r) for r in body]])
