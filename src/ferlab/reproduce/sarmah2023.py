"""sarmah2023: random search over two CNN families, batch sizes, Adam vs SGD-Nesterov, 5-conv vs 8-conv,
and the final trainings (FER2013)."""

import json

import numpy as np

from ferlab.models.sarmah2023 import SARMAH2023_SEARCH_SPACE
from ferlab.reproduce.core import (Claim, Reproduction, best_row, curve, max_test, minutes, n_epochs, pct, plot_panels,
                                   recalibrated_note)
from ferlab.training.tune import TuneSettings, run_study

TITLE = "Sarmah et al. 2023, \"Emotion Recognition Through Facial Expressions Using CNN\" (random search)"
BUDGETS = {
    # ~1,000 h: "a total of 100 trials" of 20 epochs, read as 50 per family, of models up to 9x the default's cost
    "full": {"search_trials": 50, "search_epochs": 20, "search_fraction": 1.0, "batch_epochs": 20,
             "batch_fraction": 1.0, "adam_epochs": 150, "sgd_epochs": 150, "conv5_epochs": 300, "base_epochs": 50,
             "final_params": "search"},
    # ~2.4 h (50 min): search (4 trials x 2 epochs per family; a random trial costs 1.6-2x the default
    # layout on average, up to 8x) and batch sizes (2 epochs) on a stratified 10% / 20% of Training;
    # final runs on all of it for 2 / 2 / 4 / 2 epochs with the documented 5,228,487-parameter layout.
    # Measured on the AVX2 CPU: 4.2 h of training, the search and batch runs at 1 thread beside another
    # run (~2.9 h at 2 threads alone); at this budget no search trial learns beyond the majority class.
    "cpu": {"search_trials": 4, "search_epochs": 2, "search_fraction": 0.1, "batch_epochs": 2, "batch_fraction": 0.2,
            "adam_epochs": 2, "sgd_epochs": 2, "conv5_epochs": 4, "base_epochs": 2, "final_params": "default"},
    "smoke": {"search_trials": 2, "search_epochs": 1, "search_fraction": 1.0, "batch_epochs": 1, "batch_fraction": 1.0,
              "adam_epochs": 1, "sgd_epochs": 1, "conv5_epochs": 1, "base_epochs": 1, "final_params": "search"},
}
TINY_SPACE = {"first_filters": [4, 8, 4], "max_filters": [8, 16, 8]}
FAMILIES = ("5conv", "8conv")


