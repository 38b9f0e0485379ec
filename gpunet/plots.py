"""Figures saved as PNG files: confusion-matrix heat maps and training curves.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch, no display needed), and written atomically: a figure file is
either complete or absent.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .io import atomic_path


def _save(fig: Figure, path) -> str:
    """Render ``fig`` to PNG at ``path`` via a temporary file in the same folder."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return os.fspath(path)


def confusion_heatmap(cm, class_names, path, normalize: bool = True, title: str | None = None) -> str:
    """Save a heat map of a (C, C) confusion matrix (rows = true classes) to ``path`` (PNG).

    normalize: colour and annotate each row as fractions of the true class (all-zero rows
    stay 0); otherwise raw counts. Returns ``path``.
    """
    cm = np.asarray(cm, np.float64)
    names = [str(n) for n in class_names]
    if cm.ndim != 2 or cm.shape != (len(names), len(names)):
        raise ValueError(
            f"cm: expected shape ({len(names)}, {len(names)}) for {len(names)} class names, got {cm.shape}"
        )
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.zeros_like(cm), where=rows != 0)
    else:
        values = cm
    c = len(names)
    size = max(4.0, 0.6 * c + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(values.max(), 1.0))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(c), labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix (counts)"))
    threshold = (1.0 if normalize else max(values.max(), 1.0)) / 2
    if c <= 20:  # annotations become unreadable beyond that
        for i in range(c):
            for j in range(c):
                v = values[i, j]
                ax.text(
                    j,
                    i,
                    f"{v:.2f}" if normalize else f"{int(v)}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if v > threshold else "black",
                )
    fig.tight_layout()
    return _save(fig, path)


def training_curves(history: dict, path, title: str | None = None) -> str:
    """Save loss and accuracy curves to ``path`` (PNG).

    history: ``loss`` (one value per iteration), ``train_acc`` and ``val_acc`` (one per
    epoch); missing or empty entries are left out. Returns ``path``.
    """
    loss = np.asarray(history.get("loss") or [], np.float64)
    train_acc = np.asarray(history.get("train_acc") or [], np.float64)
    val_acc = np.asarray(history.get("val_acc") or [], np.float64)
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    if loss.size:
        ax_loss.plot(np.arange(1, loss.size + 1), loss, lw=0.8, color="tab:blue", label="loss")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("loss")
    for acc, label, colour in ((train_acc, "train", "tab:orange"), (val_acc, "validation", "tab:green")):
        if acc.size:
            ax_acc.plot(np.arange(1, acc.size + 1), acc, marker="o", ms=3, color=colour, label=label)
    if train_acc.size or val_acc.size:
        ax_acc.legend()
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("classification rate")
    ax_acc.set_title("accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
