"""What a training run is: TrainConfig, every option of `ferlab train` with its help text and checks,
and the two ways back from a run directory, its settings (run_config) and the command that
recreates it (train_command). Post-training, tune and reproduce read runs through this module
without loading the training loop."""

import json
import os
import shlex
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ferlab.training.augment import AUGMENT_PRESETS
from ferlab.data import data_names
from ferlab.data.specs import map_spec_paths
from ferlab.data.splits import check_fold
from ferlab.bundled import read_json_object
from ferlab.errors import FerlabError
from ferlab.training.recipes import get_recipe

# The allowed values of the config's string options: checked in TrainConfig, listed by --help.
CHOICES = {"targets": ("hard", "soft"), "select": ("val_acc", "last"), "optimizer": ("adam", "sgd", "nadam", "adamw"),
           "schedule": ("constant", "plateau", "cosine", "onecycle"), "plateau_monitor": ("val_acc", "val_loss"),
           "early_stop_monitor": ("val_acc", "val_loss"), "class_weights": ("none", "balanced"),
           "augment": tuple(AUGMENT_PRESETS), "teacher_tta": ("none", "flip"), "amp": ("auto", "bf16", "fp32")}


def option(default, help: str):
    """A TrainConfig field whose help text `ferlab train --help` shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    model: str = option("fernet_s", "model name (see `ferlab models`)")
    data: str | list = option("", "data set: FER2013 CSV, image folder, ckplus:DIR or fergit:CSV,DIR; given several "
                                  "times, a mix of data sets in FER2013's 7 classes, each split on its own (data/mix.py)")
    ferplus: str | None = option(None, "FER+ votes file (fer2013new.csv): train on FER+ labels (in a mix: FER+ vote "
                                       "distributions over the 7 classes for the FER2013 rows, used with --targets soft)")
    targets: str = option("hard", "hard: majority labels; soft: FER+ vote distributions (needs --ferplus)")
    soft_weight: float = option(1.0, "with --targets soft: the vote distributions' share of each target, the rest "
                                     "on the row's own label (1: votes only)")
    source_weights: str = option("", "in a mix: NAME=W,... multiplies the chance each face of source NAME is drawn "
                                     "(faces are then drawn with replacement); unnamed sources 1")
    source_batches: bool = option(False, "in a mix: every batch holds faces of one source, so that BatchNorm normalises "
                                         "each source by its own statistics in training, as Recognizer.adapt does at test time")
    logit_adjust: float = option(0.0, "tau of logit-adjusted loss (Menon et al. 2021): the loss sees logits + "
                                      "tau * log(class prior of the training faces); predictions do not; 0: off")
    model_kwargs: dict = field(default_factory=dict)
    train_splits: str = option("auto", "comma-separated split names; auto: Training / PublicTest / PrivateTest")
    val_splits: str = option("auto", "split(s) validated on every epoch; auto: see --train-splits")
    test_splits: str = option("auto", "split(s) evaluated every epoch for the log only, never for selection")
    select: str = option("val_acc", "the epoch best.safetensors holds: the highest val_acc, or the last (a fixed "
                                    "schedule, e.g. when the validation split is also trained on)")
    epochs: int = option(30, "passes over the training split")
    batch_size: int = option(64, "faces per optimizer step")
    optimizer: str = option("adam", "optimizer (sgd: with Nesterov momentum)")
    lr: float = option(1e-3, "learning rate (the peak of onecycle and cosine)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "weight decay")
    schedule: str = option("constant", "learning-rate schedule")
    warmup_epochs: float = option(0.0, "cosine only: linear warm-up epochs")
    plateau_monitor: str = option("val_acc", "plateau: the metric it watches")
    plateau_factor: float = option(0.1, "plateau: LR multiplier")
    plateau_patience: int = option(10, "plateau: epochs without improvement before the cut")
    min_lr: float = option(0.0, "plateau: the lowest LR")
    early_stop_monitor: str = option("val_acc", "early stopping: the metric it watches")
    early_stop_patience: int = option(0, "stop after this many epochs without improvement; 0: off")
    train_fraction: float = option(1.0, "train on a seeded, class-stratified fraction of the train split")
    folds: int = option(0, "subject-independent k-fold split, k >= 3 (needs subject ids, e.g. CK+); 0: off")
    fold: int = option(0, "with --folds: this fold tests, the next one validates, the others train")
    class_weights: str = option("none", "balanced: loss weights inverse to class frequency")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    augment: str = option("none", "augmentation preset (ferlab.training.augment)")
    mixup: float = option(0.0, "Beta(a, a) alpha of mixup; 0: off")
    cutmix: float = option(0.0, "Beta(a, a) alpha of CutMix; 0: off (both on: one of them per batch)")
    ema: float = option(0.0, "decay of an exponential moving average of weights (evaluated and saved); 0: off")
    average_from: float = option(0.0, "from this fraction of the epochs on, also keep a uniform average of the "
                                      "evaluated weights (the EMA's, if on) of each epoch's end, a candidate for "
                                      "best.safetensors like every epoch (stochastic weight averaging); 0: off")
    recalibrate_bn: int = option(0, "before each evaluation, recompute BatchNorm statistics on this many training "
                                    "faces with dropout off (ferlab.evaluate.recalibrate_batchnorm); 0: off")
    init: str = option("", "fine-tuning: start from a trained model (run dir, weights, bundled name)")
    teacher: str = option("", "knowledge distillation: comma-separated models (run dirs, weights, bundled names, "
                              ".onnx) whose mean probabilities the student also learns")
    teacher_tta: str = option("none", "the teacher's view of each training batch (ferlab.inference.tta)")
    distill_weight: float = option(0.5, "w in loss = (1 - w) * CE(labels) + w * T^2 * KL(teacher || student)")
    distill_temperature: float = option(4.0, "T: both distributions softened by logits / T")
    amp: str = option("auto", "precision; auto: bf16 where the device supports it (recent CPUs, Ampere+ GPUs), else fp32")
    channels_last: bool = option(True, "channels_last memory layout (faster on CPUs and GPUs)")
    deterministic: bool = option(False, "deterministic kernels (cuDNN, cuBLAS): a resumed run ends exactly as an "
                                        "uninterrupted one on CUDA too (on a CPU it always does); slower on GPUs")
    compile: bool = option(False, "torch.compile the model for training (GPUs; compiling takes a while at the start)")
    seed: int = option(0, "seed of initialisation, data order, augmentation and splits")
    recipe: str | None = option(None, "a paper's protocol (see `ferlab recipes`)")

    def __post_init__(self):
        if isinstance(self.data, (list, tuple)):
            self.data = list(self.data) if len(self.data) > 1 else (self.data[0] if self.data else "")
        # Data files by absolute path, so the run's config.json works from any folder (ferlab evaluate RUN).
        self.data = absolute_data(self.data)
        self.ferplus = absolute_spec(self.ferplus) if self.ferplus else self.ferplus
        if self.source_weights:
            parse_source_weights(self.source_weights)
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise FerlabError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 < self.train_fraction <= 1:
            raise FerlabError("--epochs and --batch-size must be >= 1, --lr > 0 and --train-fraction in (0, 1]")
        if self.folds or self.fold:
            check_fold(self.folds, self.fold)
        if self.source_batches and self.source_weights:
            raise FerlabError("--source-batches draws every face once an epoch: it does not combine with --source-weights")
        if self.recalibrate_bn < 0:
            raise FerlabError("--recalibrate-bn is a number of training faces: >= 0 (0: off)")
        if not 0 <= self.average_from < 1:
            raise FerlabError("--average-from is a fraction of the epochs: in [0, 1) (0: off)")
        if self.mixup < 0 or self.cutmix < 0:
            raise FerlabError("--mixup and --cutmix are Beta alphas: >= 0 (0: off)")
        if not 0 <= self.soft_weight <= 1:
            raise FerlabError("--soft-weight is the votes' share of each target: in [0, 1]")
        if self.teacher and not (0 < self.distill_weight <= 1 and self.distill_temperature > 0):
            raise FerlabError("with --teacher: --distill-weight in (0, 1] and --distill-temperature > 0")


def absolute_spec(spec: str) -> str:
    """A data spec with its path part(s) made absolute: fer.csv, ckplus:DIR, fergit:CSV,DIR."""
    return map_spec_paths(spec, os.path.abspath)


def absolute_data(data: str | list) -> str | list:
    """--data (one spec or a list of them) with every path absolute."""
    return [absolute_spec(s) for s in data] if isinstance(data, list) else absolute_spec(data)


def shown_spec(spec: str) -> str:
    """A data spec as printed: its paths relative to the working folder when they lie inside it."""
    def rel(path: str) -> str:
        relative = os.path.relpath(path) if os.path.isabs(path) else path
        return path if relative.startswith("..") else relative
    return map_spec_paths(spec, rel)


def shown_setting(key: str, value) -> str:
    """A config value in a message: data files relative to the working folder (see shown_spec)."""
    if key in ("data", "ferplus") and value:
        value = [shown_spec(v) for v in value] if isinstance(value, list) else shown_spec(value)
    return repr(value)


def parse_source_weights(text: str) -> dict[str, float]:
    """--source-weights NAME=W,... -> {name: weight}."""
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.rpartition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            name = ""
        if not sep or not name or weights[name] < 0:
            raise FerlabError(f"--source-weights takes NAME=W,... with weights >= 0, not {item!r}")
    return weights


def normalized_config(saved: dict) -> dict:
    """A saved config.json as TrainConfig would write it today (fields added since take their defaults)."""
    try:
        return json.loads(json.dumps(asdict(TrainConfig(**saved))))
    except (TypeError, FerlabError):
        return saved


def run_config(run: Path) -> TrainConfig:
    """The TrainConfig a run directory was trained with (its config.json, checked: see saved_config)."""
    return config_from_file(saved_config(run), Path(run) / "config.json")


def saved_config(run: Path) -> dict:
    """A run directory's config.json as a dict of settings, checked against TrainConfig's fields:
    FerlabError naming the file (and the field) when it is missing, not JSON, not an object, or
    holds an unknown setting or a value of the wrong type (a hand-edited file)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FerlabError(f"{run}: not a training run (no config.json)")
    saved = read_json_object(path, "the run's settings file")
    kinds = {f.name: typing.get_args(f.type) or (f.type,) for f in fields(TrainConfig)}
    for key, value in saved.items():
        if key not in kinds:
            raise FerlabError(f"{path}: unknown setting {key!r} (not an option of `ferlab train`)")
        if not any(json_type_fits(value, kind) for kind in kinds[key]):
            raise FerlabError(f"{path}: {key} must be {' or '.join(JSON_TYPE_NAMES[k] for k in kinds[key])}, not {value!r}")
    return saved


