"""Post-training: what turns a finished run into a shipped model, `ferlab bundle`.

    selection.py    the one rule both choices below use: the best mean over sources of validation macro-F1
    interpolate.py  move the weights part of the way back to the run's --init model (WiSE-FT)
    prior.py        fold a post-hoc logit adjustment (the training prior, removed) into the last layer
    bundle.py       the `ferlab bundle` command: weights, model card and ONNX exports of a run
"""
