"""triwijoyo2021: the same CNN with and without batch normalization (20 epochs, FER2013)."""

from ferlab.data import fraction_mask
from ferlab.reproduce.core import (Claim, Reproduction, at_epoch, best_row, curve, n_epochs, pct, plot_panels,
                                   recalibrated_note)

TITLE = ("Triwijoyo et al. 2021, \"Deep learning approach for facial expression recognition with batch "
         "normalization\"")
BUDGETS = {
    "full": {"epochs": 20, "train_fraction": 1.0},      # ~12 h (4 h): 2 models x 20 epochs x 32,137 faces
    # ~2.3 h (50 min): both models for 10 epochs (the paper's epoch-10 statements) on a stratified
    # 30% of Training+PublicTest; validation on all of PrivateTest. Measured on a 2-core AVX2 EPYC:
    # 6.2-7.4 min per epoch alone at 2 threads, 2.8 h in all with some epochs beside other work
    "cpu": {"epochs": 10, "train_fraction": 0.3},
    "smoke": {"epochs": 1, "train_fraction": 1.0},
}


def run(r: Reproduction) -> None:
    data = r.path("data", "--data FER2013_CSV")
    epochs, fraction = r.budget["epochs"], r.budget["train_fraction"]
    sizes = r.split_sizes(data)
    n_train, n_val = sizes.get("Training", 0) + sizes.get("PublicTest", 0), sizes.get("PrivateTest", 0)
    r.data_notes.append(f"{data}: train on Training+PublicTest ({n_train:,} faces; paper 32,298), "
                        f"validate on PrivateTest ({n_val:,}; paper 3,589)")
    if epochs < 20:
        r.reductions.append(f"{epochs} of the paper's 20 epochs for each model")
    if fraction < 1:
        n_train = int(fraction_mask(r.dataset(data).select("Training,PublicTest").labels, fraction, r.seed).sum())
        r.reductions.append(f"trained on a stratified {100 * fraction:.0f}% of Training+PublicTest ({n_train:,} "
                            "faces): fewer steps per epoch, and a smaller set is memorised sooner")
    results = {"epochs": epochs, "n_train": n_train, "n_val": n_val,
               "bn": r.train("bn", r.config("triwijoyo2021", data=data, epochs=epochs, train_fraction=fraction)),
               "nobn": r.train("nobn", r.config("triwijoyo2021_nobn", data=data, epochs=epochs,
                                                train_fraction=fraction))}
    r.claims += claims(results)

    bn, nobn = results["bn"]["history"], results["nobn"]["history"]
    def panel(title, ylabel, h, key):
        return (title, ylabel, [curve(h, f"train_{key}", "train"), curve(h, f"val_{key}", "validation")], [])
    fig = r.figure("figure3.png", lambda p: plot_panels(
        [panel("(a) loss, with BN", "loss", bn, "loss"), panel("(b) accuracy, with BN", "accuracy", bn, "acc"),
         panel("(c) loss, without BN", "loss", nobn, "loss"),
         panel("(d) accuracy, without BN", "accuracy", nobn, "acc")],
        p, "triwijoyo2021 Figure 3, remeasured", cols=2))
    rows = ["## Learning curves (the paper's Figure 3)", "", f"![Figure 3]({fig})", "",
            "| epoch | BN train acc | BN val acc | BN train loss | no-BN train acc | no-BN val acc "
            "| no-BN train loss |",
            "|---|---|---|---|---|---|---|"]
    for a, b in zip(bn, nobn):
        rows.append(f"| {a['epoch']} | {pct(a['train_acc'])} | {pct(a['val_acc'])} | {a['train_loss']:.3f} | "
                    f"{pct(b['train_acc'])} | {pct(b['val_acc'])} | {b['train_loss']:.3f} |")
    r.sections += rows + [""]


def claims(results: dict) -> list[Claim]:
    """results: epochs (the budget's), n_train, n_val (faces) and the run results bn and nobn."""
    epochs, bn_run = results["epochs"], results["bn"]
    bn, nobn = bn_run["history"], results["nobn"]["history"]
    common = (f"{results['n_train']:,}/{results['n_val']:,} faces vs 32,298/3,589; PyTorch port, bf16 autocast "
              "where the CPU has it")
    short = f"; only {n_epochs(epochs)} run" if epochs < 20 else ""
    last_bn, last_nobn = bn[-1], nobn[-1]
    best = best_row(bn_run)

    def epoch_note(row, e):
        return f" (epoch {row['epoch']})" if row["epoch"] != e else ""
    e10 = at_epoch(bn, 10)
    pairs = [(at_epoch(bn, e), at_epoch(nobn, e)) for e in sorted({max(1, len(bn) // 2), len(bn)})]
    faster = "; ".join(f"epoch {a['epoch']}: loss {a['train_loss']:.3f} vs {b['train_loss']:.3f}, "
                       f"acc {pct(a['train_acc'])} vs {pct(b['train_acc'])}" for a, b in pairs if a and b)
    return [
        Claim("With BN: training accuracy after 20 epochs", "98%", pct(last_bn["train_acc"]) + epoch_note(last_bn, 20),
              common + short),
        Claim("With BN: validation accuracy after 20 epochs (overfitting)", "62%",
              f"{pct(last_bn['val_acc'])}{epoch_note(last_bn, 20)}; best {pct(best['val_acc'])} at epoch "
              f"{best['epoch']}" + recalibrated_note([bn_run]), common + short),
        Claim("With BN: training accuracy above 90% by epoch 10", "> 90%",
              pct(e10["train_acc"]) if e10 else f"not reached ({n_epochs(epochs)} run)", common),
        Claim("With BN: training loss below 0.20 by epoch 10", "< 0.20",
              f"{e10['train_loss']:.3f}" if e10 else f"not reached ({n_epochs(epochs)} run)",
              common + "; the paper's loss axis is read as cross-entropy"),
        Claim("Without BN: training loss still above 0.30 at epoch 20", "> 0.30",
              f"{last_nobn['train_loss']:.3f}" + epoch_note(last_nobn, 20), common + short),
        Claim("Without BN: training accuracy still below 90% at epoch 20", "< 90%",
              pct(last_nobn["train_acc"]) + epoch_note(last_nobn, 20), common + short),
        Claim("BN performs better than no BN (validation accuracy)", "BN better",
              f"BN {pct(last_bn['val_acc'])} vs no BN {pct(last_nobn['val_acc'])} at epoch {last_bn['epoch']}",
              common + short),
        Claim("BN trains faster: lower training loss, higher training accuracy (Figure 3)",
              "yes, 'especially in the model training process'", faster + " (BN vs no BN)", common + short),
        Claim("Model size (Table 1)", "2,787,015 parameters", f"{bn_run['params_keras']:,}",
              "block 3 built with 3x3 convs: Table 1 says 5x5, but its parameter counts are those of 3x3"),
    ]
