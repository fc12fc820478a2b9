"""Gather a study's results into report.json, report.md and plots, with the paper's numbers and claims.

Numbers are what the runs measured: per-seed records, then mean, sample standard deviation and range over
seeds. Each claim of the paper gets one sentence saying whether the study agrees, with the measured
difference; differences are paired by seed (methods of one seed share batches and initial weights).
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.io import atomic_file

from .spec import Job


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(jobs: list[Job]) -> dict[str, Any]:
    """Per-run records from the files the tools wrote (summary.json, test.json)."""
    teacher_top1, distill, detection = None, [], []
    for job in jobs:
        if job.kind == "teacher":
            s = _read_json(Path(job.meta["dir"]) / "summary.json")
            if s:
                teacher_top1 = next(iter(s["settings"].values()))["top1"]
        elif job.kind == "distill":
            s = _read_json(Path(job.meta["dir"]) / "summary.json")
            if not s:
                continue
            if teacher_top1 is None and s.get("teacher_top1") is not None:
                teacher_top1 = s["teacher_top1"]
            for name, st in s["settings"].items():
                info = job.meta["settings"].get(name)
                if info is None:
                    continue
                distill.append({"student": info["student"], "method": info["method"],
                                "fraction": job.meta["fraction"], "seed": job.meta["seed"], "top1": st["top1"],
                                "top5": st["top5"], "best_top1": st["best_top1"], "epochs": s["epochs"],
                                "dir": info["dir"]})
        elif job.kind == "test":
            t = _read_json(Path(job.meta["dir"]) / "test.json")
            if not t:
                continue
            rec = {"run": job.meta["run"], "init": job.meta["init"], "seed": job.meta["seed"]}
            for iou in ("bbox", "segm"):
                if iou in t:
                    st = t[iou]["stats"]
                    rec.update({f"{iou}_mAP": st[0], f"{iou}_mAP_50": st[1], f"{iou}_mAP_75": st[2]})
            detection.append(rec)
    return {"teacher_top1": teacher_top1, "distill": distill, "detection": detection}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def aggregate(records: dict) -> dict:
    by_d: dict[tuple, list[float]] = defaultdict(list)
    for r in records["distill"]:
        by_d[(r["student"], r["method"], r["fraction"])].append(r["top1"])
    by_t: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records["detection"]:
        for k in ("bbox_mAP", "segm_mAP"):
            if k in r:
                by_t[(r["run"], r["init"])][k].append(r[k])
    return {"distill": [{"student": s, "method": m, "fraction": f, "top1": spread(v)}
                        for (s, m, f), v in sorted(by_d.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1]))],
            "detection": [{"run": run, "init": init, **{k: spread(v) for k, v in d.items()}}
                          for (run, init), d in by_t.items()]}


def _paired(records: list[dict], key: str, a: dict, b: dict) -> list[float]:
    """Per-seed differences a - b of ``key`` between records matching the filters a and b."""
    def pick(flt):
        return {r["seed"]: r[key] for r in records if all(r.get(k) == v for k, v in flt.items()) and key in r}
    ra, rb = pick(a), pick(b)
    return [ra[s] - rb[s] for s in sorted(set(ra) & set(rb))]


def _verdict(diffs: list[float]) -> str:
    if not diffs:
        return "not measured"
    if all(d > 0 for d in diffs):
        return "agrees"
    if all(d < 0 for d in diffs):
        return "disagrees"
    return "inconclusive"


def _says(verdict: str) -> str:
    """A verdict as the end of a sentence about the miniature."""
    return {"inconclusive": "is inconclusive (the seeds disagree)", "not measured": "does not measure it"}.get(
        verdict, verdict)


def _fmt_diffs(diffs: list[float], scale: float = 1.0, unit: str = "") -> str:
    s = spread([d * scale for d in diffs])
    return f"{s['mean']:+.2f}{unit} (per seed: {', '.join(f'{d * scale:+.2f}' for d in diffs)})"


def claims(records: dict, spec: dict) -> list[dict]:
    """The paper's claims this study can speak to, each with a verdict and one sentence."""
    out: list[dict] = []
    d = records["distill"]
    fractions = sorted({r["fraction"] for r in d})
    methods = {r["method"] for r in d}
    students = sorted({r["student"] for r in d})
    for stu in students:
        if fractions and {"kd", "scratch"} <= methods:
            f0 = fractions[0]
            diffs = _paired(d, "top1", dict(student=stu, method="kd", fraction=f0),
                            dict(student=stu, method="scratch", fraction=f0))
            v = _verdict(diffs)
            out.append({"claim": "kd_beats_scratch", "verdict": v, "fraction": f0, "student": stu,
                        "diffs": diffs, "text": (
                f"Distillation helps (paper: a KD student beats the same recipe without a teacher): with "
                f"{f0:g} of the data, {stu} KD - scratch top-1 = {_fmt_diffs(diffs, unit=' points')}; the "
                f"miniature {_says(v)}.")})
        others = [m for m in ("dkd", "dist") if m in methods]
        if len(fractions) > 1 and "kd" in methods and others:
            gaps = {}
            for f in (fractions[0], fractions[-1]):
                per_other = [_paired(d, "top1", dict(student=stu, method="kd", fraction=f),
                                     dict(student=stu, method=o, fraction=f)) for o in others]
                # KD minus the best other method, per seed
                gaps[f] = [min(vals) for vals in zip(*per_other)] if all(per_other) else []
            g0, g1 = gaps[fractions[0]], gaps[fractions[-1]]
            if g0 and g1 and len(g0) == len(g1):
                m0, m1 = statistics.fmean(g0), statistics.fmean(g1)
                # the trend must hold within every seed (paired), not only in the means: a change of the mean
                # gap that one seed contradicts is inside the seed spread
                trend = _verdict([b - a for a, b in zip(g0, g1)])
                competitive = _verdict(g1) != "disagrees"
                v = "agrees" if trend == "agrees" and competitive else \
                    "disagrees" if trend == "disagrees" or not competitive else "inconclusive"
            else:
                m0 = m1 = float("nan")
                v = "not measured"
            names = "/".join(o.upper() for o in others)
            out.append({"claim": "kd_catches_up_with_data", "verdict": v, "student": stu,
                        "gap_smallest": g0, "gap_largest": g1, "text": (
                f"Fig. 1 (paper: the edge of DKD and DIST over vanilla KD shrinks as data grows, and KD matches "
                f"them at scale): KD minus the best of {names} is {m0:+.2f} points at fraction {fractions[0]:g} "
                f"and {m1:+.2f} at {fractions[-1]:g} (per seed: {', '.join(f'{x:+.2f}' for x in g0)} -> "
                f"{', '.join(f'{x:+.2f}' for x in g1)}); the miniature {_says(v)}.")})
    t = records["detection"]
    for run in sorted({r["run"] for r in t}):
        inits = {r["init"] for r in t if r["run"] == run}
        if {"kd", "supervised"} <= inits:
            for key, label in (("bbox_mAP", "box"), ("segm_mAP", "mask")):
                diffs = _paired(t, key, dict(run=run, init="kd"), dict(run=run, init="supervised"))
                v = _verdict(diffs)
                out.append({"claim": f"kd_backbone_transfers_better_{label}", "verdict": v, "run": run,
                            "diffs": diffs, "text": (
                    f"Table 11 (paper: a distilled backbone gives higher {label} AP than a supervised one, "
                    f"+3.6 box / +3.0 mask AP for Mask R-CNN R50 1x): {run} KD - supervised {label} AP = "
                    f"{_fmt_diffs(diffs, 100)} (AP x 100); the miniature {_says(v)}.")})
        if {"kd", "random"} <= inits:
            diffs = _paired(t, "bbox_mAP", dict(run=run, init="kd"), dict(run=run, init="random"))
            v = _verdict(diffs)
            out.append({"claim": "pretraining_matters", "verdict": v, "run": run, "diffs": diffs, "text": (
                f"Sanity check (not a claim of the paper): {run} from the KD backbone - from a random backbone, "
                f"box AP = {_fmt_diffs(diffs, 100)} (AP x 100); {'as expected' if v == 'agrees' else v}.")})
    return out


