"""`ferlab evaluate`'s test-time augmentation (ferlab.inference.tta) and ensembles, without training."""

import numpy as np
import pytest
import torch

from ferlab.checkpoint import load_model
from ferlab.errors import FerlabError
from ferlab.training.batchnorm import recalibrate_batchnorm
from ferlab.evaluate import evaluate_models, predict_probs
from ferlab.inference.tta import TTA_MODES, tta_probs, tta_views
from synthetic import synthetic_faces

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tta_views():
    x = torch.rand(3, 1, 48, 48)
    assert TTA_MODES == ("none", "flip", "tencrop")
    assert [len(tta_views(x, tta)) for tta in TTA_MODES] == [1, 2, 10]
    none, (same, mirror) = tta_views(x, "none"), tta_views(x, "flip")
    assert none[0] is x and torch.equal(same, x) and torch.equal(mirror, x.flip(3))
    crops = tta_views(x, "tencrop")
    assert all(v.shape == x.shape for v in crops)
    assert all(torch.equal(crops[i + 1], crops[i].flip(3)) for i in range(0, 10, 2))  # each crop, then its mirror
    flat = torch.full((1, 1, 48, 48), 0.25)
    assert all(torch.allclose(v, flat) for v in tta_views(flat, "tencrop"))  # resizing keeps a flat face flat
    with pytest.raises(FerlabError, match="unknown tta 'rotate'"):
        tta_views(x, "rotate")


def test_tta_probs_averages_softmax_over_views():
    x = torch.rand(4, 1, 48, 48)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
    expected = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
    torch.testing.assert_close(tta_probs(model, x, "flip"), expected)


def test_ensemble_is_the_mean_of_its_members(fernet_weights, other_weights):
    faces = synthetic_faces(10, seed=7)[0]
    members = [predict_probs(load_model(str(w))[0], faces, tta="flip") for w in (fernet_weights, other_weights)]
    probs, cards = evaluate_models([str(fernet_weights), str(other_weights)], faces, tta="flip")
    assert len(cards) == 2 and probs.shape == (10, 7)
    np.testing.assert_allclose(probs, (members[0] + members[1]) / 2, atol=1e-5)


def test_ensemble_with_other_classes_is_refused(fernet_weights, ferplus8_weights):
    faces = synthetic_faces(2)[0]
    with pytest.raises(FerlabError, match=r"fernet_s_ferplus8\.safetensors: an ensemble needs the same classes") as e:
        evaluate_models([str(fernet_weights), str(ferplus8_weights)], faces)
    assert "\n" not in str(e.value)


def test_unknown_tta_is_refused(fernet_weights):
    model, _ = load_model(str(fernet_weights))
    with pytest.raises(FerlabError, match="unknown tta 'rotate'"):
        predict_probs(model, synthetic_faces(2)[0], tta="rotate")


def test_recalibrated_batchnorm_holds_the_statistics_eval_mode_sees():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 4, 3)
    model = torch.nn.Sequential(conv, torch.nn.Dropout(0.5), torch.nn.BatchNorm2d(4, momentum=0.01), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 46 * 46, 7))
    model.train()
    model(torch.rand(8, 1, 48, 48))   # training-mode statistics, under dropout
    faces = synthetic_faces(128, seed=3)[0]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert recalibrate_batchnorm(model, faces, batch_size=64) == 1
    with torch.no_grad():   # the BN input with dropout off, per batch of 64: mean of batch means and unbiased variances
        batches = [conv(torch.from_numpy(faces[i:i + 64]).float().div(255).unsqueeze(1)) for i in (0, 64)]
    bn = model[2]
    torch.testing.assert_close(bn.running_mean, sum(b.mean((0, 2, 3)) for b in batches) / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, sum(b.var((0, 2, 3)) for b in batches) / 2, rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.01 and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())   # learned weights untouched
    assert recalibrate_batchnorm(torch.nn.Linear(3, 2), faces) == 0
