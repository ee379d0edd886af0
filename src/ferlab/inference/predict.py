"""`ferlab predict PATH...`: recognise expressions in image files and folders.

Writes JSON Lines (one object per image: {"path", "faces"}) or CSV (one row per face; an image
without faces gets one row with empty face columns) to stdout or --output, and with --annotate a
copy of each image with boxes and labels (two inputs of one name: NAME.EXT and NAME-2.EXT). An
output never overwrites an input: an --output or annotated copy naming a photo given is refused.
Unreadable files are reported on stderr, one line each, and skipped; the exit status is 0 when at
least one image was processed and 2 when none was. --adapt first adapts the model to the faces
of all the images (`Recognizer.adapt`, no labels), then recognises them.

The work is the `Recognizer` (ferlab.inference.recognizer) and ferlab.inference.images; this
module is the command.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ferlab.inference.adapt import MIN_FACES, adaptation_line
from ferlab.atomic import atomic_write, refuse_overwrite
from ferlab.errors import FerlabError
from ferlab.inference.images import (check_writable_dir, check_writable_file, draw_faces, expand_paths, prefetch, rounded,
                           safe_load, write_image)
from ferlab.inference.recognizer import Recognizer, add_model_arguments, recognizer_from_args

__all__ = ["add_arguments", "run"]


def csv_header(classes) -> list[str]:
    return ["path", "face", "x", "y", "w", "h", "score", "label", "confidence"] + [f"prob_{c}" for c in classes]


def csv_rows(path, faces: list[dict], classes) -> list[list]:
    if not faces:
        return [[str(path)] + [""] * (8 + len(classes))]
    rows = []
    for i, f in enumerate(rounded(faces)):
        rows.append([str(path), i, *f["box"], f["score"], f["label"], f["confidence"]] + [f["probs"][c] for c in classes])
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    add_model_arguments(parser)
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="jsonl: one object per image; csv: one row per face")
    parser.add_argument("--output", "-o", help="write results here (atomically) instead of stdout")
    parser.add_argument("--annotate", metavar="OUTDIR", help="write a copy of each image with boxes and labels to OUTDIR, "
                        "under its path in the folder given (inputs with the same name: NAME-2.EXT, NAME-3.EXT, ...)")
    parser.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True, help="search folders recursively (default: on)")
    parser.add_argument("--adapt", action="store_true", help="first adapt the model to the faces in these images, "
                        f"without labels (Recognizer.adapt: BatchNorm statistics and class prior; needs at least {MIN_FACES} faces)")
    parser.epilog = ("Unreadable files are reported on stderr and skipped; exit status 0 if at least one image was "
                     "processed, 2 if none. An output never overwrites an input: --output or an annotated copy that "
                     "would replace a photo given is refused.")


def run(args) -> int:
    if args.output and args.output != "-":
        check_writable_file(args.output)
    annotate_dir = check_writable_dir(args.annotate) if args.annotate else None
    files = list(expand_paths(args.paths, args.recursive))
    if not files:
        raise FerlabError(f"no image files found in {', '.join(args.paths)}")
    roots = [Path(p) for p in args.paths if Path(p).is_dir()]
    annotated = annotated_paths(annotate_dir, files, roots) if annotate_dir is not None else []
    outputs = [("--output", args.output)] if args.output and args.output != "-" else []
    refuse_overwrite(outputs + [("--annotate", p) for p in annotated], files)
    rec = recognizer_from_args(args)
    if args.adapt:
        rec.adapt(files)
        print(f"ferlab predict: {adaptation_line(rec.adaptation)}", file=sys.stderr)
    counts = {"ok": 0, "failed": 0, "faces": 0}

    def process(out) -> None:
        writer = csv.writer(out) if args.format == "csv" else None
        if writer:
            writer.writerow(csv_header(rec.classes))
        bar = tqdm(total=len(files), unit="img", disable=None if len(files) > 1 else True, file=sys.stderr)
        for i, (path, loaded) in enumerate(prefetch(files, safe_load)):
            bar.update(1)
            try:
                if isinstance(loaded, FerlabError):
                    raise loaded
                pixels, scale = loaded
                faces = rec.predict_pixels(pixels, scale)
                if annotate_dir is not None:
                    write_image(annotated[i], draw_faces(_bgr_copy(pixels), faces, scale))
            except FerlabError as e:
                counts["failed"] += 1
                bar.write(f"ferlab predict: skipped {e}", file=sys.stderr)
                continue
            counts["ok"] += 1
            counts["faces"] += len(faces)
            if writer:
                writer.writerows(csv_rows(path, faces, rec.classes))
            else:
                out.write(json.dumps({"path": str(path), "faces": rounded(faces)}) + "\n")
            if out is sys.stdout:
                out.flush()
        bar.close()

    if args.output and args.output != "-":
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                process(f)
        try:
            atomic_write(args.output, write)
        except OSError as e:
            raise FerlabError(f"{args.output}: cannot write ({e.strerror or e})") from None
    else:
        process(sys.stdout)
    rec.close()
    if counts["ok"] == 0:
        raise FerlabError(f"no image could be processed ({counts['failed']} failed)")
    if args.output and args.output != "-":
        print(f"ferlab predict: {counts['ok']} images, {counts['faces']} faces -> {args.output}", file=sys.stderr)
    return 0


def annotated_paths(outdir: Path, files: list[Path], roots: list[Path]) -> list[Path]:
    """Each file's annotated_path; a name already taken (ignoring case) by an earlier file gets
    NAME-2.EXT, NAME-3.EXT, ... so that no annotation replaces another."""
    out, taken = [], set()
    for path in files:
        first = target = annotated_path(outdir, path, roots)
        n = 1
        while str(target).casefold() in taken:
            n += 1
            target = first.with_name(f"{first.stem}-{n}{first.suffix}")
        taken.add(str(target).casefold())
        out.append(target)
    return out


def annotated_path(outdir: Path, path: Path, roots: list[Path]) -> Path:
    """OUTDIR/<path relative to the folder it came from>, with a suffix OpenCV can write."""
    rel = Path(path.name)
    for root in roots:
        try:
            rel = path.relative_to(root)
            break
        except ValueError:
            continue
    if rel.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"):
        rel = rel.with_name(rel.name + ".png")
    return outdir / rel


def _bgr_copy(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGR)

