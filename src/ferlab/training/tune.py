"""`ferlab tune`: sarmah2023's hyperparameter search (section 3.1) with Optuna, resumable and
shared by any number of worker processes.

The search space is `SARMAH2023_SEARCH_SPACE` (first-layer filters 32-256 step 32, maximum
filters 64-512 step 64, conv and dense dropout 0-0.5 step 0.05) over the 5-conv or 8-conv family
(`--family`). Defaults are the paper's budget: random search, 100 trials of 20 epochs each, Adam,
batch 32 (learning rate not stated: Keras' default 1e-3), no augmentation (the paper names it only
for the final training), trained on Training and scored on PublicTest. A trial's value is its
best validation accuracy over the epochs, as Keras Tuner scores a trial. `--sampler tpe
--pruner median` is the faster alternative (the median pruner sees every epoch's accuracy).

Every trial is a `ferlab train` run directory under `--out` (`trial-0007/`), so the per-trial
curves and weights are there to inspect. The study lives in `--storage` (any SQLAlchemy URL;
default `sqlite:///tune.db`):

- `--trials N` is a target for the whole study: every worker stops once the study holds N
  finished (complete or pruned) trials. Re-running the command continues a study, raising
  `--trials` extends it.
- Workers share one study without losing or duplicating trials: each records a heartbeat; a
  trial whose worker died (killed, machine lost) goes stale after 2 x `--heartbeat` seconds, is
  marked FAIL and re-queued with the same parameters, and its retry resumes the dead trial's
  run directory from its last finished epoch. Workers on one SQLite file also take a file lock
  (`tune.db.lock` beside it) while they claim a trial, so N is never overshot; with a server
  database, a trial that arrives past the target is marked FAIL ("surplus") before it trains.
- Trial parameters depend only on `--seed` and the trial number, so two workers never draw the
  same parameters and a study is reproducible.

At the end: a table of the best trials and `best.json` (parameters, model kwargs, run directory)
in `--out`. The study's settings (family, data, epochs, ...) are stored with it; resuming with
different settings is refused.
"""

import argparse
import csv
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ferlab.atomic import atomic_write_text
from ferlab.data import load_dataset, load_run_data
from ferlab.errors import FerlabError
from ferlab.models import count_parameters, create_model
from ferlab.models.sarmah2023 import SARMAH2023_SEARCH_SPACE
from ferlab.training.config import TrainConfig
from ferlab.training.run import fit, open_run
from ferlab.training.timing import duration, measure_epoch_seconds
from ferlab.training.tunestore import StudyLock, make_storage