def run(r: Reproduction) -> None:
    data = r.path("data", "--data FER2013_CSV")
    b = r.budget
    sizes = r.split_sizes(data)
    r.data_notes.append(f"{data}: Training {sizes.get('Training', 0):,} / PublicTest {sizes.get('PublicTest', 0):,} / "
                        f"PrivateTest {sizes.get('PrivateTest', 0):,} faces (paper: FER2013's 28,709 / 3,589 / 3,589)")
    full = BUDGETS["full"]
    for key, what in (("search_trials", "search trials per family"), ("search_epochs", "epochs per search trial"),
                      ("batch_epochs",
                       "epochs per batch-size run (not stated in the paper; full: 20 as in the search)"),
                      ("adam_epochs", "epochs of the final 8-conv Adam run"), ("sgd_epochs", "epochs of the SGD run"),
                      ("conv5_epochs", "epochs of the 5-conv run"),
                      ("base_epochs", "epochs of the baseline (not stated; full: 50)")):
        if b[key] != full[key]:
            r.reductions.append(f"{b[key]} instead of {full[key]} {what}")
    for key, what in (("search_fraction", "search"), ("batch_fraction", "batch-size runs")):
        if b[key] < 1:
            r.reductions.append(f"{what} trained on a stratified {100 * b[key]:.0f}% of Training")
    if b["final_params"] == "default":
        r.reductions.append("final runs use the documented default layout (64..512 filters, 5,228,487 parameters for "
                            "8-conv) instead of the search's best")

    # 1. random search per family (Adam 1e-3, batch 32, no augmentation)
    space = {k: list(v) for k, v in SARMAH2023_SEARCH_SPACE.items()}
    if r.budget_name == "smoke":
        space.update(TINY_SPACE)
    search, summaries = {}, {}
    for family in FAMILIES:
        settings = TuneSettings(family=family, data=data, epochs=b["search_epochs"],
                                train_fraction=b["search_fraction"], seed=r.seed, space=space,
                                model_kwargs={"dense": [16]} if r.budget_name == "smoke" else {})
        folder = r.out / "runs" / f"search-{family}"
        folder.mkdir(parents=True, exist_ok=True)
        search[family] = run_study(settings, trials=b["search_trials"], storage=f"sqlite:///{folder.resolve()}/tune.db",
                                   study_name=f"sarmah2023-{family}", out=folder, device=r.device,
                                   log=lambda m, f=family: r.log(f"[search-{f}] {m}"))
        summaries[family] = json.loads((folder / "best.json").read_text())
        r.other_seconds += search[family]["seconds_total"]
    # A trial no better than always answering the most common class has learned nothing: the search
    # then picks its best by noise, which the report must say (short budgets end there).
    counts = np.bincount(r.dataset(data).select("PublicTest").labels)
    majority_rate = float(counts.max() / counts.sum())
    kwargs = {f: (search[f]["model_kwargs"] if b["final_params"] == "search" else {}) for f in FAMILIES}

    # 2. batch size 32 / 64 / 128 (8-conv, the search's protocol)
    batch = {}
    for bs in (32, 64, 128):
        cfg = r.config(None, model="sarmah2023_8conv", model_kwargs=kwargs["8conv"], data=data,
                       epochs=b["batch_epochs"], batch_size=bs, optimizer="adam", lr=1e-3, test_splits="",
                       train_fraction=b["batch_fraction"])
        batch[bs] = r.train(f"batch-{bs}", cfg, evaluate=False)

    # 3. final trainings (Adam 1e-4, augmentation) and the baseline
    runs = {
        "final-8conv-adam": r.config("sarmah2023", data=data, epochs=b["adam_epochs"], model_kwargs=kwargs["8conv"]),
        "final-8conv-sgd": r.config("sarmah2023_sgd", data=data, epochs=b["sgd_epochs"], model_kwargs=kwargs["8conv"]),
        "final-5conv-adam": r.config("sarmah2023_5conv", data=data, epochs=b["conv5_epochs"],
                                     model_kwargs=kwargs["5conv"]),
        # baseline: Adam, batch 64 (stated); lr 1e-3 and no augmentation (Keras defaults); epochs not stated
        "baseline": r.config(None, model="sarmah2023_base", data=data, epochs=b["base_epochs"], batch_size=64,
                             optimizer="adam", lr=1e-3, train_splits="Training", val_splits="PublicTest",
                             test_splits="PrivateTest"),
    }
    final = {name: r.train(name, cfg) for name, cfg in runs.items()}
    r.claims += claims({"budget": b, "search": search, "majority_rate": majority_rate, "batch": batch, "final": final})
    r.sections += sections(r, space, summaries, majority_rate, batch, final)


def untrained_families(search: dict, majority_rate: float) -> set[str]:
    return {f for f in search if search[f]["value"] < majority_rate + 0.02}


