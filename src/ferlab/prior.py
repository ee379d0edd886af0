"""Post-hoc logit adjustment (Menon et al. 2021): a trained model re-balanced for faces whose classes
are not distributed like its training faces'.

A model trained on FER2013 learns its class frequencies (7,215 happy faces, 436 disgusted) and, on
faces from elsewhere, under-predicts the rare classes: posed disgust comes out sad, anger neutral.
Subtracting tau * log(prior) from the logits removes the training prior (tau 1 is the Bayes-optimal
correction for balanced classes; a smaller tau keeps more of the in-distribution accuracy).

tau is chosen on validation faces only: the mean, over the run's sources, of each source's
validation macro-F1 (so a small source counts as much as FER2013). The adjustment is folded into
the bias of the model's last linear layer, so the weights, their ONNX exports and every backend carry it.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferlab.data import load_run_data
from ferlab.errors import FerlabError
from ferlab.evaluate import predict_probs
from ferlab.metrics import source_summaries
from ferlab.train import run_config

TAU_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class frequencies of `labels`, every class at least 1e-6 (so its log stays finite)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return np.maximum(counts / max(counts.sum(), 1), 1e-6)


def rebalance(probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Probabilities as the model folded with fold_into_bias(prior, tau) gives them (softmax of logits - tau*log prior)."""
    logits = np.log(np.maximum(probs, 1e-12)) - tau * np.log(prior)
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def mean_source_macro_f1(probs: np.ndarray, labels: np.ndarray, origins: np.ndarray | None, classes) -> float:
    """Macro-F1 (over the classes present) of each source's rows, averaged over the sources."""
    return float(np.mean([s["macro_f1"] for s in source_summaries(labels, probs.argmax(1), origins, classes).values()]))


def choose_tau(probs, labels, origins, prior, classes, grid=TAU_GRID) -> tuple[float, dict]:
    """(the tau of `grid` with the best mean_source_macro_f1 on these validation faces, {tau: score}).
    Ties go to the smaller tau: the least change that does as well."""
    scores = {tau: mean_source_macro_f1(rebalance(probs, prior, tau), labels, origins, classes) for tau in grid}
    best = max(scores, key=lambda tau: (round(scores[tau], 6), -tau))
    return best, scores


def fold_into_bias(model: nn.Module, prior: np.ndarray, tau: float) -> None:
    """Subtract tau * log(prior) from the bias of the model's last nn.Linear (its class scores), in place."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].bias is None or linears[-1].out_features != len(prior):
        raise FerlabError(f"{type(model).__name__}: its last layer is not a linear layer with a bias over {len(prior)} classes; "
                          "cannot fold a prior adjustment into it")
    with torch.no_grad():
        bias = linears[-1].bias
        bias -= torch.as_tensor(tau * np.log(prior), dtype=bias.dtype, device=bias.device)


def balance_for_run(run: Path, model: nn.Module, tau: float | None = None) -> dict:
    """The prior adjustment of a run's model: its training faces' class prior and tau (chosen by
    choose_tau on the run's validation faces when None), with the validation score of every tau tried."""
    data, train, val, _ = load_run_data(run_config(run))
    prior = class_prior(train.labels, len(data.classes))
    probs = predict_probs(model, val.images)
    best, scores = choose_tau(probs, val.labels, val.origins, prior, data.classes, TAU_GRID if tau is None else (tau,))
    return {"tau": best, "prior": [round(float(p), 6) for p in prior],
            "selection": "mean over the run's sources of validation macro-F1" if tau is None else "given",
            "val_mean_source_macro_f1": {str(t): round(s, 4) for t, s in scores.items()}}