FAMILIES = ("5conv", "8conv")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise FerlabError("ferlab tune needs optuna: pip install 'ferlab[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    return optuna


@dataclass
class TuneSettings:
    """What defines a study; stored with it, and a resumed study must match."""
    family: str = "8conv"
    data: str = ""
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    augment: str = "none"
    train_fraction: float = 1.0      # train on a seeded stratified fraction of the train split (budgeted studies)
    seed: int = 0
    space: dict = field(default_factory=lambda: {k: list(v) for k, v in SARMAH2023_SEARCH_SPACE.items()})
    model_kwargs: dict = field(default_factory=dict)   # fixed kwargs added to the searched ones

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise FerlabError(f"--family must be one of {', '.join(FAMILIES)}, not {self.family!r}")
        unknown = set(self.space) - set(SARMAH2023_SEARCH_SPACE)
        if unknown:
            raise FerlabError(f"--space: unknown parameter(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(SARMAH2023_SEARCH_SPACE)})")
        for name, bounds in self.space.items():
            if not (isinstance(bounds, (list, tuple)) and len(bounds) == 3 and bounds[0] <= bounds[1] and bounds[2] > 0):
                raise FerlabError(f"--space: {name} needs [low, high, step] with low <= high and step > 0, got {bounds!r}")
        self.space = {k: list(v) for k, v in self.space.items()}

    @property
    def model(self) -> str:
        return f"sarmah2023_{self.family}"

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def train_config(self, params: dict):
        """The TrainConfig of one trial."""
        return TrainConfig(model=self.model, model_kwargs={**self.model_kwargs, **params}, data=self.data,
                           epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           augment=self.augment, test_splits="", seed=self.seed, train_fraction=self.train_fraction)


def suggest(trial, space: dict) -> dict:
    """Model kwargs for a trial: ints where low, high and step are all ints, else floats on the step grid."""
    params = {}
    for name, (low, high, step) in space.items():
        if all(isinstance(v, int) for v in (low, high, step)):
            params[name] = trial.suggest_int(name, int(low), int(high), step=int(step))
        else:
            params[name] = trial.suggest_float(name, float(low), float(high), step=float(step))
    return clean(params)


# ---------------------------------------------------------------------------------------------
# Study plumbing: storage, sampler, claiming trials

def per_trial_seed_sampler(make, seed: int):
    """A sampler whose random state depends only on (seed, trial number): a fresh `make(seed')`
    per trial, so concurrent workers never draw the same parameters and a study is reproducible."""
    optuna = _optuna()

    class PerTrialSeedSampler(optuna.samplers.BaseSampler):
        def __init__(self):
            self._inner = make(seed)

        def before_trial(self, study, trial):
            self._inner = make((seed * 1_000_003 + trial.number) % 2**32)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self._inner.after_trial(study, trial, state, values)

    return PerTrialSeedSampler()


def make_sampler(name: str, seed: int):
    optuna = _optuna()
    if name == "random":
        return per_trial_seed_sampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if name == "tpe":
        return per_trial_seed_sampler(lambda s: optuna.samplers.TPESampler(seed=s), seed)
    raise FerlabError(f"--sampler must be random or tpe, not {name!r}")


def make_pruner(name: str, epochs: int):
    optuna = _optuna()
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        # Prune a trial whose accuracy at an epoch is below the median of earlier trials at that
        # epoch, once 5 trials have finished and from the second quarter of the epochs on.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4))
    raise FerlabError(f"--pruner must be none or median, not {name!r}")


class SurplusTrial(Exception):
    """A trial created after the study already had its target of claimed trials."""


def open_study(storage, study_name: str, settings: TuneSettings, sampler: str, pruner: str):
    optuna = _optuna()
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True,
                                sampler=make_sampler(sampler, settings.seed), pruner=make_pruner(pruner, settings.epochs))
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings.as_json())
    elif saved != settings.as_json():
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.as_json().items() if saved.get(k) != v)
        raise FerlabError(f"study {study_name!r} was created with other settings ({diff}); "
                          "resume it with the same options or choose another --study-name")
    return study


# ---------------------------------------------------------------------------------------------
# One trial

def read_history(run: Path) -> list[dict]:
    if not (run / "metrics.csv").is_file():
        return []
    with open(run / "metrics.csv") as f:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def run_trial(trial, settings: TuneSettings, out: Path, device: str, log) -> float:
    """Train one trial in its run directory (resuming it if a dead worker left one) and return its
    best validation accuracy; pruned trials raise optuna.TrialPruned."""
    optuna = _optuna()
    params = suggest(trial, settings.space)
    cfg = settings.train_config(params)
    # A retried trial inherits its user attrs, so it finds the run directory of the trial it retries.
    run_name = trial.user_attrs.get("run_dir") or f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", run_name)
    run = out / run_name
    model_kwargs = cfg.model_kwargs
    n_params = count_parameters(create_model(cfg.model, **model_kwargs), keras_style=True)
    trial.set_user_attr("params_keras", n_params)

    resume = open_run(run, cfg)
    if resume:
        for row in read_history(run):   # the dead worker's epochs count for pruning too
            trial.report(row["val_acc"], row["epoch"])
    log(f"trial {trial.number}: {cfg.model} {json.dumps(params)} ({n_params:,} params) -> {run}"
        + (" (resuming)" if resume else ""))

    pruned = []

    def on_epoch_end(row: dict) -> bool:
        trial.report(row["val_acc"], row["epoch"])
        if trial.should_prune():
            pruned.append(row["epoch"])
            return True
        return False

    t0 = time.time()
    history = fit(cfg, run, resume=resume, device=device, log=lambda m: log(f"  trial {trial.number} {m}"), on_epoch_end=on_epoch_end).history
    best = max(history, key=lambda r: r["val_acc"])
    trial.set_user_attr("best_epoch", int(best["epoch"]))
    trial.set_user_attr("epochs_run", len(history))
    trial.set_user_attr("train_acc", best["train_acc"])
    trial.set_user_attr("seconds", round(time.time() - t0, 1))
    if pruned:
        raise optuna.TrialPruned(f"val_acc {history[-1]['val_acc']:.4f} below the median at epoch {pruned[0]}")
    return best["val_acc"]


