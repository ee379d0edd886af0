"""Class names and the maps between FER2013, FER+ and CK+ label spaces."""

import pytest

from ferlab.errors import FerlabError
from ferlab.labels import (CKPLUS_CLASSES, FER2013_CLASSES, FERPLUS8_CLASSES, FERPLUS_CLASSES, FERPLUS_TO_FER2013,
                           LABEL_SPACES, canonical_name, class_index, fer2013_index, label_space)


def test_fer2013_order_is_the_kaggle_label_order():
    assert FER2013_CLASSES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_ferplus8_is_fer2013_then_contempt():
    assert FERPLUS8_CLASSES[:7] == FER2013_CLASSES and FERPLUS8_CLASSES[7] == "contempt"


@pytest.mark.parametrize("name, canonical", [
    ("Anger", "angry"), ("angry", "angry"), (" sadness ", "sad"), ("HAPPINESS", "happy"), ("fearful", "fear"),
    ("surprised", "surprise"), ("contempt", "contempt"), ("neutral", "neutral"), ("unknown", None), ("NF", None),
])
def test_canonical_name(name, canonical):
    assert canonical_name(name) == canonical


def test_fer2013_index():
    assert fer2013_index("happiness") == 3
    assert fer2013_index("Sadness") == 4
    assert fer2013_index("contempt") is None
    assert fer2013_index("unknown") is None


def test_ferplus_columns_map_to_fer2013():
    assert [FERPLUS_TO_FER2013[i] for i in range(8)] == [6, 3, 5, 4, 0, 1, 2, None]
    assert FERPLUS_CLASSES[7] == "contempt"


def test_class_index_across_label_spaces():
    assert class_index("sadness", FER2013_CLASSES) == 4
    assert class_index("sad", CKPLUS_CLASSES) == CKPLUS_CLASSES.index("sadness")
    assert class_index("angry", CKPLUS_CLASSES) == 0
    assert class_index("contempt", CKPLUS_CLASSES) == 1
    assert class_index("contempt", FER2013_CLASSES) is None
    assert class_index("contempt", FERPLUS8_CLASSES) == 7
    assert class_index("neutral", CKPLUS_CLASSES) is None
    assert class_index("unknown", FERPLUS8_CLASSES) is None
    # every FER+ emotion column lands on a distinct ferlab 8-class index
    assert sorted(class_index(c, FERPLUS8_CLASSES) for c in FERPLUS_CLASSES) == list(range(8))


def test_label_spaces():
    assert label_space("fer2013") == FER2013_CLASSES
    assert label_space("ckplus") == CKPLUS_CLASSES
    assert set(LABEL_SPACES) == {"fer2013", "ferplus8", "ckplus"}
    with pytest.raises(FerlabError, match="unknown label space"):
        label_space("affectnet")
