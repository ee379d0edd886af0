"""Classification metrics and figures in the papers' layout: accuracy, macro-F1, per-class
precision/recall/F1/support, confusion matrix, learning curves. NumPy only; plots via Agg."""

import numpy as np

from ferlab.atomic import atomic_write


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): rows are true classes, columns predictions."""
    idx = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(y_true, y_pred, classes) -> dict:
    cm = confusion_matrix(y_true, y_pred, len(classes))
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "num_samples": int(cm.sum()),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


def summary(y_true, y_pred, classes) -> dict:
    """The short form of a report for tables of many models and data sets: accuracy and macro-F1
    (4 decimals), face count, and the recall (2 decimals) of each class that has faces here."""
    r = classification_report(y_true, y_pred, classes)
    return {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4), "num_samples": r["num_samples"],
            "recall": {c: round(m["recall"], 2) for c, m in r["per_class"].items() if m["support"]}}


def source_summaries(y_true, y_pred, origins, classes) -> dict:
    """{source: summary} of the faces of each origin (one source, "all", when origins is None), so a
    small source can be weighed as much as a large one."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    origins = np.full(len(y_true), "all") if origins is None else np.asarray(origins)
    return {str(o): summary(y_true[origins == o], y_pred[origins == o], classes) for o in dict.fromkeys(origins)}


def report_markdown(report: dict, title: str) -> str:
    """The report as Markdown: summary, a bah2022-style per-class table, the confusion matrix."""
    lines = [f"# {title}", ""]
    for key in ("model", "data", "split", "tta"):
        if key in report:
            lines.append(f"- {key}: {report[key]}")
    lines += [f"- accuracy: {100 * report['accuracy']:.2f}% ({report['num_samples']} samples)",
              f"- macro-F1: {100 * report['macro_f1']:.2f}%", "",
              "| class | precision | recall | F1-score | support |", "|---|---|---|---|---|"]
    for name, m in report["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} | {m['support']} |")
    lines += [f"| accuracy | | | {report['accuracy']:.2f} | {report['num_samples']} |", "",
              "Confusion matrix (rows: true, columns: predicted):", "",
              "| true \\ pred | " + " | ".join(report["classes"]) + " |",
              "|---" * (len(report["classes"]) + 1) + "|"]
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _savefig(fig, path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def plot_confusion(cm, classes, path, title: str = "") -> None:
    """Row-normalised confusion matrix with counts in each cell."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or "confusion matrix (row-normalised)")
    _savefig(fig, path)
    plt.close(fig)


def plot_curves(rows: list[dict], path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs validation, as in the papers' learning-curve figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
        ax.plot(epochs, [float(r[f"train_{key}"]) for r in rows], label="train")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], label="validation")
        if key == "acc" and rows and rows[0].get("test_acc") not in (None, ""):
            ax.plot(epochs, [float(r["test_acc"]) for r in rows], label="test", linestyle="--")
        averaged = [(r["epoch"], float(r["avg_val_acc"])) for r in rows if r.get("avg_val_acc") not in (None, "")]
        if key == "acc" and averaged:   # --average-from
            ax.plot(*zip(*averaged), label="validation, weight average", linestyle=":")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole numbers
        ax.set_ylabel("loss" if key == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _savefig(fig, path)
    plt.close(fig)


def first_reached(rows: list[dict], thresholds, key: str = "test_acc") -> dict[float, tuple[int, float]]:
    """{threshold: (epoch, cumulative minutes of training)} for the first epoch whose `key` reached
    each threshold; `rows` are a run's metrics.csv rows (values may be strings)."""
    elapsed, reached = 0.0, {}
    for r in rows:
        elapsed += float(r["time_s"]) / 60
        value = float(r[key]) if r.get(key) not in (None, "") else float("nan")
        for t in thresholds:
            if value >= t and t not in reached:
                reached[t] = (int(r["epoch"]), elapsed)
    return reached
