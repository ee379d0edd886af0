"""Recognizer.adapt: BatchNorm statistics and the class prior re-estimated on a user's faces, without labels
(ferlab.inference.adapt)."""

import numpy as np
import pytest

from ferlab import Recognizer
from ferlab.inference.adapt import (MIN_FACES, PRIOR_SHIFT_FACES, adapt_onnx, blend_statistics, class_weights, members_prior,
                                   reweight, target_weight)
from ferlab.errors import FerlabError


def shifted_faces(n: int, seed: int = 0) -> np.ndarray:
    """Faces of another 'camera': smooth random patterns, darker and lower in contrast than FER2013."""
    rng = np.random.default_rng(seed)
    low = rng.random((n, 6, 6)).astype(np.float32)
    faces = np.stack([np.kron(f, np.ones((8, 8), np.float32)) for f in low])
    return (0.15 + 0.3 * faces).astype(np.float32)   # (n, 48, 48) in [0.15, 0.45]


def test_blended_statistics_are_those_of_the_pooled_faces():
    rng = np.random.default_rng(0)
    source, target = rng.normal(0, 1, (4000, 3)), rng.normal(2, 3, (4000, 3))
    mean, var = blend_statistics(source.mean(0), source.var(0), target.mean(0), target.var(0), 0.5)
    pooled = np.concatenate([source, target])
    np.testing.assert_allclose(mean, pooled.mean(0), rtol=1e-5)
    np.testing.assert_allclose(var, pooled.var(0), rtol=1e-5)
    m0, v0 = blend_statistics(source.mean(0), source.var(0), target.mean(0), target.var(0), 0.0)
    np.testing.assert_allclose(m0, source.mean(0), rtol=1e-6)
    np.testing.assert_allclose(v0, source.var(0), rtol=1e-6)


def test_more_faces_move_the_statistics_further():
    assert target_weight(0) == 0 and target_weight(10) < target_weight(100) < target_weight(10_000) < 1


def test_full_adaptation_gives_the_first_layer_the_statistics_of_the_faces():
    torch = pytest.importorskip("torch")
    import onnx
    from onnx import numpy_helper

    from ferlab.posttrain.export import to_onnx

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 7)).eval()
    faces = shifted_faces(64)[:, None]
    adapted = onnx.load_from_string(adapt_onnx(to_onnx(model), faces, weight=1.0))
    node = next(n for n in adapted.graph.node if n.op_type == "BatchNormalization")
    stats = {t.name: numpy_helper.to_array(t) for t in adapted.graph.initializer}
    with torch.no_grad():
        act = conv(torch.from_numpy(faces)).double()
    np.testing.assert_allclose(stats[node.input[3]], act.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[node.input[4]], act.var((0, 2, 3), unbiased=False).numpy(), rtol=1e-3, atol=1e-5)


def test_only_the_first_third_of_the_batchnorm_layers_move():
    torch = pytest.importorskip("torch")
    import onnx
    from onnx import numpy_helper

    from ferlab.posttrain.export import to_onnx

    torch.manual_seed(0)
    blocks = [torch.nn.Sequential(torch.nn.Conv2d(1 if i == 0 else 3, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU())
              for i in range(6)]
    model = torch.nn.Sequential(*blocks, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 7)).eval()
    for block in blocks:   # trained-looking statistics, so that no two layers share a tensor
        block[1].running_mean.uniform_(-1, 1)
        block[1].running_var.uniform_(0.5, 2)
    source = to_onnx(model)

    def means(model_bytes):
        proto = onnx.load_from_string(model_bytes)
        stats = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        return [stats[n.input[3]] for n in proto.graph.node if n.op_type == "BatchNormalization"]
    moved = [not np.allclose(a, b) for a, b in zip(means(source), means(adapt_onnx(source, shifted_faces(64)[:, None], 1.0)))]
    assert moved == [True, True, False, False, False, False]


TRAINING_PRIOR = np.array([0.10, 0.02, 0.10, 0.30, 0.12, 0.09, 0.27])   # as in FER2013 + web photos


