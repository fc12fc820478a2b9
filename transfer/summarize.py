"""Gather distillation runs (summary.json) and detection runs (results.json) into markdown tables."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from .results import RUN_KEYS, describe_run, student_label


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


def _run_from_work_dir(wd: Path, need_config: bool, need_student: bool) -> dict:
    """``run`` for a results.json written before it recorded one: the dumped config (mmengine, which imports
    the config's custom modules and so torch) and backbone.pth's meta (torch.load), read only when needed."""
    run: dict = {}
    if need_config:
        from mmengine.config import Config
        for py in sorted(wd.glob("*.py")):
            try:
                cfg = Config.fromfile(str(py))
            except Exception:  # not a dumped config
                continue
            if "model" in cfg and "train_cfg" in cfg:
                run.update({k: v for k, v in describe_run(cfg).items() if k in RUN_KEYS})
                break
    bb_file = wd / "backbone.pth"
    if need_student and bb_file.is_file():
        import torch
        run["student"] = torch.load(bb_file, map_location="cpu", weights_only=True).get("meta", {})
    return run


def detection_rows(root: Path) -> list[dict]:
    rows = []
    for res_file in sorted(root.rglob("results.json")):
        res = json.loads(res_file.read_text())
        if "bbox" not in res:
            continue
        wd = res_file.parent
        run = dict(res.get("run") or {})
        need_config = not all(k in run for k in RUN_KEYS)
        if need_config or "student" not in run:
            run = {**_run_from_work_dir(wd, need_config, "student" not in run), **run}
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
