"""Gather distillation runs (summary.json) and detection runs (results.json) into markdown tables."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from .results import student_label


def _schedule(epochs: int | None) -> str:
    if not epochs:
        return "-"
    return f"{epochs // 12}x" if epochs % 12 == 0 else f"{epochs} ep"


def distillation_rows(root: Path) -> list[dict]:
    rows = []
    for summary in sorted(root.rglob("summary.json")):
        s = json.loads(summary.read_text())
        if "settings" not in s:
            continue
        cfg_file = summary.parent / "config.yaml"
        cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
        for name, st in s["settings"].items():
            rows.append({"run": summary.parent.name, "method": st.get("kd_loss") or "supervised",
                         "teacher": s.get("teacher") or "-", "student": st.get("model"),
                         "epochs": s.get("epochs"), "top1": st.get("top1"), "top5": st.get("top5"),
                         "ema_top1": st.get("ema_top1"), "data": cfg.get("data_dir", "-")})
    return rows


def _student_from_backbone(wd: Path) -> dict | None:
    """The student of a run resumed without --checkpoint (results.json then leaves ``student`` out): the meta that
    tools/transfer.py wrote into the work dir's backbone.pth."""
    bb_file = wd / "backbone.pth"
    if not bb_file.is_file():
        return None
    import torch
    return torch.load(bb_file, map_location="cpu", weights_only=True).get("meta") or None


def detection_rows(root: Path) -> list[dict]:
    rows = []
    for res_file in sorted(root.rglob("results.json")):
        res = json.loads(res_file.read_text())
        if "bbox" not in res:
            continue
        wd = res_file.parent
        run = dict(res.get("run") or {})
        if "student" not in run:
            student = _student_from_backbone(wd)
            if student:
                run["student"] = student
        rows.append({"run": wd.name, "detector": run.get("detector", "-"), "backbone": run.get("backbone", "-"),
                     "student": student_label(run["student"]) if "student" in run else "-",
                     "schedule": _schedule(run.get("max_epochs")), "box_ap": res["bbox"]["mAP"],
                     "mask_ap": res.get("segm", {}).get("mAP")})
    return rows


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if pct else f"{100 * v:.1f}"
    return str(v)


def markdown(dirs: list[str | Path]) -> str:
    dist, det = [], []
    for d in dirs:
        dist += distillation_rows(Path(d))
        det += detection_rows(Path(d))
    out = []
    if dist:
        out += ["| run | method | teacher | student | epochs | top-1 | top-5 |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r['run']} | {r['method']} | {r['teacher']} | {r['student']} | {r['epochs']} | "
                f"{_fmt(r['top1'], True)} | {_fmt(r['top5'], True)} |" for r in dist]
        out.append("")
    if det:
        out += ["| run | detector | backbone | student | schedule | box AP | mask AP |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r['run']} | {r['detector']} | {r['backbone']} | {r['student']} | {r['schedule']} | "
                f"{_fmt(r['box_ap'])} | {_fmt(r['mask_ap'])} |" for r in det]
        out.append("")
    return "\n".join(out) if out else "no runs found (looked for summary.json and results.json)\n"
