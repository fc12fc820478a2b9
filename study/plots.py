"""The study's figures: Fig. 1 as the paper draws it (with our intervals beside the paper's bars), top-1 against
the data fraction, learning curves of one seed, detection AP by backbone. Each returns the file names it wrote."""
from __future__ import annotations

import csv
from pathlib import Path

COLORS = {"dkd": "tab:orange", "dist": "tab:green"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def fig1(out: Path, gaps: list[dict], paper: list[dict], name: str) -> list[str]:
    """Bars of DKD - KD and DIST - KD per data fraction: the paper's (fig/data_scale_bar.png, one run per bar)
    and ours (mean over seeds, 95 % t interval)."""
    if not gaps:
        return []
    plt = _plt()
    panels = [("paper (ResNet-50, BEiTv2-B teacher)", paper, False)] if paper else []
    panels.append((f"{name} (mean, 95 % CI over seeds)", gaps, True))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, rows, ours) in zip(axes[0], panels):
        groups = list(dict.fromkeys(r["fraction"] if ours else r["label"] for r in rows))
        for j, m in enumerate(("dkd", "dist")):
            xs, ys, err = [], [], [[], []]
            for i, g in enumerate(groups):
                if ours:
                    r = next((r for r in rows if r["fraction"] == g and r["method"] == m), None)
                    if r is None:
                        continue
                    y, (lo, hi) = r["gap"], r["ci95"]
                    err[0].append(0 if lo is None else y - lo)  # one seed: no interval to draw
                    err[1].append(0 if hi is None else hi - y)
                else:
                    y = next((r[m] for r in rows if r["label"] == g), None)
                    if y is None:
                        continue
                xs.append(i + (j - 0.5) * 0.38)
                ys.append(y)
            ax.bar(xs, ys, width=0.38, color=COLORS[m], label=f"{m.upper()} - KD",
                   yerr=err if ours and err[0] else None, capsize=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{g:g}" if ours else str(g) for g in groups])
        ax.set(title=title, xlabel="fraction of the training set" if ours else "data",
               ylabel="top-1 gap over vanilla KD (points)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fig1_gaps.png", dpi=110)
    plt.close(fig)
    return ["fig1_gaps.png"]


def top1_vs_fraction(out: Path, rows: list[dict], name: str) -> list[str]:
    rows = [r for r in rows if r.get("variant", "main") == "main"]
    if not rows:
        return []
    plt = _plt()
    students = sorted({r["student"] for r in rows})
    fig, axes = plt.subplots(1, len(students), figsize=(6 * len(students), 4.2), squeeze=False)
    fractions = sorted({r["fraction"] for r in rows})
    for ax, stu in zip(axes[0], students):
        for m in dict.fromkeys(r["method"] for r in rows if r["student"] == stu):
            rs = sorted((r for r in rows if r["student"] == stu and r["method"] == m), key=lambda r: r["fraction"])
            mean = [r["top1"]["mean"] for r in rs]
            lo = [r["top1"]["mean"] - r["top1"]["min"] for r in rs]
            hi = [r["top1"]["max"] - r["top1"]["mean"] for r in rs]
            ax.errorbar([r["fraction"] for r in rs], mean, yerr=[lo, hi], marker="o", capsize=3, label=m)
        ax.set_xscale("log")
        ax.set_xticks(fractions)
        ax.set_xticklabels([f"{f:g}" for f in fractions])
        ax.set(title=f"{name}: {stu} top-1 vs data fraction", xlabel="fraction of the training set",
               ylabel="val top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(title="mean, bars: seed range")
    fig.tight_layout()
    fig.savefig(out / "top1_vs_fraction.png", dpi=110)
    plt.close(fig)
    return ["top1_vs_fraction.png"]


def learning_curves(out: Path, records: list[dict], name: str) -> list[str]:
    """Val top-1 per epoch of every method of the first seed, one panel per data fraction (from metrics.csv)."""
    main = [r for r in records if r.get("variant", "main") == "main" and r.get("dir")]
    if not main:
        return []
    seed = min(r["seed"] for r in main)
    fractions = sorted({r["fraction"] for r in main})
    plt = _plt()
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.4 * len(fractions), 3.6), squeeze=False)
    drawn = False
    for ax, f in zip(axes[0], fractions):
        for r in (r for r in main if r["seed"] == seed and r["fraction"] == f):
            path = Path(r["dir"]) / "metrics.csv"
            if not path.is_file():
                continue
            with open(path) as fh:
                rows = [row for row in csv.DictReader(fh) if row.get("val_top1")]
            if rows:
                ax.plot([int(row["epoch"]) for row in rows], [float(row["val_top1"]) for row in rows], marker=".",
                        label=r["method"])
                drawn = True
        ax.set(title=f"fraction {f:g}, seed {seed}", xlabel="epoch", ylabel="val top-1 (%)")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    if not drawn:
        plt.close(fig)
        return []
    fig.suptitle(f"{name}: learning curves")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)
    return ["learning_curves.png"]


def detection(out: Path, det: list[dict], name: str) -> list[str]:
    if not det:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(det), 3.8))
    for j, key in enumerate(("bbox_mAP", "segm_mAP")):
        xs = [i + (j - 0.5) * 0.38 for i in range(len(det))]
        ys = [100 * r[key]["mean"] if key in r else 0 for r in det]
        err = [[100 * (r[key]["mean"] - r[key]["min"]) for r in det if key in r],
               [100 * (r[key]["max"] - r[key]["mean"]) for r in det if key in r]]
        ax.bar(xs, ys, width=0.38, yerr=err if len(err[0]) == len(det) else None, capsize=3,
               label="box AP" if key == "bbox_mAP" else "mask AP")
    ax.set_xticks(range(len(det)))
    ax.set_xticklabels([f"{r['run']}\n{r['init']}" for r in det], fontsize=8)
    ax.set(ylabel="COCO AP x 100", title=f"{name}: detection by backbone initialisation")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "detection_ap.png", dpi=110)
    plt.close(fig)
    return ["detection_ap.png"]
