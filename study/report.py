"""Gather a study's results into report.json, report.md and plots, with the paper's numbers and claims.

Numbers are what the runs measured: per-seed records, then mean, sample standard deviation and range over
seeds. Each claim of the paper is read from a paired 95 % interval over seeds (study/claims.py, study/stats.py);
the design checks say whether the miniature converged, has a data axis and leaves the teacher room.
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.environment import environment_key, fingerprint, mixed_environments, short
from common.io import atomic_file

from . import plots as plots_
from .claims import all_claims, checks, fig1_gaps
from .spec import Job


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(jobs: list[Job]) -> dict[str, Any]:
    """Per-run records from the files the tools wrote (summary.json, test.json)."""
    # the teacher's top-1 on the students' val split (a distill run measures it) is what leaves them room; its
    # own summary's is on its own data's val split, which differs when the spec gives it its own world
    teacher_top1, own_top1, distill, detection, environments = None, None, [], [], {}
    for job in jobs:
        if job.kind == "teacher":
            s = _read_json(Path(job.meta["dir"]) / "summary.json")
            if s:
                own_top1 = next(iter(s["settings"].values()))["top1"]
                environments[job.id] = s.get("environment")
        elif job.kind == "distill":
            s = _read_json(Path(job.meta["dir"]) / "summary.json")
            if not s:
                continue
            environments[job.id] = s.get("environment")
            if teacher_top1 is None and s.get("teacher_top1") is not None:
                teacher_top1 = s["teacher_top1"]
            for name, st in s["settings"].items():
                info = job.meta["settings"].get(name)
                if info is None:
                    continue
                distill.append({"student": info["student"], "method": info["method"],
                                "variant": job.meta.get("variant", "main"),
                                "steps_factor": job.meta.get("steps_factor", 1),
                                "fraction": job.meta["fraction"], "seed": job.meta["seed"], "top1": st["top1"],
                                "top5": st["top5"], "best_top1": st["best_top1"], "epochs": s["epochs"],
                                "dir": info["dir"]})
        elif job.kind == "test":
            t = _read_json(Path(job.meta["dir"]) / "test.json")
            if not t:
                continue
            environments[job.id] = t.get("environment")
            rec = {"run": job.meta["run"], "init": job.meta["init"], "seed": job.meta["seed"]}
            for iou in ("bbox", "segm"):
                if iou in t:
                    st = t[iou]["stats"]
                    rec.update({f"{iou}_mAP": st[0], f"{iou}_mAP_50": st[1], f"{iou}_mAP_75": st[2]})
            detection.append(rec)
    return {"teacher_top1": own_top1 if teacher_top1 is None else teacher_top1, "distill": distill,
            "detection": detection, "environments": environments}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def aggregate(records: dict) -> dict:
    by_d: dict[tuple, list[float]] = defaultdict(list)
    for r in records["distill"]:
        by_d[(r["student"], r["method"], r["fraction"], r.get("variant", "main"))].append(r["top1"])
    by_t: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records["detection"]:
        for k in ("bbox_mAP", "segm_mAP"):
            if k in r:
                by_t[(r["run"], r["init"])][k].append(r[k])
    return {"distill": [{"student": s, "method": m, "fraction": f, "variant": var, "top1": spread(v)}
                        for (s, m, f, var), v in sorted(by_d.items(),
                                                        key=lambda kv: (kv[0][0], kv[0][3], kv[0][2], kv[0][1]))],
            "detection": [{"run": run, "init": init, **{k: spread(v) for k, v in d.items()}}
                          for (run, init), d in by_t.items()]}


def distinct_environments(envs: dict[str, dict | None]) -> list[dict]:
    """The runs' environments, each once, with the jobs that ran in it."""
    groups: dict[tuple, dict] = {}
    for job_id, env in envs.items():
        groups.setdefault(environment_key(env), {"environment": env, "jobs": []})["jobs"].append(job_id)
    return list(groups.values())


def _pm(s: dict, scale: float = 1.0, digits: int = 1) -> str:
    return f"{s['mean'] * scale:.{digits}f} ± {s['sd'] * scale:.{digits}f}"


