"""ferlab's data layer: every loader returns a FaceDataset of uint8 48x48 faces, labels and split names.

`load_dataset(spec)` is the one entry point the CLI, training and evaluation use; it picks the
loader from the spec (a FER2013 CSV, an image-folder tree, or a FERGIT composition; see
data/load.py for the syntax). Modules: dataset (FaceDataset), fer2013 (CSV + FER+ votes),
folders (image trees), mix (several data sets as one), splits (random/stratified/subject splits,
subject k-fold), cache (.npz cache).
"""

from ferlab.data.dataset import FaceDataset
from ferlab.data.fer2013 import apply_ferplus, load_fer2013_csv
from ferlab.data.folders import load_image_folders
from ferlab.data.load import data_names, load_dataset, load_fergit, load_mix, load_run_data, load_with_splits
from ferlab.data.splits import (apply_random_split, apply_subject_fold, default_splits, fraction_mask, grouped_split,
                                stratified_split, subject_kfold)

__all__ = [
    "FaceDataset", "load_dataset", "load_fer2013_csv", "apply_ferplus", "load_image_folders", "load_fergit",
    "stratified_split", "subject_kfold", "apply_random_split", "apply_subject_fold", "default_splits", "fraction_mask", "grouped_split",
    "load_with_splits", "load_run_data", "load_mix", "data_names",
]