def test_faces_predicted_at_the_training_prior_change_nothing():
    probs = np.tile(TRAINING_PRIOR, (40, 1))
    np.testing.assert_allclose(class_weights(probs, TRAINING_PRIOR), np.ones(7), rtol=1e-6)


def test_a_set_of_mostly_sad_faces_tips_a_borderline_face_to_sad():
    sad, neutral = 4, 6
    leaning_sad = np.full((63, 7), 0.02)
    leaning_sad[:, sad], leaning_sad[:, neutral] = 0.62, 0.28
    borderline = np.full((1, 7), 0.02)
    borderline[0, sad], borderline[0, neutral] = 0.42, 0.48
    probs = np.concatenate([leaning_sad, borderline])
    weights = class_weights(probs, TRAINING_PRIOR)
    happy = 3
    assert weights[sad] > weights[neutral] and weights[happy] < 1   # sad is more common here than in training, happy rarer
    assert reweight(borderline, weights).argmax() == sad
    np.testing.assert_allclose(reweight(probs, weights).sum(1), 1, rtol=1e-6)


def test_more_faces_move_the_class_prior_further():
    probs = np.tile(np.eye(7)[4] * 0.8 + 0.2 / 7, (256, 1))   # every face leaning sad
    few, many = class_weights(probs[:16], TRAINING_PRIOR), class_weights(probs, TRAINING_PRIOR)
    assert 1 < few[4] < many[4]
    expected = (16 * probs[0] + PRIOR_SHIFT_FACES * TRAINING_PRIOR) / (16 + PRIOR_SHIFT_FACES) / TRAINING_PRIOR
    np.testing.assert_allclose(few, expected, rtol=1e-5)


def test_an_ensemble_starts_from_its_members_mean_prior_and_needs_every_members():
    other = np.full(7, 1 / 7)
    np.testing.assert_allclose(members_prior([{"class_prior": list(TRAINING_PRIOR)}, {"class_prior": list(other)}], 7),
                               (TRAINING_PRIOR + other) / 2)
    assert members_prior([{"class_prior": list(TRAINING_PRIOR)}, {}], 7) is None
    assert members_prior([{"class_prior": [0.5, 0.5]}], 7) is None   # another label space


def test_adapt_changes_predictions_and_reset_restores_them():
    rec = Recognizer(backend="onnx")
    faces = shifted_faces(64)
    before = rec.probabilities(faces)
    assert rec.adapt_faces(faces) is rec
    assert {k: rec.adaptation[k] for k in ("faces", "weight")} == {"faces": 64, "weight": round(target_weight(64), 4)}
    adapted = rec.probabilities(faces)
    assert np.abs(adapted - before).max() > 0.01
    np.testing.assert_array_equal(rec.reset().probabilities(faces), before)
    assert rec.adaptation is None


def test_an_adapted_recognizer_averages_each_face_with_its_mirror():
    """tta "auto" (the default): one view until adapt, each face and its mirror once adapted (the class
    prior estimated so too), one view again after reset; an explicit tta is kept either way."""
    faces = shifted_faces(64)
    auto, flip, single = (Recognizer(backend="onnx", tta=t) for t in ("auto", "flip", "none"))
    assert auto.tta == "auto" and auto.active_tta == "none"
    np.testing.assert_array_equal(auto.probabilities(faces), single.probabilities(faces))
    for rec in (auto, flip, single):
        rec.adapt_faces(faces)
    assert (auto.active_tta, single.active_tta) == ("flip", "none")
    np.testing.assert_allclose(auto.probabilities(faces), flip.probabilities(faces), atol=1e-6)
    assert auto.adaptation["class_prior"] == flip.adaptation["class_prior"] != single.adaptation["class_prior"]
    assert np.abs(auto.probabilities(faces) - single.probabilities(faces)).max() > 1e-3
    assert auto.reset().active_tta == "none"