# rows of the top-1 tables: the baseline, vanilla KD, then the methods it is compared with
METHOD_ORDER = ("scratch", "kd", "dkd", "dist", "bkd", "kd_nohard", "lskd", "cc", "rkd", "crd", "review")


def _ci(c: dict) -> str:
    lo, hi = c["ci95"]
    return "-" if lo is None else f"[{lo:+.2f}, {hi:+.2f}]"


def paper_fig1(spec: dict) -> list[dict]:
    """The paper's Fig. 1 bars from the spec's paper: fig1: list ({label, dkd, dist} per data point)."""
    return list(((spec.get("paper") or {}).get("fig1") or {}).get("bars") or [])


def markdown(spec: dict, records: dict, agg: dict, cl: list[dict], plots: list[str], meta: dict,
             rep: dict | None = None) -> str:
    rep = rep or {}
    paper = spec.get("paper") or {}
    lines = [f"# Study `{spec['name']}`", ""]
    if spec.get("description"):
        lines += [" ".join(str(spec["description"]).split()), ""]
    lines += [f"Profile `{spec['profile']}`; {meta['jobs']} jobs, {meta['seconds_total']:.0f} s of runs in all, "
              f"{meta['seconds_this_call']:.0f} s of wall time for this call "
              f"({meta['ran']} run now, {meta['skipped']} finished earlier); this machine: {meta['cpus']} CPU cores"
              f"{', GPU' if meta.get('gpu') else ''}, {meta.get('threads') or '?'} thread(s) per job. Numbers are "
              "mean ± sample sd over seeds; claims are read from paired 95 % t intervals over seeds.", ""]
    for env in rep.get("run_environments") or []:
        lines += [f"Environment of {len(env['jobs'])} run(s): " + (short(env["environment"]) if env["environment"]
                  else "not recorded (runs of an older version)") + ".", ""]
    if rep.get("environment_warning"):
        lines += [f"**Warning**: {rep['environment_warning']}.", ""]
    if records["teacher_top1"] is not None:
        lines += [f"Teacher: {(spec.get('teacher') or {}).get('model', '?')}, val top-1 "
                  f"{records['teacher_top1']:.1f} %.", ""]
    if rep.get("checks"):
        lines += ["## Is the miniature fit to decide?", ""]
        lines += [f"- **{'met' if c['met'] else 'NOT met'}**: {c['sentence']}." for c in rep["checks"]]
        lines.append("")
    if cl:
        lines += ["## The paper's claims, in this study", "",
                  "| claim | kind | estimate | 95 % CI | seeds | verdict |", "|---|---|---|---|---|---|"]
        for c in cl:
            kind = c["kind"] + (f" (±{c['margin']:g})" if c["kind"] == "equivalence" else "")
            est = "-" if c["estimate"] is None else f"{c['estimate']:+.2f}"
            lines.append(f"| `{c['id']}` | {kind} | {est} | {_ci(c)} | {c['n_seeds']} | **{c['verdict']}** |")
        lines += [""] + [f"- {c['sentence']}" for c in cl] + [""]
    gaps = rep.get("fig1_gaps") or []
    if gaps:
        ref = {float(k): v for k, v in (((paper.get("fig1") or {}).get("by_fraction")) or {}).items()}
        lines += ["## Fig. 1: top-1 gap over vanilla KD (points) by data fraction", "",
                  "| fraction | DKD - KD | 95 % CI | DIST - KD | 95 % CI | paper DKD / DIST |", "|---|---|---|---|---|---|"]
        for f in sorted({g["fraction"] for g in gaps}):
            cells = []
            for m in ("dkd", "dist"):
                g = next((g for g in gaps if g["fraction"] == f and g["method"] == m), None)
                lo, hi = (g["ci95"] if g else (None, None))
                cells += [f"{g['gap']:+.2f}" if g else "-",
                          "-" if g is None or lo is None else f"[{lo:+.2f}, {hi:+.2f}]"]
            r = ref.get(f)
            lines.append(f"| {f:g} | " + " | ".join(cells) + f" | {f'{r[0]:+.2f} / {r[1]:+.2f}' if r else '-'} |")
        bars = paper_fig1(spec)
        if bars:
            lines += ["", "The paper's bars (official repository, fig/data_scale_bar.png; one run each): " + "; ".join(
                f"{b['label']} {b['dkd']:+.2f} / {b['dist']:+.2f}" for b in bars) + " (DKD / DIST - KD)."]
        lines.append("")
    if agg["distill"]:
        students = sorted({r["student"] for r in agg["distill"]})
        lines += ["## Distillation: val top-1 (%)", ""]
        order = {m: i for i, m in enumerate(METHOD_ORDER)}
        for stu in students:
            variants = dict.fromkeys(r["variant"] for r in agg["distill"] if r["student"] == stu)
            for variant in sorted(variants, key=lambda v: (v != "main", v)):  # the grid first
                rows = sorted((r for r in agg["distill"] if r["student"] == stu and r["variant"] == variant),
                              key=lambda r: order.get(r["method"], len(order)))
                fractions = sorted({r["fraction"] for r in rows})
                seeds = sorted({r["seed"] for r in records["distill"] if r.get("variant", "main") == variant})
                lines += [f"Student {stu}, {variant if variant != 'main' else 'the grid'}; seeds {seeds}.", "",
                          "| method | " + " | ".join(f"fraction {f:g}" for f in fractions) + " |",
                          "|---|" + "---|" * len(fractions)]
                for m in dict.fromkeys(r["method"] for r in rows):
                    cells = []
                    for f in fractions:
                        r = next((r for r in rows if (r["method"], r["fraction"]) == (m, f)), None)
                        cells.append(_pm(r["top1"]) if r else "-")
                    lines.append(f"| {m} | " + " | ".join(cells) + " |")
                lines.append("")
        pd = paper.get("distill") or {}
        if pd.get("note"):
            lines += [str(pd["note"]), ""]
    if agg["detection"]:
        pt = paper.get("detection") or {}
        lines += ["## Detection: COCO AP x 100 by backbone initialisation", "",
                  "| run | init | box AP | mask AP | seeds |", "|---|---|---|---|---|"]
        for r in agg["detection"]:
            n = r.get("bbox_mAP", {}).get("n", 0)
            lines.append(f"| {r['run']} | {r['init']} | {_pm(r['bbox_mAP'], 100) if 'bbox_mAP' in r else '-'} | "
                         f"{_pm(r['segm_mAP'], 100) if 'segm_mAP' in r else '-'} | {n} |")
        lines.append("")
        if pt.get("note"):
            lines += [" ".join(str(pt["note"]).split()), ""]
    limits = paper.get("cannot_show")
    if limits:
        lines += ["## What this study cannot show", ""] + [f"- {' '.join(str(x).split())}" for x in limits] + [""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", "Per-run records: `report.json`; commands: `commands.txt`; logs: `logs/`.", ""]
    return "\n".join(lines)


def write(out: Path, spec: dict, jobs: list[Job], meta: dict) -> dict:
    records = collect(jobs)
    agg = aggregate(records)
    cl = all_claims(records, spec)
    gaps = [g for stu in sorted({r["student"] for r in records["distill"]}) for g in fig1_gaps(records["distill"], stu)]
    plots = [*plots_.fig1(out, gaps, paper_fig1(spec), spec["name"]),
             *plots_.top1_vs_fraction(out, agg["distill"], spec["name"]),
             *plots_.learning_curves(out, records["distill"], spec["name"]),
             *plots_.detection(out, agg["detection"], spec["name"])]
    envs = records["environments"]
    rep = {"name": spec["name"], "profile": spec["profile"], "teacher_top1": records["teacher_top1"],
           "distill": records["distill"], "detection": records["detection"], "aggregate": agg,
           "fig1_gaps": gaps,
           "claims": cl, "checks": checks(records, spec), "paper": spec.get("paper") or {}, **meta,
           "environment": fingerprint(), "run_environments": distinct_environments(envs),
           "environment_warning": mixed_environments(list(envs.values()))}
    with atomic_file(out / "report.json", "w") as f:
        json.dump(rep, f, indent=2)
    with atomic_file(out / "report.md", "w") as f:
        f.write(markdown(spec, records, agg, cl, plots, meta, rep))
    return rep
