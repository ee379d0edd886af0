"""Adapting a model to the user's own faces, without labels: BatchNorm statistics and the class prior
re-estimated on them.

Why: a model's BatchNorm layers normalise with the mean and variance of its training faces. Faces
from one camera, one light and one population (a folder of studio portraits, a video) shift those
statistics, and a model that normalises them with the wrong ones loses accuracy. AdaBN (Li et al.
2016) re-estimates BatchNorm statistics on the target faces, layer by layer in network order, each
layer seeing the layers before it already adapted.

Only the first third of the BatchNorm layers is adapted (ADAPTED_SHARE). Early layers see the
camera and the light; deep ones also see which expressions a set holds, and re-centring them on a
set without neutral faces (CK+) or of mostly one class moves the predictions away from what the
set holds. On our leave-one-source-out folds, the FER2013-only model adapted to CK+48 gained
+4.2 points with the first 3 of its 9 layers and lost 5.1 with all 9 (docs/experiments.md).

A few faces estimate the statistics badly, so the target statistics are blended with the training
ones by how many faces there are (Schneider et al. 2020): weight n / (n + PRIOR_FACES) on the
target, the rest on the source, the variance that of the two-component mixture; fewer than
MIN_FACES faces are refused.

Then the classes. A model learns how often each expression occurs among its training faces (a
quarter of FER2013 is happy, 2% disgusted) and carries that prior into every prediction; a user's
faces hold their own mix (a posed set about as many of each, a set of portraits mostly neutral).
The faces' prior is estimated as the mean of the adapted model's probabilities over them, blended
with the training prior by how many faces there are (weight n / (n + PRIOR_SHIFT_FACES)), and each
prediction is re-weighted by faces' prior / training prior (Saerens et al. 2002). One step of their
EM only: iterated, it runs away (CK+48 72.9% -> 36.2%), even on FER2013's own PrivateTest, whose mix
is the training one (71.0% -> 59.4% in 30 steps). A temperature does not fix it (1.0 fits PublicTest
best): label smoothing puts a floor under every class, so a rare class's mean probability sits above
its frequency (disgust 0.028 against 0.015), and every step compounds that. One step gained on every
leave-one-source-out fold of the shipped recipe (docs/experiments.md). The training prior is the
card's `class_prior` (ferlab bundle writes it); a model without one is adapted in its BatchNorm
layers only.

This runs on onnxruntime with the onnx package: no PyTorch. A model is adapted as ONNX bytes whose
BatchNormalization nodes are kept (every fp32 export: ferlab.posttrain.export keeps them; int8 exports fold
them and cannot be adapted). `Recognizer.adapt(images)` finds the faces and calls `adapt_onnx`.
"""

from __future__ import annotations

import numpy as np

from ferlab.errors import FerlabError
from ferlab.inference.onnxrt import INPUT_NAME, OnnxModel

# Measured on random draws of CK+48 and taiwanese_tpe faces (the FER2013-only model, first 3 layers,
# 4 draws each): 8 faces already gained on average at full weight, but 16 is the smallest draw where
# every draw gained on both sets. A blend weighted as 64 faces gave up most of the gain below 128.
MIN_FACES = 16       # fewer faces are refused
PRIOR_FACES = 8      # the training statistics count as this many faces in the blend
ADAPTED_SHARE = 1 / 3   # of the BatchNorm layers, from the input, that are adapted
# Random draws of 16-256 faces of the held-out sets: with the training prior counted as 16 faces, a
# draw of 16 lost less often (8-12% of draws against 14%) for a little less mean gain.
PRIOR_SHIFT_FACES = 16


def class_weights(probs: np.ndarray, training_prior, prior_faces: float = PRIOR_SHIFT_FACES) -> np.ndarray:
    """Per-class factors that move predictions from the training prior to that of these faces: the
    faces' prior (the mean of their probabilities, blended with the training prior as prior_faces
    faces) divided by the training prior."""
    prior = np.asarray(training_prior, np.float64)
    faces_prior = (np.asarray(probs, np.float64).sum(0) + prior_faces * prior) / (len(probs) + prior_faces)
    return (faces_prior / prior).astype(np.float32)


def members_prior(cards: list[dict], num_classes: int) -> np.ndarray | None:
    """The class prior an ensemble's members were trained toward (the mean of their cards'
    class_prior), or None when a card has none."""
    priors = [card.get("class_prior") for card in cards]
    if any(p is None or len(p) != num_classes for p in priors):
        return None
    return np.mean(np.array(priors, np.float64), axis=0)


