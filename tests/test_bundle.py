"""Post-training as a stage: `ferlab bundle RUN --name NAME` ships a toy run as a bundled model
(float16 weights, model card, ONNX exports), with interpolation and the prior adjustment chosen
or given, and names a folder that is not a run in one line."""

import json

import numpy as np
import pytest

from ferlab.checkpoint import load_model
from ferlab.evaluate import predict_probs
from ferlab.posttrain.prior import rebalanced_prior
from ferlab.training.config import TrainConfig
from ferlab.training.run import fit, open_run
from synthetic import synthetic_faces


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def fine_tuned_run(make_toy_csv, fernet_weights, tmp_path_factory):
    """A one-epoch fernet_s run on toy faces that started from (--init) random fernet_s weights."""
    run = tmp_path_factory.mktemp("bundle") / "run"
    cfg = TrainConfig(model="fernet_s", data=str(make_toy_csv(140, 70, 28)), epochs=1, batch_size=64,
                      optimizer="adam", lr=3e-3, seed=0, init=str(fernet_weights))
    open_run(run, cfg, resume=False)
    fit(cfg, run, log=lambda *a: None)
    return run


def test_bundle_ships_weights_card_and_int8_export_of_an_interpolated_rebalanced_run(cli, fine_tuned_run, tmp_path):
    code, out, err = cli("bundle", fine_tuned_run, "--name", "toy", "--out", tmp_path, "--interpolate", "0.5",
                         "--balance-prior", "auto", "--int8")
    assert code == 0, err
    assert {p.name for p in tmp_path.iterdir()} == {"toy.safetensors", "toy.json", "toy-int8.onnx", "toy-int8.json"}
    card = json.loads((tmp_path / "toy.json").read_text())
    assert card["name"] == "toy" and card["model"] == "fernet_s" and card["training"]["epochs"] == 1
    assert card["interpolation"]["alpha"] == 0.5 and card["interpolation"]["selection"] == "given"
    assert card["prior_adjustment"]["selection"] == "mean over the run's sources of validation macro-F1"
    assert set(card["metrics"]["onnx"]) == {"opset", "privatetest_accuracy_fp32", "privatetest_accuracy_int8"}
    assert card["metrics"]["privatetest_tta_none"]["num_samples"] == 28   # the run's own FER2013 CSV, by default
    model, meta = load_model(str(tmp_path / "toy.safetensors"))
    assert meta["interpolation"]["alpha"] == 0.5 and meta["prior_adjustment"]["tau"] == card["prior_adjustment"]["tau"]
    # the class prior Recognizer.adapt starts from: the training faces', as far as the adjustment left it
    np.testing.assert_allclose(meta["class_prior"], rebalanced_prior(card["prior_adjustment"]["prior"],
                                                                     card["prior_adjustment"]["tau"]), atol=1e-5)
    assert meta["class_prior"] == card["class_prior"]
    int8, _ = load_model(str(tmp_path / "toy-int8.onnx"))
    faces = np.random.default_rng(0).integers(0, 256, (8, 48, 48), dtype=np.uint8)
    assert (predict_probs(int8, faces).argmax(1) == predict_probs(model, faces).argmax(1)).mean() >= 0.75


def test_bundle_without_int8_ships_the_weights_and_card_only(cli, fine_tuned_run, tmp_path):
    code, _, err = cli("bundle", fine_tuned_run, "--name", "plain", "--out", tmp_path)
    assert code == 0, err
    assert {p.name for p in tmp_path.iterdir()} == {"plain.safetensors", "plain.json"}
    card = json.loads((tmp_path / "plain.json").read_text())
    assert "interpolation" not in card and "prior_adjustment" not in card
    _, labels = synthetic_faces(140 + 70 + 28, seed=0)   # the toy CSV's faces: its first 140 rows are Training
    np.testing.assert_allclose(card["class_prior"], np.bincount(labels[:140], minlength=7) / 140, atol=1e-5)
    assert set(card["metrics"]["onnx"]) == {"opset", "privatetest_accuracy_fp32"}


def test_bundle_names_a_folder_that_is_not_a_run_in_one_line(cli, tmp_path):
    code, _, err = cli("bundle", tmp_path, "--name", "toy", "--out", tmp_path / "w")
    assert code == 2
    assert err.strip().splitlines() == [f"ferlab bundle: error: {tmp_path}: not a training run (no config.json)"]


def test_bundle_refuses_a_setting_that_is_neither_auto_nor_a_number(cli, fine_tuned_run, tmp_path):
    code, _, err = cli("bundle", fine_tuned_run, "--name", "toy", "--out", tmp_path, "--balance-prior", "most")
    assert code == 2
    assert err.strip() == "ferlab bundle: error: --balance-prior takes auto or a number, not 'most'"


def test_bundle_help_names_every_option(ferlab):
    shown = ferlab("bundle", "--help").stdout
    for flag in ("--name", "--out", "--data", "--interpolate", "--balance-prior", "--int8", "--start", "--cross-dataset"):
        assert flag in shown
