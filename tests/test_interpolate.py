"""Weight interpolation (ferlab/posttrain/interpolate.py): the blend is exact, BatchNorm statistics
are recomputed for it, and alpha is chosen so that no source loses validation accuracy beyond noise."""

import pytest
import torch

from ferlab.checkpoint import load_model
from ferlab.errors import FerlabError
from ferlab.posttrain.interpolate import ALPHA_GRID, WeightLine, choose_alpha, interpolate, interpolate_run, keeps_accuracy
from ferlab.training.config import TrainConfig
from ferlab.training.run import fit, open_run


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_interpolate_blends_floats_and_keeps_counters():
    start = {"w": torch.zeros(3), "n": torch.tensor(5)}
    end = {"w": torch.tensor([2.0, 4.0, -2.0]), "n": torch.tensor(9)}
    assert torch.equal(interpolate(start, end, 0.0)["w"], start["w"])
    assert torch.equal(interpolate(start, end, 1.0)["w"], end["w"])
    half = interpolate(start, end, 0.25)
    assert torch.allclose(half["w"], torch.tensor([0.5, 1.0, -0.5])) and half["n"].item() == 9
    with pytest.raises(FerlabError, match="different architectures"):
        interpolate(start, {"w": end["w"]}, 0.5)


def score(accuracy, macro_f1, num_samples):
    return {"accuracy": accuracy, "macro_f1": macro_f1, "num_samples": num_samples}


def test_choose_alpha_keeps_every_source_within_noise_then_takes_the_best_mean_macro_f1():
    # half a standard error of 0.69 on 3,600 faces is 0.0039; of 0.80 on 50 faces 0.028
    start = {"fer2013": score(0.69, 0.66, 3600), "CK+48": score(0.80, 0.70, 50)}
    scores = {0.2: {"fer2013": score(0.695, 0.67, 3600), "CK+48": score(0.82, 0.72, 50)},
              0.4: {"fer2013": score(0.687, 0.67, 3600), "CK+48": score(0.86, 0.75, 50)},   # a loss within noise
              0.6: {"fer2013": score(0.685, 0.67, 3600), "CK+48": score(0.88, 0.80, 50)},   # best F1, FER2013 loses 0.5 pt
              0.5: {"fer2013": score(0.690, 0.67, 3600), "CK+48": score(0.78, 0.75, 50)},   # ties 0.4: the smaller alpha wins
              0.7: {"fer2013": score(0.700, 0.70, 3600), "CK+48": score(0.76, 0.80, 50)}}   # CK+48 loses 2 faces of 50
    assert choose_alpha(scores, start) == 0.4
    assert choose_alpha({a: scores[a] for a in (0.6, 0.7)}, start) is None
    assert keeps_accuracy(score(0.6862, 0, 3589), score(0.6913, 0, 3589)) is False   # 18 faces: more than noise
    assert keeps_accuracy(score(0.6879, 0, 3589), score(0.6913, 0, 3589)) is True    # 12 faces


def test_interpolate_run_moves_a_run_toward_its_start(make_toy_csv, fernet_weights, tmp_path):
    cfg = TrainConfig(model="fernet_s", data=str(make_toy_csv(140, 70, 14)), epochs=1, batch_size=64,
                      optimizer="adam", lr=3e-3, seed=0, init=str(fernet_weights))
    open_run(tmp_path / "run", cfg, resume=False)
    fit(cfg, tmp_path / "run", log=lambda *a: None)
    start = load_model(str(fernet_weights))[0].state_dict()
    end = {k: v.clone() for k, v in load_model(str(tmp_path / "run"))[0].state_dict().items()}
    model = load_model(str(tmp_path / "run"))[0]

    chosen = interpolate_run(tmp_path / "run", model, alpha=0.3)
    assert chosen["alpha"] == 0.3 and chosen["selection"] == "given" and chosen["bn_faces"] == 140
    moved = model.state_dict()
    conv = next(k for k, v in moved.items() if v.ndim == 4)
    torch.testing.assert_close(moved[conv], 0.7 * start[conv] + 0.3 * end[conv])
    mean = next(k for k in moved if k.endswith("running_mean"))   # recomputed, not blended
    assert not torch.allclose(moved[mean], 0.7 * start[mean] + 0.3 * end[mean])

    auto = interpolate_run(tmp_path / "run", load_model(str(tmp_path / "run"))[0])
    assert set(auto["val_scores"]) == {str(a) for a in ALPHA_GRID}
    assert auto["alpha"] in ALPHA_GRID
    val = auto["val_scores"][str(auto["alpha"])]
    assert all(keeps_accuracy(val[s], auto["val_start"][s]) for s in val)


def test_interpolate_run_needs_a_run_that_started_from_a_model(make_toy_csv, fernet_weights, tmp_path):
    cfg = TrainConfig(model="fernet_s", model_kwargs={"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1]},
                      data=str(make_toy_csv(140, 70, 14)), epochs=1, batch_size=64, seed=0)
    open_run(tmp_path / "run", cfg, resume=False)
    fit(cfg, tmp_path / "run", log=lambda *a: None)
    with pytest.raises(FerlabError, match="did not start from a model"):
        interpolate_run(tmp_path / "run", load_model(str(tmp_path / "run"))[0])
    with pytest.raises(FerlabError, match="not a training run"):
        interpolate_run(tmp_path, load_model(str(tmp_path / "run"))[0])
    line = WeightLine(tmp_path / "run", load_model(str(tmp_path / "run"))[0], start=str(fernet_weights))
    with pytest.raises(FerlabError, match="different architectures"):   # a narrower fernet_s than the start
        line.move_to(0.5)
