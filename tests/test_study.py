"""tools/study.py: the spec expands into the tools' own commands; a killed study continues; the report."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_main, run_tool

IMAGENET_SPECS = ["configs/study/imagenet_data_scale.yaml", "configs/study/imagenet_transfer.yaml"]


@pytest.mark.parametrize("spec", IMAGENET_SPECS)
@pytest.mark.parametrize("launcher", ["none", "torchrun"])
def test_dry_run_prints_commands_without_touching_data(tmp_path, spec, launcher):
    data = tmp_path / "IMAGENET"  # does not exist: a dry run must not need it
    out = tmp_path / "out"
    r = run_tool("tools/study.py", spec, "--data-dir", str(data), "--out", str(out), "--dry-run",
                 "--launcher", launcher, "--nproc", "8", timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert not data.exists() and not out.exists() and list(tmp_path.iterdir()) == []
    import yaml
    s = yaml.safe_load((ROOT / spec).read_text())
    d = s.get("distill", {})
    n_distill = len(d.get("fractions", [])) * len(d.get("seeds", []))
    distill = [ln for ln in lines if "tools/distill.py" in ln]
    assert len(distill) == n_distill
    for ln in distill:
        assert f"--data-dir {data}" in ln and "-c configs/distill/a2.yaml" in ln
        n_settings = len(d["students"]) * len(d["methods"])
        assert ln.split("--model ")[1].split(" --")[0].split() == [m for m in d["students"] for _ in d["methods"]]
        assert len(ln.split("--kd-loss ")[1].split(" --")[0].split()) == n_settings
    det = s.get("detection", {})
    n_det = sum(len(run["inits"]) for run in det.get("runs", [])) * len(det.get("seeds", []))
    assert sum("tools/transfer.py" in ln for ln in lines) == n_det
    assert sum("tools/test.py" in ln for ln in lines) == n_det
    if launcher == "torchrun":
        assert all(ln.startswith("torchrun --standalone --nproc_per_node=8 tools/") for ln in lines)
        assert all(ln.endswith("--launcher pytorch") for ln in lines if "tools/transfer.py" in ln)
    else:
        assert all(ln.startswith("python tools/") for ln in lines)
    # every printed command parses with its tool's own parser (what a user pastes runs)
    from test_docs import parse_with_tool, tool_invocations
    calls = tool_invocations("```bash\n" + "\n".join(lines) + "\n```\n")
    assert len(calls) == len(lines)
    for tool, tool_argv in calls:
        parse_with_tool(tool, tool_argv)


def test_bad_spec_is_one_line(tmp_path):
    r = run_main("tools/study.py", str(tmp_path / "missing.yaml"), "--dry-run")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not found" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndistill: {students: [resnet18], methods: [kd, magic]}\ndata: {root: d}\n")
    r = run_main("tools/study.py", str(bad), "--dry-run")
    assert r.returncode == 2 and "unknown method 'magic'" in r.stderr and "Traceback" not in r.stderr


SMOKE_SPEC = """
name: smoke
data:
  root: {data}
  classification: "{{root}}/classification"
  coco: "{{root}}/coco"
  shapes: {{seed: 0, cls-train-per-class: 6, cls-val-per-class: 2, cls-size: 32, det-train: 8, det-val: 4}}
teacher:
  model: resnet18
  flags: &f {{img-size: 32, batch-size: 8, workers: 0, warmup-epochs: 0, drop-path: 0.0, lr: 1.0e-3,
             opt: adamw, epochs: 1, progress: log}}
distill:
  students: [resnet18]
  methods: [scratch, kd]
  fractions: [0.5, 1.0]
  seeds: [0]
  flags: *f
detection:
  seeds: [0]
  runs:
    - name: mrcnn
      config: configs/detection/cpu/mask-rcnn_r18_fpn_shapes.py
      epochs: 1
      cfg_options: {{train_dataloader.num_workers: 0, train_dataloader.persistent_workers: false,
                    val_dataloader.num_workers: 0, val_dataloader.persistent_workers: false,
                    "param_scheduler.1.milestones": "[1]"}}
      test_cfg_options: {{test_dataloader.num_workers: 0, test_dataloader.persistent_workers: false}}
      inits:
        random: {{}}
        kd: {{method: kd, fraction: 1.0}}