def test_adapt_estimates_the_prior_of_the_faces_from_the_models_own_probabilities():
    """The bundled default carries its training prior; the faces' prior is the mean of what the
    BatchNorm-adapted model says about them, blended with the training prior as PRIOR_SHIFT_FACES faces."""
    rec = Recognizer(backend="onnx")
    training_prior = np.array(rec.card["class_prior"])
    faces = shifted_faces(64)
    faces_prior = np.array(list(rec.adapt_faces(faces).adaptation["class_prior"].values()))
    assert list(rec.adaptation["class_prior"]) == list(rec.classes)
    reweighted = rec.probabilities(faces)
    unweighted = reweighted / (faces_prior / training_prior)   # undo the re-weighting
    unweighted /= unweighted.sum(1, keepdims=True)
    expected = (unweighted.sum(0) + PRIOR_SHIFT_FACES * training_prior) / (64 + PRIOR_SHIFT_FACES)
    np.testing.assert_allclose(faces_prior, expected, atol=2e-4)
    assert np.abs(faces_prior - training_prior).max() > 0.01
    rec.adapt_faces(faces, prior=False)   # the BatchNorm step alone
    assert rec.adaptation["class_prior"] is None
    np.testing.assert_allclose(rec.probabilities(faces), unweighted, atol=3e-4)   # the prior is shown to 4 decimals


def test_a_model_without_a_class_prior_adapts_its_batchnorm_only(fernet_weights):
    rec = Recognizer(fernet_weights, backend="onnx")
    assert "class_prior" not in rec.card
    rec.adapt_faces(shifted_faces(32))
    assert rec.adaptation["class_prior"] is None


def test_adapt_refuses_too_few_faces():
    with pytest.raises(FerlabError, match=f"3 face\\(s\\) found; at least {MIN_FACES}"):
        Recognizer(backend="onnx").adapt_faces(shifted_faces(3))


def test_adapt_finds_the_faces_in_whole_photos(astronaut):
    rec = Recognizer(backend="onnx")
    with pytest.raises(FerlabError, match="1 face\\(s\\) found"):
        rec.adapt([astronaut])   # one photo, one face: too few to estimate from
    rec.adapt([astronaut] * MIN_FACES)
    assert rec.adaptation["faces"] == MIN_FACES


def test_int8_exports_cannot_be_adapted():
    with pytest.raises(FerlabError, match="default-int8: the model has no BatchNorm layers"):
        Recognizer("default-int8").adapt_faces(shifted_faces(MIN_FACES))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, astronaut):
    """MIN_FACES small photos of the astronaut, each a little brighter than the last."""
    import cv2

    folder = tmp_path_factory.mktemp("adapt_photos")
    small = cv2.cvtColor(cv2.resize(astronaut, (160, 160), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    for i in range(MIN_FACES):
        cv2.imwrite(str(folder / f"p{i:02d}.png"), cv2.convertScaleAbs(small, alpha=1.0, beta=i))
    return folder


def test_predict_adapt_adapts_on_the_folder_then_recognises_it(cli, photo_folder, fernet_weights):
    code, out, err = cli("predict", photo_folder, "--model", fernet_weights, "--adapt")
    assert code == 0, err
    assert f"adapted to {MIN_FACES} faces" in err
    assert len(out.splitlines()) == MIN_FACES


def test_predict_adapt_on_too_few_faces_fails_in_one_line(cli, photo_folder, fernet_weights):
    code, out, err = cli("predict", photo_folder / "p00.png", "--model", fernet_weights, "--adapt")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "at least" in err and "Traceback" not in err


def test_video_adapt_adapts_on_sampled_frames(cli, astronaut, fernet_weights, tmp_path):
    import cv2

    face = cv2.cvtColor(cv2.resize(astronaut, (120, 120)), cv2.COLOR_RGB2BGR)
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for i in range(MIN_FACES + 4):
        frame = np.full((120, 160, 3), 90, np.uint8)
        frame[:, i:i + 120] = face
        writer.write(frame)
    writer.release()
    code, out, err = cli("video", clip, "--model", fernet_weights, "--adapt", "--csv", tmp_path / "t.csv")
    assert code == 0, err
    assert f"adapted to {MIN_FACES + 4} faces" in err