# How a config.json value of each TrainConfig field type is named in an error.
JSON_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object",
                   list: "a list of strings", type(None): "null"}


def json_type_fits(value, kind: type) -> bool:
    """Whether a JSON value can be a TrainConfig field of type `kind` (an integer is a float; true is no number)."""
    if isinstance(value, bool) and kind is not bool:
        return False
    if kind is float:
        return isinstance(value, (int, float))
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)


def config_from_file(settings: dict, path: Path) -> TrainConfig:
    """TrainConfig(**settings) of a run's config.json (see saved_config), its checks naming the file."""
    try:
        return TrainConfig(**settings)
    except FerlabError as e:
        raise FerlabError(f"{path}: {e}") from None


def train_command(config: dict) -> str:
    """The `ferlab train` command that recreates a run: its recipe plus every setting it overrode
    (data files by name)."""
    base = asdict(TrainConfig())
    words = ["ferlab", "train"]
    if config.get("recipe"):
        base.update(get_recipe(config["recipe"]))
        words += ["--recipe", config["recipe"]]
    for key, value in config.items():
        if key in ("data", "recipe") or key not in base or value == base[key]:
            continue
        flag = key.replace("_", "-")
        if key == "ferplus":   # data files by name, as --data: where they live differs per machine
            value = Path(value).name
        if isinstance(value, bool):
            words.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            words += [f"--{flag}", json.dumps(value) if isinstance(value, dict) else str(value)]
    data = config["data"] if isinstance(config["data"], list) else [config["data"]]
    return shlex.join(words + [word for spec in data for word in ("--data", data_names(spec))])