"""


def _markers(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (out / "jobs").glob("*.json")} if (out / "jobs").is_dir() else {}


@pytest.mark.slow
def test_killed_study_continues_and_reports(tmp_path):
    spec = tmp_path / "smoke.yaml"
    spec.write_text(SMOKE_SPEC.format(data=tmp_path / "data"))
    out = tmp_path / "out"
    argv = [sys.executable, "tools/study.py", str(spec), "--out", str(out), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # --jobs splits the cores itself
    # run until the first distillation of the grid has finished, then kill the whole process group
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    target = out / "jobs" / "distill__resnet18-frac0.5-seed0.json"
    t0 = time.time()
    while not target.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 600
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _markers(out)
    assert {"data.json", "teacher.json", "distill__resnet18-frac0.5-seed0.json"} <= set(before)
    assert not (out / "report.json").exists()

    # started again, two jobs at a time (the random-init detection runs next to the remaining distillation), with
    # OMP_NUM_THREADS=2 exported as clusters and containers do: each job still gets its share, 1 thread
    r = subprocess.run(argv + ["--jobs", "2"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**env, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert r.stdout.count("OMP_NUM_THREADS=2 in the environment; each job runs with 1 thread(s)") == 1
    after = _markers(out)
    threads = {name: json.loads((out / "jobs" / name).read_text())["threads"] for name in after}
    assert {threads[n] for n in after if n not in before} == {1}
    assert {threads[n] for n in before} == {os.cpu_count()}  # one job at a time: all the cores
    second = json.loads((out / "distill" / "resnet18-frac1-seed0" / "summary.json").read_text())
    assert second["environment"]["torch_threads"] == 1  # what the child process really ran with
    for name, mtime in before.items():  # nothing finished ran again
        assert after[name] == mtime, name
    skipped = [ln for ln in r.stdout.splitlines() if "finished earlier, skipped" in ln]
    assert len(skipped) == len(before)
    assert len(after) == 1 + 1 + 2 + 2 * 2  # data, teacher, 2 distill, (transfer + test) x 2 inits

    rep = json.loads((out / "report.json").read_text())
    assert 0 <= rep["teacher_top1"] <= 100
    got = {(d["method"], d["fraction"], d["seed"]) for d in rep["distill"]}
    assert got == {(m, f, 0) for m in ("scratch", "kd") for f in (0.5, 1.0)}
    for d in rep["distill"]:
        assert 0 <= d["top1"] <= 100
    assert {(d["init"], d["seed"]) for d in rep["detection"]} == {("random", 0), ("kd", 0)}
    for d in rep["detection"]:
        assert 0 <= d["bbox_mAP"] <= 1 and 0 <= d["segm_mAP"] <= 1
    # the report's numbers are the runs' own
    kd_dir = Path(next(d["dir"] for d in rep["distill"] if d["method"] == "kd" and d["fraction"] == 1.0))
    summary = json.loads((kd_dir.parent / "summary.json").read_text())
    assert summary["settings"]["resnet18-kd"]["top1"] == next(
        d["top1"] for d in rep["distill"] if d["method"] == "kd" and d["fraction"] == 1.0)
    test_json = json.loads((out / "detection" / "mrcnn" / "kd-seed0" / "test.json").read_text())
    assert next(d for d in rep["detection"] if d["init"] == "kd")["bbox_mAP"] == test_json["bbox"]["stats"][0]
    # the runs of the first call had 2 threads, those of the second 1: the report says so
    assert rep["environment"]["lock_sha256"] and rep["environment"]["cpu_model"]
    assert "torch_threads" in rep["environment_warning"] and len(rep["run_environments"]) == 2
    assert r.stdout.count("warning: the") == 1
    md = (out / "report.md").read_text()
    assert "## Distillation" in md and "## Detection" in md and "top1_vs_fraction.png" in md
    assert (out / "top1_vs_fraction.png").stat().st_size > 5000
    assert (out / "commands.txt").read_text().count("tools/") == len(after)
    # a third call runs nothing
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.count("finished earlier, skipped") == len(after)


def test_aggregate_is_per_variant_with_sample_sd():
    from study.report import aggregate
    rec = [{"student": "r", "method": "kd", "fraction": 0.1, "seed": s, "top1": v, "variant": "main"}
           for s, v in ((0, 45.0), (1, 49.0))]
    rec.append({"student": "r", "method": "kd", "fraction": 0.1, "seed": 0, "top1": 30.0, "variant": "weak"})
    agg = aggregate({"distill": rec, "detection": []})
    kd01 = next(r for r in agg["distill"] if r["variant"] == "main")["top1"]
    assert kd01["mean"] == 47.0 and kd01["min"] == 45.0 and kd01["max"] == 49.0 and kd01["n"] == 2
    assert abs(kd01["sd"] - 2.8284271) < 1e-6
    assert next(r for r in agg["distill"] if r["variant"] == "weak")["top1"]["mean"] == 30.0


def test_missing_data_is_one_line(tmp_path):
    r = run_main("tools/study.py", IMAGENET_SPECS[0], "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "data folder not found" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_live_line_estimates_from_the_finished_jobs_of_each_kind():
    """The study's live line: done / total, elapsed, and time left from what finished jobs of the same kind took
    (a distill cell costs what distill cells cost, not what a data job did)."""
    from study.runner import eta_seconds, job_kind, progress_line
    from study.spec import Job

    def job(i, kind, variant="main", n=4):
        return Job(f"{kind}/{i}", kind, "tools/x.py", [], [], meta={"variant": variant, "settings": dict.fromkeys(range(n))})
    jobs = [job(0, "data"), *[job(i, "distill") for i in range(1, 5)], job(5, "distill", "long", 1), job(6, "test")]
    kinds = {j.id: job_kind(j) for j in jobs}
    assert kinds["distill/1"] == "distill/main/4x1" and kinds["distill/5"] == "distill/long/1x1"
    assert eta_seconds(jobs, {}, kinds, 2) is None
    finished = {"data/0": 10.0, "distill/1": 100.0, "distill/2": 200.0}
    pending = jobs[3:]
    # two main cells at 150 each, the long cell and the test at the mean of all finished (310 / 3), two slots
    assert eta_seconds(pending, finished, kinds, 2) == pytest.approx((150 * 2 + 2 * 310 / 3) / 2)
    line = progress_line(3, 7, 3725.0, 95.0)
    assert line == "study: 3/7 jobs done, 1:02:05 elapsed, about 1:35 left"
    assert progress_line(0, 7, 5.0, None).endswith("about ? left")