# ---------------------------------------------------------------------------------------------
# A worker

def _claimed_before(study, number: int) -> int:
    from optuna.trial import TrialState
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=live) if t.number < number)


def estimate_line(settings: TuneSettings, trials: int, device: str) -> str:
    """The study's time, estimated before it starts: trials x epochs x the measured seconds per epoch
    of a trial at the middle of the search space (trials vary around it; a pruner cuts it short)."""
    middle = {name: low + step * round((high - low) / 2 / step) if step else (low + high) / 2
              for name, (low, high, step) in settings.space.items()}
    cfg = settings.train_config(middle)
    _, train, val, _ = load_run_data(cfg)
    per_epoch = measure_epoch_seconds(cfg, len(train) / cfg.train_fraction, len(val), device)
    return (f"estimate: {trials} trials x {settings.epochs} epochs x {per_epoch:.1f} s/epoch (measured here, mid-space "
            f"model) = {duration(trials * settings.epochs * per_epoch)} in one worker")


def run_study(settings: TuneSettings, *, trials: int, storage: str = "sqlite:///tune.db", study_name: str | None = None,
              out: Path | None = None, sampler: str = "random", pruner: str = "none", heartbeat: int = 60,
              device: str = "auto", log=print) -> dict:
    """Work on the study until it holds `trials` finished trials; returns the best trial (best.json)."""
    optuna = _optuna()
    from optuna.trial import TrialState

    if trials < 1 or settings.epochs < 1 or heartbeat < 1:
        raise FerlabError("--trials, --epochs and --heartbeat must be >= 1")
    settings.train_config({})                         # bad options and a bad --data fail here, not in a trial
    load_dataset(settings.data, seed=settings.seed)
    study_name = study_name or f"sarmah2023-{settings.family}"
    out = Path(out or f"tune-{study_name}")
    out.mkdir(parents=True, exist_ok=True)
    lock = StudyLock(storage)
    with lock:  # creating the tables (in make_storage) and the study is not safe to race on SQLite
        store, retry = make_storage(storage, heartbeat)
        study = open_study(store, study_name, settings, sampler, pruner)
    locked = lock.path is not None
    current = {}

    def objective(trial):
        lock.release()  # the trial exists: other workers count it from now on
        current["number"] = trial.number
        if not locked and _claimed_before(study, trial.number) >= trials:
            raise SurplusTrial(f"trial {trial.number} is past the study's target of {trials}")
        return run_trial(trial, settings, out, device, log)

    log(f"study {study_name!r} in {storage}: target {trials} finished trials of {settings.model}, "
        f"{settings.epochs} epochs each, {sampler} sampler, {pruner} pruner")
    log(estimate_line(settings, trials, device))
    waiting_logged = False
    while True:
        with lock:
            optuna.storages.fail_stale_trials(study)
            all_trials = study.get_trials(deepcopy=False)
            count = {s: sum(1 for t in all_trials if t.state == s) for s in TrialState}
            finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
            if finished >= trials:
                break
            busy = count[TrialState.RUNNING] + count[TrialState.WAITING]
            if finished + busy >= trials and not count[TrialState.WAITING]:
                wait = True  # the last trials run elsewhere; stay in case their worker dies
            else:
                wait = waiting_logged = False
                current.clear()
                try:
                    study.optimize(objective, n_trials=1, catch=(SurplusTrial,))
                except KeyboardInterrupt:
                    if "number" in current:  # re-queue the interrupted trial, as if its heartbeat had stopped
                        retry(study, study.get_trials(deepcopy=False)[current["number"]])
                    raise
        if wait:
            if not waiting_logged:
                log(f"{finished} of {trials} trials finished; waiting for {count[TrialState.RUNNING]} running elsewhere")
                waiting_logged = True
            time.sleep(min(heartbeat, 5))

    summary = summarize(study, out)
    log(summary["table"])
    best = summary["best"]
    atomic_write_text(out / "best.json", json.dumps(best, indent=2))
    log(f"best: trial {best['number']} val_acc {best['value']:.4f} {json.dumps(best['params'])}; wrote {out / 'best.json'}")
    return best


def clean(params: dict) -> dict:
    """Parameters as the grid has them (optuna stores 0.1 + 0.2 as 0.30000000000000004)."""
    return {k: round(v, 10) if isinstance(v, float) else v for k, v in params.items()}