def adaptation_line(adaptation: dict) -> str:
    """What Recognizer.adapt did, in one line (the commands print it)."""
    line = f"adapted to {adaptation['faces']} faces (weight {adaptation['weight']})"
    prior = adaptation.get("class_prior")
    if prior:
        line += "; their class prior: " + ", ".join(f"{c} {v:.2f}" for c, v in prior.items())
    return line


def reweight(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Probabilities multiplied by per-class weights, renormalised."""
    out = probs * weights
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def target_weight(num_faces: int, prior_faces: float = PRIOR_FACES) -> float:
    """How much of each BatchNorm statistic comes from the target faces: n / (n + prior_faces)."""
    return num_faces / (num_faces + prior_faces)


def blend_statistics(source_mean, source_var, target_mean, target_var, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """The mean and variance of the mixture (1 - weight) * source + weight * target, per channel."""
    mean = (1 - weight) * source_mean + weight * target_mean
    var = (1 - weight) * source_var + weight * target_var + weight * (1 - weight) * (source_mean - target_mean) ** 2
    return mean.astype(np.float32), var.astype(np.float32)


def batchnorm_nodes(proto) -> list:
    """The graph's BatchNormalization nodes, in graph (topological) order."""
    return [n for n in proto.graph.node if n.op_type == "BatchNormalization"]


def own_statistics(proto, nodes) -> None:
    """Give every BatchNorm node initializers of its own for its mean and variance. The exporter
    shares equal tensors through Identity nodes (a fresh layer's mean of zeros and its bias of
    zeros), which adapting one layer must not change in another; anything else is refused."""
    from onnx import numpy_helper

    init = {t.name: t for t in proto.graph.initializer}
    producers = {n.output[0]: n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in init}
    for node in nodes:
        for name in node.input[3:5]:
            if name in init:
                continue
            if name not in producers:
                raise FerlabError(f"BatchNorm node {node.name} keeps its statistics outside the graph's initializers")
            proto.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(init[producers[name].input[0]]), name))
            proto.graph.node.remove(producers.pop(name))
            init = {t.name: t for t in proto.graph.initializer}


def _channel_moments(session, output: str, faces: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of an (N, C, H, W) activation over all faces and positions."""
    total = total_sq = None
    count = 0
    for start in range(0, len(faces), batch_size):
        act = session.run([output], {INPUT_NAME: faces[start:start + batch_size]})[0].astype(np.float64)
        axes = (0, 2, 3) if act.ndim == 4 else (0,)
        s, sq = act.sum(axes), (act ** 2).sum(axes)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += act.size // act.shape[1]
    mean = total / count
    return mean, np.maximum(total_sq / count - mean ** 2, 0.0)


def adapt_onnx(model_bytes: bytes, faces: np.ndarray, weight: float, batch_size: int = 256, layers: int | None = None) -> bytes:
    """ONNX bytes whose BatchNorm statistics are blended `weight` of the way to those of `faces`
    ((N, 1, 48, 48) float32 in [0, 1]), in the first `layers` BatchNorm layers (default: the first
    ADAPTED_SHARE of them, at least one); FerlabError when the model has no BatchNorm node."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(model_bytes)
    nodes = batchnorm_nodes(proto)
    if not nodes:
        raise FerlabError("the model has no BatchNorm layers to adapt (int8 exports fold them into the convolutions; "
                          "adapt the fp32 model)")
    layers = max(1, round(len(nodes) * ADAPTED_SHARE)) if layers is None else layers
    own_statistics(proto, nodes)
    init = {t.name: t for t in proto.graph.initializer}
    faces = np.ascontiguousarray(faces, np.float32)
    probe = onnx.ModelProto()   # the same graph, each BatchNorm's input also an output
    probe.CopyFrom(proto)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n.input[0]) for n in nodes)
    probe_init = {t.name: t for t in probe.graph.initializer}
    for node in nodes[:layers]:
        session = OnnxModel(probe.SerializeToString()).session
        target_mean, target_var = _channel_moments(session, node.input[0], faces, batch_size)
        source_mean, source_var = (numpy_helper.to_array(init[name]) for name in node.input[3:5])
        mean, var = blend_statistics(source_mean, source_var, target_mean, target_var, weight)
        for name, value in ((node.input[3], mean), (node.input[4], var)):
            for tensors in (init, probe_init):
                tensors[name].CopyFrom(numpy_helper.from_array(value, name))
    return proto.SerializeToString()
