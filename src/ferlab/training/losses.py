"""What the loss weighs by class: --class-weights balanced (loss weights inverse to class frequency)
and the class prior, which --logit-adjust adds to the logits the loss sees and post-training
(ferlab.posttrain.prior) folds out of a trained model."""

import numpy as np
import torch

PRIOR_FLOOR = 1e-6   # a class without training faces still has a finite log prior


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes).astype(np.float64)


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class frequencies of `labels`, every class at least PRIOR_FLOOR (so its log stays finite)."""
    counts = class_counts(labels, num_classes)
    return np.maximum(counts / max(counts.sum(), 1), PRIOR_FLOOR)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """n_samples / (n_present_classes * count_c): scikit-learn's 'balanced', what Keras users pass."""
    counts = class_counts(labels, num_classes)
    weights = len(labels) / ((counts > 0).sum() * np.maximum(counts, 1))
    weights[counts == 0] = 0.0
    return torch.tensor(weights, dtype=torch.float32)


def logit_offset(tau: float, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """--logit-adjust (Menon et al. 2021): tau * log(class prior of the training faces), added to the
    logits the loss sees."""
    return torch.tensor(tau * np.log(class_prior(labels, num_classes)), dtype=torch.float32)