def summarize(study, out: Path, top: int = 10) -> dict:
    """The best trials as a Markdown table and the best one as a dict (what best.json holds)."""
    from optuna.trial import TrialState

    all_trials = study.get_trials(deepcopy=False)
    done = sorted((t for t in all_trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    if not done:
        raise FerlabError(f"study {study.study_name!r} has no complete trial")
    settings = study.user_attrs["settings"]
    names = list(settings["space"])
    states = ", ".join(f"{sum(1 for t in all_trials if t.state == s)} {s.name.lower()}" for s in TrialState
                       if any(t.state == s for t in all_trials))
    lines = [f"study {study.study_name}: {states}", "",
             "| rank | trial | val acc | best epoch | " + " | ".join(names) + " | params | minutes |",
             "|---" * (len(names) + 6) + "|"]
    for rank, t in enumerate(done[:top], 1):
        lines.append(f"| {rank} | {t.number} | {100 * t.value:.2f}% | {t.user_attrs.get('best_epoch', '')} | "
                     + " | ".join(str(clean(t.params)[n]) for n in names)
                     + f" | {t.user_attrs.get('params_keras', 0) / 1e6:.2f}M | {t.user_attrs.get('seconds', 0) / 60:.1f} |")
    b = done[0]
    model_kwargs = {**settings["model_kwargs"], **clean(b.params)}
    best = {"study": study.study_name, "number": b.number, "value": b.value, "params": clean(b.params),
            "model": f"sarmah2023_{settings['family']}", "model_kwargs": model_kwargs,
            "run_dir": str(out / b.user_attrs.get("run_dir", f"trial-{b.number:04d}")),
            "best_epoch": b.user_attrs.get("best_epoch"), "params_keras": b.user_attrs.get("params_keras"),
            "n_complete": len(done), "n_pruned": sum(1 for t in all_trials if t.state == TrialState.PRUNED),
            "n_failed": sum(1 for t in all_trials if t.state == TrialState.FAIL),
            "seconds_total": round(sum(t.user_attrs.get("seconds", 0) for t in all_trials), 1), "settings": settings,
            "top": [{"number": t.number, "value": t.value, "params": clean(t.params), **t.user_attrs} for t in done[:top]]}
    return {"table": "\n".join(lines), "best": best}


# ---------------------------------------------------------------------------------------------
# Command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="FER2013 CSV (or any data spec `ferlab train` accepts)")
    p.add_argument("--family", default="8conv", choices=FAMILIES, help="sarmah2023 model family (default 8conv)")
    p.add_argument("--trials", type=int, default=100, help="finished trials the study should hold (default 100, the paper's)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per trial (default 20, the paper's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "nadam", "adamw"])
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3, Keras' Adam default)")
    p.add_argument("--augment", default="none", help="augmentation preset during the search (default none)")
    p.add_argument("--train-fraction", type=float, default=1.0, help="train each trial on this stratified fraction of the train split")
    p.add_argument("--space", type=json.loads, default={},
                   help='override search ranges, JSON {"name": [low, high, step]}, e.g. \'{"first_filters": [32, 64, 32]}\'')
    p.add_argument("--sampler", default="random", choices=["random", "tpe"])
    p.add_argument("--pruner", default="none", choices=["none", "median"])
    p.add_argument("--storage", default="sqlite:///tune.db", help="SQLAlchemy URL of the study (default sqlite:///tune.db)")
    p.add_argument("--study-name", help="default sarmah2023-<family>")
    p.add_argument("--out", type=Path, help="directory of the per-trial runs and best.json (default ./tune-<study-name>)")
    p.add_argument("--heartbeat", type=int, default=60, help="seconds between heartbeats; a trial silent for twice this is retried")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def run(args) -> int:
    space = {k: list(v) for k, v in SARMAH2023_SEARCH_SPACE.items()}
    space.update(args.space)
    if not 0 < args.train_fraction <= 1:
        raise FerlabError("--train-fraction must be in (0, 1]")
    settings = TuneSettings(family=args.family, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                            optimizer=args.optimizer, lr=args.lr, augment=args.augment, train_fraction=args.train_fraction,
                            seed=args.seed, space=space)
    run_study(settings, trials=args.trials, storage=args.storage, study_name=args.study_name, out=args.out,
              sampler=args.sampler, pruner=args.pruner, heartbeat=args.heartbeat, device=args.device)
    return 0