def claims(results: dict) -> list[Claim]:
    """results: budget (BUDGETS[...]), search (family -> the study's best trial, as run_study returns it),
    majority_rate (share of PublicTest's most common class), batch (batch size -> run result) and final
    (run name -> run result with its test report)."""
    b, search, batch, res = results["budget"], results["search"], results["batch"], results["final"]
    majority_rate = results["majority_rate"]
    majority = f"{pct(majority_rate)} of PublicTest is its most common class"
    untrained = untrained_families(search, majority_rate)
    search_note = f"{b['search_trials']} random trials x {n_epochs(b['search_epochs'])}" + (
        f" on {100 * b['search_fraction']:.0f}% of Training" if b["search_fraction"] < 1 else "") + \
        "; lr 1e-3 (Keras default, not stated)"
    out = []
    for family, paper in (("5conv", "62%"), ("8conv", "61.9%")):
        bf = search[family]
        out.append(Claim(f"Random search, {family[0]}-conv family: best validation accuracy after 20 epochs", paper,
                         f"{pct(bf['value'])} (trial {bf['number']}, {bf['params_keras']:,} params)",
                         search_note + (f"; no trial learned beyond the majority class ({majority}): the best is "
                                        "picked by noise" if family in untrained else "")))

    best_bs = max(batch, key=lambda k: best_row(batch[k])["val_acc"])
    learned = max(best_row(rr)["val_acc"] for rr in batch.values()) >= majority_rate + 0.02
    out.append(Claim("Batch size 32 gives the best results of 32 / 64 / 128", "32 best (no numbers given)",
                     ", ".join(f"{k}: {pct(best_row(rr)['val_acc'])}" for k, rr in batch.items())
                     + (f" -> {best_bs} best (val acc)" if learned
                        else f" -> no winner: none learned beyond the majority class ({majority})"),
                     f"8-conv, Adam 1e-3, {n_epochs(b['batch_epochs'])}"
                     + (f" on {100 * b['batch_fraction']:.0f}% of Training" if b["batch_fraction"] < 1 else "")
                     + "; the paper does not say which model or epochs"))

    def test_summary(name):
        h, rep = res[name]["history"], res[name]["test"]
        return (f"{pct(rep['accuracy'])} (best-val epoch {best_row(res[name])['epoch']} of {len(h)}; max over epochs "
                f"{pct(max_test(h))})" + recalibrated_note([res[name]]))
    test_note = ("ours: PrivateTest accuracy of the best-PublicTest checkpoint, and the max over epochs (the paper's "
                 "'max test accuracy' may be read off its curve)")
    common = "PublicTest for model selection, PrivateTest reported; PyTorch port (precision: see the machine line)"
    base = res["baseline"]
    out += [
        Claim("Baseline CNN (4 conv + 2 dense, Adam, batch 64): test accuracy", "65%", test_summary("baseline"),
              f"layout of the baseline is our choice (Fig. 3 missing); {n_epochs(b['base_epochs'])} (not stated); "
              + test_note),
        Claim("Baseline CNN: training accuracy", "92%",
              pct(base["history"][-1]["train_acc"]) + f" (epoch {len(base['history'])})",
              "no augmentation; epochs not stated"),
        Claim("8-conv, Adam 1e-4, 150 epochs, augmentation: test accuracy", "69.55%", test_summary("final-8conv-adam"),
              f"{n_epochs(b['adam_epochs'])}; " + test_note),
        Claim("8-conv, SGD-Nesterov, 150 epochs: test accuracy", "68.21%", test_summary("final-8conv-sgd"),
              f"{n_epochs(b['sgd_epochs'])}; lr 0.01 (Keras' default) and momentum 0.9 (ours: Keras' default 0 makes "
              "Nesterov a no-op), neither stated; " + test_note),
    ]
    gaps = {n: res[n]["history"][-1]["train_acc"] - res[n]["test"]["accuracy"]
            for n in ("final-8conv-adam", "final-8conv-sgd")}
    gap5 = res["final-5conv-adam"]["history"][-1]["train_acc"] - res["final-5conv-adam"]["test"]["accuracy"]
    out += [
        Claim("Adam reaches higher test accuracy than SGD, SGD generalizes better (smaller train-test gap)",
              "Adam 69.55% > SGD 68.21%; SGD smaller gap",
              f"Adam {pct(res['final-8conv-adam']['test']['accuracy'])} vs SGD "
              f"{pct(res['final-8conv-sgd']['test']['accuracy'])}; gap Adam {100 * gaps['final-8conv-adam']:.1f} vs "
              f"SGD {100 * gaps['final-8conv-sgd']:.1f} points", common),
        Claim("5-conv, 300 epochs: max test accuracy", "70.58%", test_summary("final-5conv-adam"),
              f"{n_epochs(b['conv5_epochs'])}; Adam 1e-4 + augmentation as the 8-conv run; " + test_note),
        Claim("5-conv overfits ('massive overfitting'), which is why the paper keeps the 8-conv model",
              "5-conv overfits more",
              f"train-test gap 5-conv {100 * gap5:.1f} vs 8-conv {100 * gaps['final-8conv-adam']:.1f} points",
              f"last-epoch train accuracy minus test accuracy; {n_epochs(b['conv5_epochs'])} vs "
              f"{n_epochs(b['adam_epochs'])} (paper 300 vs 150)"),
        Claim("Final 8-conv model size", "5,228,487 parameters",
              f"{res['final-8conv-adam']['params_keras']:,} (Keras-style count)",
              "layer widths are in a figure we do not have; "
              + ("the search's best" if b["final_params"] == "search" else "our default layout")),
    ]
    return out


