"""How post-training chooses a setting (interpolation's alpha, the prior adjustment's tau) on a run's
validation faces: the mean over the run's sources of each source's macro-F1, so that a small source
counts as much as FER2013; ties go to the smaller setting, the least change that does as well."""

import numpy as np


def mean_macro_f1(sources: dict) -> float:
    """The mean macro-F1 of {source: {"macro_f1": ..., ...}} (metrics.source_summaries)."""
    return float(np.mean([s["macro_f1"] for s in sources.values()]))


def best_setting(scores: dict, among=None) -> float | None:
    """The setting of `scores` ({setting: {source: summary}}), or of `among` them, with the best
    mean_macro_f1 (rounded to 6 places, so float noise does not decide); None if there is none."""
    among = scores if among is None else among
    return max(among, key=lambda v: (round(mean_macro_f1(scores[v]), 6), -v), default=None)
