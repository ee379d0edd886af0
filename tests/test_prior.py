"""Post-hoc prior adjustment (ferlab/posttrain/prior.py): the folded bias gives exactly the re-balanced
probabilities, tau is chosen on validation faces and recovers a balanced decision, and a run's
training prior is read from its own training faces."""

import json

import numpy as np
import pytest
from torch import nn

from ferlab.checkpoint import load_model
from ferlab.errors import FerlabError
from ferlab.evaluate import predict_probs
from ferlab.labels import FER2013_CLASSES
from ferlab.posttrain.prior import (balance_for_run, choose_tau, fold_into_bias, mean_source_macro_f1, rebalance,
                                   training_prior)
from ferlab.training.config import TrainConfig
from ferlab.training.losses import class_prior
from ferlab.training.run import fit, open_run
from synthetic import synthetic_faces


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_folded_bias_gives_the_rebalanced_probabilities(fernet_weights):
    model, _ = load_model(str(fernet_weights))
    faces, _ = synthetic_faces(64, seed=5)
    before = predict_probs(model, faces)
    prior = class_prior(np.array([0] * 50 + [1] * 2 + [3] * 200 + [4] * 90 + [5] * 60 + [6] * 98 + [2] * 100), 7)
    fold_into_bias(model, prior, 0.7)
    after = predict_probs(model, faces)
    np.testing.assert_allclose(after, rebalance(before, prior, 0.7), atol=2e-5)
    assert not np.allclose(after, before, atol=1e-3)   # the rare classes gained
    assert (after[:, 1] > before[:, 1]).all() and (after[:, 3] < before[:, 3]).all()


def test_class_prior_counts_every_class_and_stays_finite():
    prior = class_prior(np.array([0, 0, 0, 2]), 4)
    np.testing.assert_allclose(prior, [0.75, 1e-6, 0.25, 1e-6])
    assert np.isfinite(np.log(prior)).all()


def posterior_under(prior: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """What a model trained under `prior` outputs for faces of `labels`: a noisy likelihood times the prior."""
    rng = np.random.default_rng(seed)
    likelihood = np.exp(rng.normal(0, 1.0, (len(labels), len(prior))))
    likelihood[np.arange(len(labels)), labels] *= np.e
    post = likelihood * prior
    return post / post.sum(1, keepdims=True)


def test_choose_tau_undoes_a_skewed_prior_on_balanced_validation_faces():
    classes = FER2013_CLASSES
    prior = np.array([0.14, 0.015, 0.14, 0.25, 0.17, 0.11, 0.175])
    labels = np.repeat(np.arange(7), 300)   # balanced faces, as from a posed data set
    probs = posterior_under(prior, labels, seed=0)
    tau, scores = choose_tau(probs, labels, None, prior, classes)
    assert tau >= 0.6 and scores[tau] > scores[0.0] + 0.05
    recall_disgust = lambda p: (p.argmax(1)[labels == 1] == 1).mean()   # noqa: E731
    assert recall_disgust(probs) < 0.1 < 0.3 < recall_disgust(rebalance(probs, prior, tau))


def test_choose_tau_keeps_a_model_whose_faces_follow_its_prior():
    labels = np.repeat(np.arange(7), 100)
    perfect = np.eye(7)[labels] * 0.9 + 0.1 / 7
    tau, scores = choose_tau(perfect, labels, None, np.full(7, 1 / 7) * np.linspace(0.5, 1.5, 7), FER2013_CLASSES)
    assert tau == 0.0 and len(set(np.round(list(scores.values()), 6))) == 1   # a tie goes to no change


def test_mean_source_macro_f1_weighs_each_source_once():
    labels = np.array([0, 1] * 50 + [0, 1])
    probs = np.eye(7)[labels]
    probs[-2:] = np.eye(7)[[1, 0]]   # the small source: all wrong
    origins = np.array(["big"] * 100 + ["small"] * 2)
    assert mean_source_macro_f1(probs, labels, origins, FER2013_CLASSES) == pytest.approx(0.5)
    assert mean_source_macro_f1(probs, labels, None, FER2013_CLASSES) > 0.95


def test_fold_into_bias_refuses_a_model_without_a_class_layer():
    with pytest.raises(FerlabError, match="last layer is not a linear layer"):
        fold_into_bias(nn.Sequential(nn.Conv2d(1, 7, 3)), np.full(7, 1 / 7), 0.5)
    with pytest.raises(FerlabError, match="over 7 classes"):
        fold_into_bias(nn.Linear(4, 3), np.full(7, 1 / 7), 0.5)


def test_balance_for_run_reads_the_training_prior_and_scores_each_tau(make_toy_csv, tmp_path):
    cfg = TrainConfig(model="fernet_s", model_kwargs={"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1]},
                      data=str(make_toy_csv(140, 70, 14)), epochs=1, batch_size=64, optimizer="adam", lr=3e-3, seed=0)
    open_run(tmp_path / "run", cfg, resume=False)
    fit(cfg, tmp_path / "run", log=lambda *a: None)
    model, _ = load_model(str(tmp_path / "run"))
    balance = balance_for_run(tmp_path / "run", model)
    _, labels = synthetic_faces(224, seed=0)   # the toy CSV's faces: its first 140 rows are Training
    np.testing.assert_allclose(balance["prior"], np.bincount(labels[:140], minlength=7) / 140, atol=1e-6)
    assert balance["tau"] in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
    assert len(balance["val_mean_source_macro_f1"]) == 9 and json.dumps(balance)
    assert balance_for_run(tmp_path / "run", model, tau=0.3)["tau"] == 0.3
    np.testing.assert_allclose(training_prior(cfg), balance["prior"], atol=1e-6)
