"""Class names of the data sets ferlab reads, and the maps between them.

FER2013's 7 classes (in its label order) are ferlab's canonical label space. FER+ adds contempt
(8 classes, plus the annotators' "unknown" and "not a face" columns); CK+ folders use their
own spellings and include contempt. Every loader maps names through `canonical_name`.

A *label space* is a tuple of class names that a data set's integer labels index into. ferlab
has three, named in LABEL_SPACES: "fer2013" (7 classes, the default), "ferplus8" (FER2013 order
plus contempt) and "ckplus" (CK+'s own 7 classes: no neutral, with contempt).
"""

from ferlab.errors import FerlabError

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Column order of the vote columns in FER+'s fer2013new.csv (Barsoum et al. 2016).
FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_VOTE_COLUMNS = FERPLUS_CLASSES + ("unknown", "NF")

# CK+ folder names (CK+48 layout), alphabetical as the data set ships them.
CKPLUS_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")

# Spellings found in folder-based data sets, mapped to one canonical name.
_ALIASES = {
    "angry": "angry", "anger": "angry",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral",
    "contempt": "contempt", "contemptuous": "contempt",
}


def canonical_name(name: str) -> str | None:
    """Canonical class name for a folder or column name, or None when ferlab does not know it."""
    return _ALIASES.get(name.strip().lower())


def fer2013_index(name: str) -> int | None:
    """Index in FER2013_CLASSES of a class name in any known spelling; None for contempt/unknown."""
    canonical = canonical_name(name)
    return FER2013_CLASSES.index(canonical) if canonical in FER2013_CLASSES else None


# FER+ column index -> FER2013 index (contempt has no FER2013 class).
FERPLUS_TO_FER2013 = {i: fer2013_index(name) for i, name in enumerate(FERPLUS_CLASSES)}

# Canonical 8-class FER+ label space in ferlab's naming (FER2013 order, then contempt).
FERPLUS8_CLASSES = FER2013_CLASSES + ("contempt",)

LABEL_SPACES = {"fer2013": FER2013_CLASSES, "ferplus8": FERPLUS8_CLASSES, "ckplus": CKPLUS_CLASSES}


def label_space(name: str) -> tuple:
    """The class names of a label space by name ("fer2013", "ferplus8", "ckplus")."""
    if name not in LABEL_SPACES:
        raise FerlabError(f"unknown label space {name!r} (known: {', '.join(LABEL_SPACES)})")
    return LABEL_SPACES[name]


def class_index(name: str, classes: tuple) -> int | None:
    """Index of a class name (any known spelling) in `classes` (any spelling), or None if absent.

    class_index("sadness", FER2013_CLASSES) == 4; class_index("sad", CKPLUS_CLASSES) == 5;
    class_index("contempt", FER2013_CLASSES) is None.
    """
    canonical = canonical_name(name)
    if canonical is None:
        return None
    for i, c in enumerate(classes):
        if canonical_name(c) == canonical:
            return i
    return None


def check_same_classes(names: list[str], cards: list[dict]) -> None:
    """An ensemble averages probabilities class by class: its members must name the same classes."""
    named = [(name, list(card["classes"])) for name, card in zip(names, cards) if card.get("classes")]
    for name, classes in named[1:]:
        if classes != named[0][1]:
            raise FerlabError(f"{name}: an ensemble needs the same classes, but its classes {classes} "
                              f"differ from {named[0][0]}'s {named[0][1]}")
