"""Weight interpolation between a fine-tuned model and the model it started from (WiSE-FT,
Wortsman et al. 2022): a model that learns new kinds of faces without forgetting FER2013.

Fine-tuning `default` on FER2013 + muxspace48 + CK+48 teaches it the new sources but costs about
1.8 points of FER2013 accuracy. The weights on the straight line between the two models keep most
of what the fine-tune learned and what the start knew: (1 - alpha) * start + alpha * fine-tuned.
Blending two models' BatchNorm statistics does not give the statistics of the blended model, so
they are recomputed on the run's training faces (ferlab.training.batchnorm).

alpha is chosen on validation faces only: among the alphas where no source's validation accuracy
falls below the starting model's by more than half a standard error of it (smaller differences are
which faces happen to be in the validation set: on the 3,579 FER2013 PublicTest faces that is 0.39
points, 14 faces), the one with the best mean over the sources of their validation macro-F1 (so a
small source counts as much as FER2013).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ferlab.training.batchnorm import recalibrate_batchnorm
from ferlab.checkpoint import load_model
from ferlab.data import load_run_data
from ferlab.errors import FerlabError
from ferlab.evaluate import predict_probs
from ferlab.metrics import source_summaries
from ferlab.posttrain.selection import best_setting
from ferlab.training.config import run_config

ALPHA_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BN_FACES = 4000   # training faces the BatchNorm statistics are recomputed on
NOISE_SE = 0.5    # a validation accuracy this many standard errors below the start's still counts as kept


def interpolate(start: dict, end: dict, alpha: float) -> dict:
    """(1 - alpha) * start + alpha * end for every float tensor; counters (num_batches_tracked) from end."""
    differ = sorted(start.keys() ^ end.keys()) or [k for k in end if start[k].shape != end[k].shape]
    if differ:
        raise FerlabError(f"cannot interpolate between models of different architectures (they differ in {differ[0]})")
    return {k: (start[k].float() * (1 - alpha) + end[k].float() * alpha).to(end[k].dtype) if end[k].is_floating_point()
            else end[k] for k in end}


def source_scores(model, val) -> dict:
    """{source: {accuracy, macro_f1, num_samples}} of a model on validation faces ("all" when they have no origins)."""
    pred = predict_probs(model, val.images).argmax(1)
    return {src: {k: s[k] for k in ("accuracy", "macro_f1", "num_samples")}
            for src, s in source_summaries(val.labels, pred, val.origins, val.classes).items()}


def keeps_accuracy(score: dict, start: dict) -> bool:
    """Whether a source's validation accuracy is at most NOISE_SE standard errors of the start's below it."""
    p, n = start["accuracy"], start["num_samples"]
    return bool(score["accuracy"] >= p - NOISE_SE * np.sqrt(p * (1 - p) / max(n, 1)))


def choose_alpha(scores: dict, start: dict) -> float | None:
    """The alpha of `scores` ({alpha: source_scores}) where every source keeps the start's validation
    accuracy (keeps_accuracy), with the best mean source macro-F1 (posttrain.selection); None if none keeps it."""
    keeps = [alpha for alpha, s in scores.items() if all(keeps_accuracy(s[src], start[src]) for src in start)]
    return best_setting(scores, among=keeps)


class WeightLine:
    """The straight line between a run's --init model and `model`, the run's selected weights
    (moved in place by move_to), with what choosing a point on it needs: the run's validation faces
    and the start's scores on them."""

    def __init__(self, run: Path, model: torch.nn.Module, start: str | None = None):
        cfg = run_config(run)
        start = start or cfg.init   # another name for the same weights, when a bundle has replaced --init's
        if not start:
            raise FerlabError(f"{run}: the run did not start from a model (--init), so there is nothing to interpolate from")
        _, train, self.val, _ = load_run_data(cfg)
        start_model = load_model(start)[0]
        self.model, self.start_name = model, start
        self.start_scores = source_scores(start_model, self.val)
        self.start = {k: v.clone() for k, v in start_model.state_dict().items()}
        self.end = {k: v.clone() for k, v in model.state_dict().items()}   # clones: load_state_dict writes into these
        self.bn_faces = train.images[np.random.default_rng(cfg.seed).choice(len(train), min(BN_FACES, len(train)), replace=False)]

    def move_to(self, alpha: float, recalibrate: bool = True) -> torch.nn.Module:
        self.model.load_state_dict(interpolate(self.start, self.end, alpha))
        if recalibrate:
            recalibrate_batchnorm(self.model, self.bn_faces)
        return self.model.eval()


def interpolate_run(run: Path, model: torch.nn.Module, alpha: float | None = None, start: str | None = None) -> dict:
    """Move `model` (the run's selected weights, in place) to the chosen point between the run's --init
    model (or `start`, the same weights under another name) and itself, BatchNorm statistics recomputed;
    returns what was chosen and the validation scores."""
    line = WeightLine(run, model, start)
    grid = ALPHA_GRID if alpha is None else (alpha,)
    scores, states = {}, {}
    for a in tqdm(grid, desc="interpolating: alpha", file=sys.stderr, disable=len(grid) == 1 or None):
        scores[a] = source_scores(line.move_to(a), line.val)
        states[a] = {k: v.clone() for k, v in model.state_dict().items()}   # BatchNorm statistics included
    chosen = choose_alpha(scores, line.start_scores) if alpha is None else alpha
    if chosen is None:
        raise FerlabError(f"{run}: no alpha in {ALPHA_GRID} keeps every source's validation accuracy at "
                          f"{line.start_name}'s; pass one explicitly")
    model.load_state_dict(states[chosen])
    return {"alpha": chosen, "start": line.start_name, "bn_faces": len(line.bn_faces),
            "selection": f"every source's validation accuracy at most {NOISE_SE} standard error below the start's, "
                         "then the best mean source macro-F1" if alpha is None else "given",
            "val_start": line.start_scores, "val_scores": {str(a): sc for a, sc in scores.items()}}
