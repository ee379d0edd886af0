"""The model zoo: parameter counts pinned to the papers' tables, shapes, registry and `ferlab models`."""

import itertools
import math

import pytest
import torch
import torch.nn as nn

from ferlab.cli import main as ferlab_main
from ferlab.errors import FerlabError
from ferlab.models import SARMAH2023_SEARCH_SPACE, count_parameters, create_model, list_models
from ferlab.models.fernet import mix_style
from ferlab.models.keras_init import he_normal_

PAPER_MODELS = ["bah2022_basic", "bah2022_resnet", "li2023", "sarmah2023_5conv", "sarmah2023_8conv",
                "sarmah2023_base", "triwijoyo2021", "triwijoyo2021_nobn"]


def keras_layer_counts(model: nn.Module) -> list[int]:
    """Keras-style parameter count of every layer that has parameters, in definition order."""
    return [count_parameters(m, keras_style=True) for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))]


def output_shapes(model: nn.Module, modules: list[nn.Module], pre: bool = False) -> list[tuple]:
    """Shapes (without batch) of the given modules' outputs (or inputs, with pre) for one 48x48 image."""
    shapes, hooks = [], []
    for m in modules:
        if pre:
            hooks.append(m.register_forward_pre_hook(lambda m, inp: shapes.append(tuple(inp[0].shape[1:]))))
        else:
            hooks.append(m.register_forward_hook(lambda m, inp, out: shapes.append(tuple(out.shape[1:]))))
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 1, 48, 48))
    for h in hooks:
        h.remove()
    return shapes


# -- registry and every model ---------------------------------------------------------------------

def test_all_paper_models_registered():
    assert set(PAPER_MODELS) <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_train_and_eval(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(2, 1, 48, 48)
    model.train()
    out = model(x)
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_num_classes(name):
    model = create_model(name, num_classes=8).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 48, 48)).shape == (2, 8)


def test_unknown_model_and_bad_kwarg_raise_ferlab_error():
    with pytest.raises(FerlabError, match="unknown model"):
        create_model("no_such_model")
    with pytest.raises(FerlabError):
        create_model("triwijoyo2021", no_such_option=1)


def test_keras_defaults():
    model = create_model("triwijoyo2021")
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert bns and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(torch.all(m.bias == 0) for m in convs)
    conv = convs[2]  # glorot_uniform: within ±sqrt(6 / (fan_in + fan_out))
    limit = math.sqrt(6 / (conv.in_channels * 25 + conv.out_channels * 25))
    assert conv.weight.abs().max() <= limit
    torch.manual_seed(0)
    w = he_normal_(torch.empty(256, 128, 3, 3))  # Keras he_normal: truncated at 2σ, variance 2/fan_in
    assert abs(w.std().item() - math.sqrt(2 / (128 * 9))) < 0.02 * math.sqrt(2 / (128 * 9))
    assert w.abs().max() <= 2 * math.sqrt(2 / (128 * 9)) / 0.8796 + 1e-6


# -- triwijoyo2021, Table 1 -----------------------------------------------------------------------

def test_triwijoyo2021_table1():
    model = create_model("triwijoyo2021")
    # Table 1 rows 2-17 with parameters (block 3: the 3x3 counts of the parameter column).
    assert keras_layer_counts(model) == [1664, 102464, 256, 204928, 409728, 512, 295168, 590080, 1024,
                                         1179776, 512, 903]
    assert count_parameters(model, keras_style=True) == 2_787_015
    assert output_shapes(model, list(model.features)) == [(64, 24, 24), (128, 12, 12), (256, 6, 6)]
    assert output_shapes(model, [model.head[0]]) == [(9216,)]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2]


def test_triwijoyo2021_nobn():
    model = create_model("triwijoyo2021_nobn")
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
    assert count_parameters(model) == count_parameters(model, keras_style=True) == 2_787_015 - (256 + 512 + 1024 + 512)


# -- bah2022, Table 1 -----------------------------------------------------------------------------

BAH2022_TABLE1 = [  # every layer of Table 1 with parameters, in order
    416, 64, 6416, 64, 4640, 128, 9248, 128,  # conv2d_1..4 (two 5x5, then 3x3)
    9248, 128, 9248, 128,  # residual block 1
    18496, 256, 36928, 256, 73856, 512, 147584, 512,  # conv2d_7..10
    147584, 512, 147584, 512,  # residual block 2
    295168, 1024, 590080, 1024, 1180160, 2048, 2359808, 2048,  # conv2d_13..16
    2359808, 2048, 2359808, 2048,  # residual block 3
    3591,  # dense_1
]