def sections(r: Reproduction, space: dict, summaries: dict, majority_rate: float, batch: dict, res: dict) -> list[str]:
    """The search, batch-size and final-run sections, and the final runs' curves."""
    majority = f"{pct(majority_rate)} of PublicTest is its most common class"
    untrained = untrained_families(summaries, majority_rate)
    sec = ["## Random search (section 3.1)", ""]
    for family in FAMILIES:
        bj = summaries[family]
        sec += [f"**{family}**: {bj['n_complete']} complete, {bj['n_pruned']} pruned, {bj['n_failed']} failed trials; "
                f"best trial {bj['number']}: `{json.dumps(bj['model_kwargs'])}` -> val {pct(bj['value'])} "
                f"(epoch {bj['best_epoch']})"
                + (f". No trial learned beyond the majority class ({majority}) at this budget, so the trials cannot "
                   "be told apart." if family in untrained else ""), "",
                "| trial | val acc | " + " | ".join(space) + " | params |", "|---" * (len(space) + 3) + "|"]
        for t in bj["top"]:
            sec.append(f"| {t['number']} | {pct(t['value'])} | " + " | ".join(f"{t['params'][k]:.3g}" for k in space)
                       + f" | {t.get('params_keras', 0):,} |")
        sec.append("")
    sec += ["## Batch size", "", "| batch | best val acc | epoch | train acc there | time |", "|---|---|---|---|---|"]
    for bs, rr in batch.items():
        br = best_row(rr)
        sec.append(f"| {bs} | {pct(br['val_acc'])} | {br['epoch']} | {pct(br['train_acc'])} | "
                   f"{minutes(sum(x['time_s'] for x in rr['history']))} |")
    sec += ["", "## Final trainings", "",
            "| run | model | epochs | params | train acc (last) | val acc (best) | test acc (best-val ckpt) | "
            "max test acc | macro-F1 | time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rr in res.items():
        h = rr["history"]
        sec.append(f"| {name} | {rr['model']} | {len(h)} | {rr['params_keras']:,} | {pct(h[-1]['train_acc'])} | "
                   f"{pct(best_row(rr)['val_acc'])} | {pct(rr['test']['accuracy'])} | {pct(max_test(h))} | "
                   f"{pct(rr['test']['macro_f1'])} | {minutes(rr['train_seconds'])} |")
    fig = r.figure("final-curves.png", lambda p: plot_panels(
        [(name, "accuracy", [curve(rr["history"], "train_acc", "train"),
                             curve(rr["history"], "val_acc", "validation (PublicTest)"),
                             curve(rr["history"], "test_acc", "test (PrivateTest)", "--o")], [])
         for name, rr in res.items()], p, "sarmah2023 final trainings (the paper's Figures 2, 4-6)"))
    return sec + ["", f"![final curves]({fig})", ""]
