"""Batched augmentation and the metrics behind the reports."""

import numpy as np
import pytest
import torch

from ferlab.training.augment import AUGMENT_PRESETS, AugmentConfig, apply_augment, mix_batch, sample_params
from ferlab.metrics import classification_report, confusion_matrix, report_markdown
import ferlab.metrics


def batch(n=16):
    x = torch.zeros(n, 1, 48, 48)
    x[:, :, 10:20, 5:15] = 1.0  # a bright square left of centre
    return x


def test_identity_preset_returns_input():
    x = batch()
    params = sample_params(AUGMENT_PRESETS["none"], len(x), torch.Generator().manual_seed(0))
    assert apply_augment(AUGMENT_PRESETS["none"], x, params) is x


def test_flip_mirrors_exactly_the_chosen_images():
    cfg = AugmentConfig(flip=True)
    x = batch(64)
    p = sample_params(cfg, 64, torch.Generator().manual_seed(0))
    y = apply_augment(cfg, x, p)
    assert 10 < int(p["flip"].sum()) < 54
    assert torch.equal(y[p["flip"]], x[p["flip"]].flip(3))
    assert torch.equal(y[~p["flip"]], x[~p["flip"]])


def test_affine_moves_content_but_keeps_range_and_shape():
    cfg = AugmentConfig(rotation=10, shift=0.1, zoom=0.1, brightness=0.2)
    x = batch(32)
    y = apply_augment(cfg, x, sample_params(cfg, 32, torch.Generator().manual_seed(1)))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x)
    # Mass of the square stays roughly the same under small zoom/rotation (no blow-ups).
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=0.5)


def test_same_generator_state_same_augmentation():
    cfg = AUGMENT_PRESETS["fernet"]
    x = batch(8)
    a = apply_augment(cfg, x, sample_params(cfg, 8, torch.Generator().manual_seed(3)))
    b = apply_augment(cfg, x, sample_params(cfg, 8, torch.Generator().manual_seed(3)))
    assert torch.equal(a, b)


def test_erasing_blanks_a_rectangle():
    cfg = AugmentConfig(erasing=1.0)
    x = torch.rand(8, 1, 48, 48)
    y = apply_augment(cfg, x, sample_params(cfg, 8, torch.Generator().manual_seed(0)))
    erased = (y == 0.5).float().mean((1, 2, 3))
    assert ((erased > 0.01) & (erased < 0.3)).all()


def test_mixup_blends_each_image_with_its_partner():
    x = torch.rand(8, 1, 48, 48)
    mixed, lam = mix_batch(x, 0.4, 0.0, torch.Generator().manual_seed(0))
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0))
    again, lam2 = mix_batch(x, 0.4, 0.0, torch.Generator().manual_seed(0))
    assert lam2 == lam and torch.equal(again, mixed)


def test_cutmix_pastes_a_box_whose_area_is_one_minus_lam():
    x = torch.zeros(4, 1, 48, 48)
    x[2:] = 1.0  # images 0-1 black, 2-3 white: pasted pixels are the partner's colour
    areas = []
    for seed in range(20):
        mixed, lam = mix_batch(x, 0.0, 1.0, torch.Generator().manual_seed(seed))
        pasted = (mixed[0] == 1).float().mean().item()  # image 0's partner is image 3 (white)
        assert pasted == pytest.approx(1 - lam, abs=1e-6)
        assert torch.equal(mixed[0] == 1, mixed[3] == 0)  # the same box, the other way round
        areas.append(pasted)
    assert min(areas) < 0.2 and max(areas) > 0.5  # box sizes vary with lam


def test_both_mixes_alternate_per_batch():
    x = torch.zeros(4, 1, 48, 48)
    x[2:] = 1.0
    kinds = set()
    for seed in range(20):
        mixed, _ = mix_batch(x, 0.4, 1.0, torch.Generator().manual_seed(seed))
        kinds.add("cutmix" if set(mixed[0].unique().tolist()) <= {0.0, 1.0} else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_confusion_matrix_and_report():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["b"]["recall"] == 1.0
    assert r["per_class"]["c"]["f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert r["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    md = report_markdown(r, "toy")
    assert "| b | 0.67 | 1.00 | 0.80 | 2 |" in md


def test_summary_keeps_only_the_classes_with_faces():
    from ferlab.metrics import summary

    # CK+-like rows: class "c" has no faces, so it has no recall and does not drag macro-F1 down
    s = summary(np.array([0, 0, 0, 1]), np.array([0, 0, 2, 1]), ["a", "b", "c"])
    assert s == {"accuracy": 0.75, "macro_f1": round(np.mean([0.8, 1.0]), 4), "num_samples": 4,
                 "recall": {"a": 0.67, "b": 1.0}}


def test_first_reached_counts_minutes_up_to_the_first_epoch_at_each_threshold():
    from ferlab.metrics import first_reached

    rows = [{"epoch": "1", "time_s": "60", "test_acc": "0.5"}, {"epoch": "2", "time_s": "120", "test_acc": "0.71"},
            {"epoch": "3", "time_s": "60", "test_acc": "0.69"}, {"epoch": "4", "time_s": "60", "test_acc": ""}]
    reached = first_reached(rows, (0.5, 0.7, 0.72))
    assert reached == {0.5: (1, 1.0), 0.7: (2, 3.0)}


def test_curves_have_integer_epoch_ticks(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(ferlab.metrics, "_savefig", lambda fig, path: figures.append(fig))
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_acc": e / 4, "val_acc": e / 5} for e in (1, 2, 3)]
    ferlab.metrics.plot_curves(rows, tmp_path / "curves.png")
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
