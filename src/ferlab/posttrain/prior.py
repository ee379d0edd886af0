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
from ferlab.models.registry import last_linear
from ferlab.posttrain.selection import best_setting, mean_macro_f1
from ferlab.training.config import run_config
from ferlab.training.losses import class_prior

TAU_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def rebalance(probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """Probabilities as the model folded with fold_into_bias(prior, tau) gives them (softmax of logits - tau*log prior)."""
    logits = np.log(np.maximum(probs, 1e-12)) - tau * np.log(prior)
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def rebalanced_prior(prior: np.ndarray, tau: float) -> np.ndarray:
    """The class prior a model re-balanced by tau still carries: prior ** (1 - tau), normalised."""
    out = np.asarray(prior, np.float64) ** (1 - tau)
    return out / out.sum()


def mean_source_macro_f1(probs: np.ndarray, labels: np.ndarray, origins: np.ndarray | None, classes) -> float:
    """Macro-F1 (over the classes present) of each source's rows, averaged over the sources."""
    return mean_macro_f1(source_summaries(labels, probs.argmax(1), origins, classes))


def choose_tau(probs, labels, origins, prior, classes, grid=TAU_GRID) -> tuple[float, dict]:
    """(the tau of `grid` with the best mean source macro-F1 on these validation faces (posttrain.selection),
    {tau: that mean})."""
    sources = {tau: source_summaries(labels, rebalance(probs, prior, tau).argmax(1), origins, classes) for tau in grid}
    return best_setting(sources), {tau: mean_macro_f1(s) for tau, s in sources.items()}


def fold_into_bias(model: nn.Module, prior: np.ndarray, tau: float) -> None:
    """Subtract tau * log(prior) from the bias of the model's last nn.Linear (its class scores), in place."""
    found = last_linear(model)
    layer = found[1] if found else None
    if layer is None or layer.bias is None or layer.out_features != len(prior):
        raise FerlabError(f"{type(model).__name__}: its last layer is not a linear layer with a bias over {len(prior)} classes; "
                          "cannot fold a prior adjustment into it")
    with torch.no_grad():
        bias = layer.bias
        bias -= torch.as_tensor(tau * np.log(prior), dtype=bias.dtype, device=bias.device)


def training_prior(config) -> np.ndarray:
    """The class prior of a training config's (TrainConfig) training faces."""
    data, train, _, _ = load_run_data(config)
    return class_prior(train.labels, len(data.classes))


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