def test_bah2022_resnet_table1():
    model = create_model("bah2022_resnet")
    assert keras_layer_counts(model) == BAH2022_TABLE1
    assert count_parameters(model, keras_style=True) == 9_773_111
    assert count_parameters(model) == 9_766_391  # trainable
    # Output shapes of Table 1's blocks (after each conv block's dropout, and each residual add).
    assert output_shapes(model, list(model.features)) == [
        (16, 48, 48), (32, 24, 24), (32, 24, 24), (64, 12, 12), (128, 6, 6), (128, 6, 6),
        (256, 3, 3), (512, 1, 1), (512, 1, 1)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5
    assert output_shapes(model, [pools[-1]], pre=True) == [(512, 3, 3)]  # before max_pooling2d_5
    assert output_shapes(model, [model.head[1]]) == [(512,)]  # global average pooling
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3] * 5 + [0.4]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m.kernel_size[0] for m in convs] == [5, 5] + [3] * 16
    assert all(m.padding[0] == m.kernel_size[0] // 2 for m in convs)


def test_bah2022_basic():
    model = create_model("bah2022_basic")
    assert count_parameters(model, keras_style=True) == 4_734_455
    assert count_parameters(model) == 4_730_423
    assert len([m for m in model.modules() if isinstance(m, nn.Conv2d)]) == 12


# -- sarmah2023 -----------------------------------------------------------------------------------

def test_sarmah2023_counts():
    assert count_parameters(create_model("sarmah2023_8conv"), keras_style=True) == 5_228_487  # the paper's count
    assert count_parameters(create_model("sarmah2023_5conv"), keras_style=True) == 4_452_103
    assert count_parameters(create_model("sarmah2023_base"), keras_style=True) == 4_478_727
    for name, n_conv, n_dense in [("sarmah2023_base", 4, 3), ("sarmah2023_5conv", 5, 2), ("sarmah2023_8conv", 8, 2)]:
        model = create_model(name)
        assert len([m for m in model.modules() if isinstance(m, nn.Conv2d)]) == n_conv
        assert len([m for m in model.modules() if isinstance(m, nn.Linear)]) == n_dense


def test_sarmah2023_search_space():
    assert SARMAH2023_SEARCH_SPACE == {"first_filters": (32, 256, 32), "max_filters": (64, 512, 64),
                                       "conv_dropout": (0.0, 0.5, 0.05), "dense_dropout": (0.0, 0.5, 0.05)}
    model = create_model("sarmah2023_8conv", first_filters=96, max_filters=192, conv_dropout=0.1, dense_dropout=0.35)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [96, 96, 192, 192, 192, 192, 192, 192]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.1] * 4 + [0.35]


@pytest.mark.parametrize("name", ["sarmah2023_5conv", "sarmah2023_8conv"])
def test_sarmah2023_search_space_corners_run(name):
    x = torch.rand(2, 1, 48, 48)
    ends = [(lo, hi) for lo, hi, _ in SARMAH2023_SEARCH_SPACE.values()]
    for values in itertools.product(*ends):
        kwargs = dict(zip(SARMAH2023_SEARCH_SPACE, values))
        model = create_model(name, **kwargs).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 7), kwargs
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first.out_channels == kwargs["first_filters"]
        assert all(m.out_channels <= kwargs["max_filters"] for m in model.modules() if isinstance(m, nn.Conv2d) and m is not first)


# -- li2023 ---------------------------------------------------------------------------------------

def test_li2023():
    model = create_model("li2023")
    assert keras_layer_counts(model) == [320, 18496, 6400 * 128 + 128, 903]
    assert output_shapes(model, [model.head[0]]) == [(6400,)]


# -- ferlab models --------------------------------------------------------------------------------

def test_cli_lists_every_model(ferlab):
    result = ferlab("models", timeout=120)
    for name in list_models():
        assert name in result.stdout
    assert "5,228,487" in result.stdout and "9,773,111" in result.stdout


def test_cli_summary(capsys):
    assert ferlab_main(["models", "--name", "triwijoyo2021"]) == 0
    out = capsys.readouterr().out
    assert "(64, 48, 48)" in out and "1,179,776" in out and "Total params (Keras-style): 2,787,015" in out
    assert ferlab_main(["models", "--name", "no_such_model"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_mixstyle_mixes_face_statistics_in_training_only():
    torch.manual_seed(0)
    plain, mixing = create_model("fernet_s", dropout=0.0), create_model("fernet_s", dropout=0.0, mixstyle=1.0)
    assert plain.state_dict().keys() == mixing.state_dict().keys()   # no weights: --init and exports unchanged
    mixing.load_state_dict(plain.state_dict())
    x = torch.rand(8, 1, 48, 48)
    for model in (plain, mixing):
        model.eval()
    assert torch.equal(plain(x), mixing(x))
    plain.train(), mixing.train()
    assert not torch.allclose(plain(x), mixing(x), atol=1e-4)
    # Faces with equal statistics have nothing to swap: the batch passes unchanged.
    same = torch.rand(1, 4, 12, 12).repeat(6, 1, 1, 1)
    assert torch.allclose(mix_style(same), same, atol=1e-5)