def plot(out: Path, agg: dict, name: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    rows = agg["distill"]
    if rows:
        students = sorted({r["student"] for r in rows})
        fig, axes = plt.subplots(1, len(students), figsize=(6 * len(students), 4.2), squeeze=False)
        for ax, stu in zip(axes[0], students):
            for m in dict.fromkeys(r["method"] for r in rows if r["student"] == stu):
                rs = sorted((r for r in rows if r["student"] == stu and r["method"] == m), key=lambda r: r["fraction"])
                x = [r["fraction"] for r in rs]
                mean = [r["top1"]["mean"] for r in rs]
                lo = [r["top1"]["mean"] - r["top1"]["min"] for r in rs]
                hi = [r["top1"]["max"] - r["top1"]["mean"] for r in rs]
                ax.errorbar(x, mean, yerr=[lo, hi], marker="o", capsize=3, label=m)
            ax.set_xscale("log")
            ax.set_xticks(sorted({r["fraction"] for r in rows}))
            ax.set_xticklabels([f"{f:g}" for f in sorted({r["fraction"] for r in rows})])
            ax.set(title=f"{name}: {stu} top-1 vs data fraction", xlabel="fraction of the training set",
                   ylabel="val top-1 (%)")
            ax.grid(alpha=0.3)
            ax.legend(title="mean, bars: seed range")
        fig.tight_layout()
        fig.savefig(out / "top1_vs_fraction.png", dpi=110)
        plt.close(fig)
        files.append("top1_vs_fraction.png")
    det = agg["detection"]
    if det:
        fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(det), 3.8))
        labels = [f"{r['run']}\n{r['init']}" for r in det]
        for j, key in enumerate(("bbox_mAP", "segm_mAP")):
            xs = [i + (j - 0.5) * 0.38 for i in range(len(det))]
            ys = [100 * r[key]["mean"] if key in r else 0 for r in det]
            err = [[100 * (r[key]["mean"] - r[key]["min"]) for r in det if key in r],
                   [100 * (r[key]["max"] - r[key]["mean"]) for r in det if key in r]]
            ax.bar(xs, ys, width=0.38, yerr=err if len(err[0]) == len(det) else None, capsize=3,
                   label="box AP" if key == "bbox_mAP" else "mask AP")
        ax.set_xticks(range(len(det)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set(ylabel="COCO AP x 100", title=f"{name}: detection by backbone initialisation")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(out / "detection_ap.png", dpi=110)
        plt.close(fig)
        files.append("detection_ap.png")
    return files


def _pm(s: dict, scale: float = 1.0, digits: int = 1) -> str:
    return f"{s['mean'] * scale:.{digits}f} ± {s['sd'] * scale:.{digits}f}"


def markdown(spec: dict, records: dict, agg: dict, cl: list[dict], plots: list[str], meta: dict) -> str:
    paper = spec.get("paper") or {}
    lines = [f"# Study `{spec['name']}`", ""]
    if spec.get("description"):
        lines += [" ".join(str(spec["description"]).split()), ""]
    lines += [f"Profile `{spec['profile']}`; {meta['jobs']} jobs, {meta['seconds_total']:.0f} s of runs in all, "
              f"{meta['seconds_this_call']:.0f} s of wall time for this call "
              f"({meta['ran']} run now, {meta['skipped']} finished earlier); this machine: {meta['cpus']} CPU cores"
              f"{', GPU' if meta.get('gpu') else ''}. Numbers are mean ± sample sd over seeds "
              f"(the plots show the seed range).", ""]
    if records["teacher_top1"] is not None:
        lines += [f"Teacher: {(spec.get('teacher') or {}).get('model', '?')}, val top-1 "
                  f"{records['teacher_top1']:.1f} %.", ""]
    if cl:
        lines += ["## The paper's claims, in this study", ""]
        lines += [f"- **{c['verdict']}**: {c['text']}" for c in cl]
        lines.append("")
    if agg["distill"]:
        students = sorted({r["student"] for r in agg["distill"]})
        fractions = sorted({r["fraction"] for r in agg["distill"]})
        methods = list(dict.fromkeys(r["method"] for r in agg["distill"]))
        pd = paper.get("distill") or {}
        lines += ["## Distillation: val top-1 (%) by data fraction", ""]
        for stu in students:
            lines += [f"Student {stu}; seeds {sorted({r['seed'] for r in records['distill']})}.", "",
                      "| method | " + " | ".join(f"fraction {f:g}" for f in fractions) + " |",
                      "|---|" + "---|" * len(fractions)]
            for m in methods:
                cells = []
                for f in fractions:
                    r = next((r for r in agg["distill"] if (r["student"], r["method"], r["fraction"]) == (stu, m, f)), None)
                    cell = _pm(r["top1"]) if r else "-"
                    ref = (pd.get(m) or {}).get(f) if isinstance(pd.get(m), dict) else None
                    if ref is not None:
                        cell += f" (paper {ref})"
                    cells.append(cell)
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
        if pd.get("note"):
            lines += [str(pd["note"]), ""]
    if agg["detection"]:
        pt = paper.get("detection") or {}
        lines += ["## Detection: COCO AP x 100 by backbone initialisation", "",
                  "| run | init | box AP | mask AP | paper box / mask | seeds |", "|---|---|---|---|---|---|"]
        for r in agg["detection"]:
            ref = (pt.get(r["run"]) or {}).get(r["init"]) or {}
            refs = f"{ref.get('bbox', '-')} / {ref.get('segm', '-')}" + (f" ({ref['source']})" if ref.get("source") else "")
            n = r.get("bbox_mAP", {}).get("n", 0)
            lines.append(f"| {r['run']} | {r['init']} | {_pm(r['bbox_mAP'], 100) if 'bbox_mAP' in r else '-'} | "
                         f"{_pm(r['segm_mAP'], 100) if 'segm_mAP' in r else '-'} | {refs if ref else '-'} | {n} |")
        lines.append("")
        if pt.get("note"):
            lines += [str(pt["note"]), ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", "Per-run records: `report.json`; commands: `commands.txt`; logs: `logs/`.", ""]
    return "\n".join(lines)


def write(out: Path, spec: dict, jobs: list[Job], meta: dict) -> dict:
    records = collect(jobs)
    agg = aggregate(records)
    cl = claims(records, spec)
    plots = plot(out, agg, spec["name"])
    rep = {"name": spec["name"], "profile": spec["profile"], "teacher_top1": records["teacher_top1"],
           "distill": records["distill"], "detection": records["detection"], "aggregate": agg, "claims": cl,
           "paper": spec.get("paper") or {}, **meta}
    with atomic_file(out / "report.json", "w") as f:
        json.dump(rep, f, indent=2)
    with atomic_file(out / "report.md", "w") as f:
        f.write(markdown(spec, records, agg, cl, plots, meta))
    return rep
