"""li2023: the same CNN trained for 20 / 40 / 60 / 80 / 100 epochs (FER2013)."""

from ferlab.reproduce.core import Claim, Reproduction, accuracy_verdict, at_epoch, curve, minutes, pct, plot_panels

TITLE = ("Li 2023, \"Facial Emotion Recognition and Impact Analysis of Iteration Based on Convolutional Neural "
         "Networks\"")
BUDGETS = {
    "full": {"epochs": [20, 40, 60, 80, 100], "separate_runs": True},    # ~2.5 h (1 h): 300 epochs
    # ~50 min (25 min): one 100-epoch run read at 20..100; measured 1.6 h on 1 AVX2 thread beside another run
    "cpu": {"epochs": [20, 40, 60, 80, 100], "separate_runs": False},
    "smoke": {"epochs": [1, 2], "separate_runs": False},   # two lengths, so every claim's path runs
}


def run(r: Reproduction) -> None:
    data = r.path("data", "--data FER2013_CSV")
    checkpoints, separate = r.budget["epochs"], r.budget["separate_runs"]
    sizes = r.split_sizes(data)
    r.data_notes.append(f"{data}: Training {sizes.get('Training', 0):,} (paper 28,709), PublicTest "
                        f"{sizes.get('PublicTest', 0):,} for validation, PrivateTest {sizes.get('PrivateTest', 0):,} "
                        "for test")
    if not separate:
        r.reductions.append(f"one {max(checkpoints)}-epoch run read at epochs {', '.join(map(str, checkpoints))} "
                            f"instead of {len(checkpoints)} separate runs: with a constant learning rate and no "
                            "epoch-dependent callback, the first E epochs of a run are a run of E epochs (same seed); "
                            "what is lost is the run-to-run spread")
    if separate:   # independent runs, as the paper's: seeds seed, seed+1, ...
        histories = {e: r.train(f"epochs-{e}", r.config("li2023", data=data, epochs=e, seed=r.seed + i))["history"]
                     for i, e in enumerate(checkpoints)}
    else:
        h = r.train(f"epochs-{max(checkpoints)}", r.config("li2023", data=data, epochs=max(checkpoints)))["history"]
        histories = {e: h[:e] for e in checkpoints if at_epoch(h, e) is not None}
    r.claims += claims(histories, {"train": sizes.get("Training", 0), "test": sizes.get("PrivateTest", 0)})

    sec = ["## Accuracy and loss after each training length", "",
           "| epochs | train loss | train acc | val loss | val acc | test acc | time |",
           "|---|---|---|---|---|---|---|"]
    for e in sorted(histories):
        hist = histories[e]
        row = hist[-1]
        sec.append(f"| {e} | {row['train_loss']:.3f} | {pct(row['train_acc'])} | {row['val_loss']:.3f} | "
                   f"{pct(row['val_acc'])} | {pct(row.get('test_acc'))} | {minutes(sum(x['time_s'] for x in hist))} |")
    if separate:
        panels = [(f"{e} epochs", "loss", [curve(h, "train_loss", "train"), curve(h, "val_loss", "validation")], [])
                  for e, h in sorted(histories.items())]
    else:
        h = histories[max(histories)]
        panels = [("loss", "loss", [curve(h, "train_loss", "train"), curve(h, "val_loss", "validation")],
                   sorted(histories)),
                  ("accuracy", "accuracy", [curve(h, "train_acc", "train"), curve(h, "val_acc", "validation"),
                                            curve(h, "test_acc", "test", "--o")], sorted(histories))]
    fig = r.figure("curves.png", lambda p: plot_panels(panels, p, "li2023 Figures 4-8, remeasured"))
    sec += ["", f"![curves]({fig})", ""]
    r.sections += sec


def claims(histories: dict[int, list[dict]], sizes: dict[str, int]) -> list[Claim]:
    """histories: training length (epochs) -> the metrics of that training's epochs, its last row its end;
    sizes: faces in the "train" and "test" splits, which set the noise of an accuracy difference."""
    ends = {e: histories[e][-1] for e in sorted(histories)}
    last_e = max(ends)
    last = ends[last_e]
    note = ("batch 32, layer widths and augmentation values not stated (ours: see models/li2023.py and the li2023 "
            "recipe); Adam 1e-3 as stated")
    out = [Claim("Training accuracy at the end of training (epochs not stated; read as the longest run, 100)",
                 "51.17%", f"{pct(last['train_acc'])} (epoch {last_e})", note)]
    if len(ends) > 1:
        prev = sorted(ends)[-2]
        gain = last["train_acc"] - ends[prev]["train_acc"]
        out.append(Claim("Improvement over the previous (shorter) training", "8.11%",
                         f"{100 * gain:+.2f} points ({100 * gain / max(ends[prev]['train_acc'], 1e-9):+.1f}% "
                         f"relative), epoch {prev} -> {last_e}",
                         "the paper does not say whether 8.11% is points or relative, nor which shorter run it "
                         "compares with"))
    accs = [row["train_acc"] for row in ends.values()]
    losses = [row["train_loss"] for row in ends.values()]
    monotone = all(a <= b for a, b in zip(accs, accs[1:])) and all(a >= b for a, b in zip(losses, losses[1:]))
    out.append(Claim("More epochs: accuracy rises and loss falls",
                     "yes (abstract, Section 3; Figures 4-8 plot the loss)",
                     accuracy_verdict(accs[0], accs[-1], sizes["train"]) + f" from {min(ends)} to {last_e} epochs"
                     + ("" if monotone else ", not monotone") + "; train acc " + " / ".join(pct(a) for a in accs)
                     + "; loss " + " / ".join(f"{x:.3f}" for x in losses), note))
    gains = [b - a for a, b in zip(accs, accs[1:])]
    if gains:
        shrinking = all(a >= b for a, b in zip(gains, gains[1:]))
        verdict = "inconclusive (one gain: needs 3 training lengths)" if len(gains) < 2 else "yes" if shrinking else "not monotone"
        out.append(Claim("Gains shrink as training lengthens: the CNN converges",
                         "once converged, more epochs do not improve accuracy 'a great deal' (Section 3, no numbers)",
                         verdict + ": train acc gain per step "
                         + " / ".join(f"{100 * g:+.2f}" for g in gains) + " points", note))
    val_losses = [row["val_loss"] for row in ends.values()]
    out.append(Claim("The loss also falls on held-out faces (the model 'was able to pass validation', Figures 4-8)",
                     "yes (curves, no numbers)",
                     ("yes" if all(a >= b for a, b in zip(val_losses, val_losses[1:])) else "not monotone")
                     + ": PublicTest loss " + " / ".join(f"{x:.3f}" for x in val_losses), note))
    tests = [row.get("test_acc") for row in ends.values()]
    if None not in tests:
        monotone = all(a <= b for a, b in zip(tests, tests[1:]))
        out.append(Claim("More epochs improve accuracy on unseen data (generalisation)",
                         "suggested (Conclusion), no test number",
                         accuracy_verdict(tests[0], tests[-1], sizes["test"]) + ("" if monotone else ", not monotone")
                         + f"; PrivateTest after "
                         f"{' / '.join(map(str, sorted(ends)))} epochs " + " / ".join(pct(t) for t in tests),
                         "PrivateTest at the end of each training (last epoch, no checkpoint selection)"))
    return out
