"""tools/study.py --executor slurm|local: real submitit job objects against stand-in Slurm commands.

tests/fake_slurm.py plays sbatch/srun/squeue/sacct/scancel/scontrol on this machine (as submitit's own tests
record sbatch scripts): it keeps every script, honours afterok dependencies and kill-on-invalid-dep, runs the
jobs with Slurm's variables, delivers ``scancel --signal`` to the job's tasks and requeues on ``scontrol
requeue``. The study's commands, submitit's job objects and the tools are the real ones.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_main, run_tool

FAKE = ROOT / "tests" / "fake_slurm.py"
COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scancel", "scontrol")

SLURM_SECTION = """
slurm: {{nodes: 1, gpus_per_node: 0, tasks_per_node: 1, cpus_per_task: 2, mem_gb: 4, timeout_min: 30,
         kinds: {{test: {{timeout_min: 10}}}}}}
"""

# data -> teacher -> distill (2 epochs, a checkpoint every epoch) -> transfer -> test -> report
TINY_SPEC = """
name: tiny
data:
  root: {data}
  classification: "{{root}}/classification"
  coco: "{{root}}/coco"
  shapes: {{seed: 0, cls-train-per-class: 6, cls-val-per-class: 2, cls-size: 32, det-train: 8, det-val: 4}}
teacher:
  model: resnet10t
  flags: &f {{img-size: 32, batch-size: 8, workers: 0, warmup-epochs: 0, drop-path: 0.0, lr: 1.0e-3,
             opt: adamw, epochs: 1, progress: log, no-aug: true}}
distill:
  students: [resnet18]
  methods: [kd]
  fractions: [1.0]
  seeds: [0]
  flags: {{<<: *f, save-interval: 1}}
  epochs_by_fraction: {{1.0: 2}}
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
        kd: {{method: kd, fraction: 1.0}}
""" + SLURM_SECTION

# a study where one job fails at once (its config does not exist): distillation must still finish
BROKEN_SPEC = """
name: broken
data:
  root: {data}
  classification: "{{root}}/classification"
  coco: "{{root}}/coco"
  shapes: {{seed: 0, cls-train-per-class: 4, cls-val-per-class: 2, cls-size: 32, det-train: 4, det-val: 2}}
distill:
  students: [resnet10t]
  methods: [scratch]
  fractions: [1.0]
  seeds: [0]
  flags: {{img-size: 32, batch-size: 8, workers: 0, warmup-epochs: 0, epochs: 1, progress: log, no-aug: true}}
detection:
  seeds: [0]
  runs:
    - {{name: gone, config: configs/detection/no_such_config.py, epochs: 1, inits: {{random: {{}}}}}}
""" + SLURM_SECTION.replace("kinds: {{", "kinds: {{distill: {{tasks_per_node: 2}}, ")  # DDP over 2 Slurm tasks


@pytest.fixture
def slurm_env(tmp_path):
    """PATH with the stand-in Slurm commands first; their state in tmp_path/slurm-state."""
    bindir, state = tmp_path / "slurm-bin", tmp_path / "slurm-state"
    bindir.mkdir()
    state.mkdir()
    for name in COMMANDS:
        exe = bindir / name
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {name} "$@"\n')
        exe.chmod(0o755)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state),
           "FAKE_SLURM_PARTITIONS": "cpu,gpu", "FAKE_SLURM_ACCOUNTS": "vkd", "PYTHONPATH": str(ROOT)}
    yield env
    for p in (state / "jobs").glob("*.json"):  # nothing keeps running after the test
        job = json.loads(p.read_text())
        if job["state"] not in ("COMPLETED", "FAILED", "CANCELLED"):
            subprocess.run([sys.executable, str(FAKE), "scancel", job["id"]], env={**os.environ, **env})
        for pg in job.get("task_pgids", []) + [job.get("batch_pgid") or 0]:
            if pg:
                try:
                    os.killpg(pg, signal.SIGKILL)
                except OSError:
                    pass


def _jobs(env) -> dict[str, dict]:
    d = Path(env["FAKE_SLURM_DIR"]) / "jobs"
    return {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")}


def _scripts(env) -> dict[str, str]:
    d = Path(env["FAKE_SLURM_DIR"]) / "scripts"
    return {p.stem: p.read_text() for p in d.glob("*.sh")} if d.is_dir() else {}


def _records(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in (json.loads(p.read_text()) for p in (out / "slurm").glob("*.json"))}


def _study(spec: Path, out: Path, env: dict, *extra: str, timeout: int = 300):
    return run_tool("tools/study.py", str(spec), "--out", str(out), *extra, env=env, timeout=timeout)


def _wait_all_final(env, timeout: float, what=None) -> dict:
    t0 = time.time()
    while True:
        jobs = _jobs(env)
        if jobs and all(j["state"] in ("COMPLETED", "FAILED", "CANCELLED") for j in jobs.values()):
            return jobs
        if what is not None:
            what()
        assert time.time() - t0 < timeout, {k: j["state"] for k, j in jobs.items()}
        time.sleep(0.3)


def _write(tmp_path: Path, text: str, name: str) -> Path:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text.format(data=tmp_path / f"data-{name}"))
    return spec


def test_whole_study_is_submitted_at_once_with_resources_and_afterok_chain(tmp_path, slurm_env):
    spec = _write(tmp_path, TINY_SPEC, "tiny")
    out = tmp_path / "out"
    (Path(slurm_env["FAKE_SLURM_DIR"]) / "hold").touch()  # the jobs stay pending
    r = _study(spec, out, slurm_env, "--executor", "slurm", "--partition", "gpu", "--account", "vkd",
               "--qos", "high", "--constraint", "volta")
    assert r.returncode == 0, r.stderr[-3000:]
    from study.spec import expand, load_spec
    jobs = expand(load_spec(spec), out)
    recs = _records(out)
    scripts = _scripts(slurm_env)
    assert set(recs) == {j.id for j in jobs} | {"report"}
    assert len(scripts) == len(jobs) + 1  # one script per study job, and the report's
    for job in jobs:
        sbatch = scripts[recs[job.id]["slurm_id"]]
        for line in ("--partition=gpu", "--account=vkd", "--qos=high", "--constraint=volta", "--nodes=1",
                     "--ntasks-per-node=1", "--cpus-per-task=2"):
            assert f"#SBATCH {line}\n" in sbatch, (job.id, line)
        # the spec's section, its kinds entry for test jobs; the data job is one process with its own defaults
        want_time, want_mem = {"test": (10, 4), "data": (120, 16)}.get(job.kind, (30, 4))
        assert f"#SBATCH --time={want_time}\n" in sbatch and f"#SBATCH --mem={want_mem}GB\n" in sbatch, job.id
        want = [recs[d]["slurm_id"] for d in job.after]
        deps = re.findall(r"#SBATCH --dependency=(\S+)", sbatch)
        assert deps == ([f"afterok:{':'.join(want)}"] if want else []), job.id
        assert "srun" in sbatch and "submitit.core._submit" in sbatch
    report_deps = re.findall(r"#SBATCH --dependency=afterok:(\S+)", scripts[recs["report"]["slurm_id"]])
    assert sorted(report_deps[0].split(":")) == sorted(recs[j.id]["slurm_id"] for j in jobs)

    # the same command again: everything is pending, nothing is submitted twice
    r = _study(spec, out, slurm_env, "--executor", "slurm", "--partition", "gpu", "--account", "vkd",
               "--qos", "high", "--constraint", "volta")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nothing to submit" in r.stdout and len(_scripts(slurm_env)) == len(jobs) + 1

    r = _study(spec, out, slurm_env, "--status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(jobs) + 1
    for job, line in zip([*jobs, None], lines):
        jid = job.id if job else "report"
        assert line.split()[:5] == ["pending", jid, "slurm", recs[jid]["slurm_id"], "PENDING"], line
        assert line.endswith(recs[jid]["log"])

    r = _study(spec, out, slurm_env, "--cancel")
    assert r.returncode == 0 and f"cancelled {len(jobs) + 1} job(s)" in r.stdout, r.stdout + r.stderr
    r = _study(spec, out, slurm_env, "--status")
    assert all(ln.split()[0] == "failed" and ln.split()[4] == "CANCELLED" for ln in r.stdout.strip().splitlines())


def _one_line_error(r) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().count("\n") == 0, r.stderr
    return r.stderr


def test_bad_input_is_one_line(tmp_path, slurm_env, monkeypatch):
    """In-process (tools/study.py's main): the stand-in Slurm commands are found on PATH as a process would."""
    spec = _write(tmp_path, TINY_SPEC, "tiny")
    out = tmp_path / "out"
    (Path(slurm_env["FAKE_SLURM_DIR"]) / "hold").touch()

    def study(spec_path: Path, env: dict, *extra: str):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            return run_main("tools/study.py", str(spec_path), "--out", str(out), *extra)

    no_slurm = {**slurm_env, "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                     if not (Path(p) / "sbatch").exists())}
    err = _one_line_error(study(spec, no_slurm, "--executor", "slurm"))
    assert "sbatch" in err and "PATH" in err and "--executor local" in err
    err = _one_line_error(study(spec, slurm_env, "--executor", "slurm", "--partition", "nope"))
    assert "Invalid partition name specified" in err and "sbatch" in err
    err = _one_line_error(study(spec, slurm_env, "--executor", "slurm", "--account", "other"))
    assert "Invalid account or account/partition combination specified" in err
    assert not _jobs(slurm_env)  # the first refusal stopped the submission
    bare = tmp_path / "bare.yaml"
    bare.write_text(spec.read_text().split("\nslurm:")[0])
    err = _one_line_error(study(bare, slurm_env, "--executor", "slurm"))
    assert "no slurm: section" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("mem_gb: 4", "memory: 4"))
    err = _one_line_error(study(bad, slurm_env, "--executor", "slurm", "--dry-run"))
    assert "unknown keys: memory" in err


@pytest.mark.slow
def test_failed_job_takes_down_only_its_dependents(tmp_path, slurm_env):
    spec = _write(tmp_path, BROKEN_SPEC, "broken")
    out = tmp_path / "out"
    r = _study(spec, out, slurm_env, "--executor", "slurm")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _wait_all_final(slurm_env, 600)
    recs = _records(out)
    state = {jid: jobs[rec["slurm_id"]]["state"] for jid, rec in recs.items()}
    assert state == {"data": "COMPLETED", "distill/resnet10t-frac1-seed0": "COMPLETED",
                     "transfer/gone/random-seed0": "FAILED", "test/gone/random-seed0": "CANCELLED",
                     "report": "CANCELLED"}
    assert (out / "distill" / "resnet10t-frac1-seed0" / "student.pth").is_file()
    r = _study(spec, out, slurm_env, "--status")
    words = {ln.split()[1]: (ln.split()[0], ln.split()[4]) for ln in r.stdout.strip().splitlines()}
    assert words == {"data": ("done", "COMPLETED"), "distill/resnet10t-frac1-seed0": ("done", "COMPLETED"),
                     "transfer/gone/random-seed0": ("failed", "FAILED"),
                     "test/gone/random-seed0": ("failed", "CANCELLED"), "report": ("failed", "CANCELLED")}, r.stdout
    log = Path(recs["transfer/gone/random-seed0"]["log"]).read_text()
    assert "no_such_config.py" in log

    # the local executor runs the same job objects: the same failure, the same finished jobs
    out2 = tmp_path / "local"
    r = _study(spec, out2, slurm_env, "--executor", "local")
    err = _one_line_error(r)
    assert "2 study job(s) did not finish" in err and "transfer/gone/random-seed0" in err
    assert "test/gone/random-seed0: FAILED" not in r.stdout  # never started: it reads the failed job's outputs
    # both ran the distillation as 2 DDP processes (gloo), one per task, from submitit's job environment
    for o in (out, out2):
        exp = o / "distill" / "resnet10t-frac1-seed0"
        assert json.loads((exp / "summary.json").read_text())["world_size"] == 2
        marker = json.loads((o / "jobs" / "distill__resnet10t-frac1-seed0.json").read_text())
        assert marker["command"].startswith("srun --ntasks=2 python tools/distill.py ")
    a = torch.load(out / "distill" / "resnet10t-frac1-seed0" / "student.pth", weights_only=True)
    b = torch.load(out2 / "distill" / "resnet10t-frac1-seed0" / "student.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def inline_tiny(tmp_path_factory):
    """The tiny study with the default executor: the reference."""
    tmp = tmp_path_factory.mktemp("inline")
    spec = _write(tmp, TINY_SPEC, "tiny")
    out = tmp / "out"
    r = run_tool("tools/study.py", str(spec), "--out", str(out), "--quiet", timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return out


def _numbers(rep: dict) -> dict:
    return {"teacher": rep["teacher_top1"],
            "distill": sorted((d["method"], d["fraction"], d["seed"], d["top1"], d["top5"]) for d in rep["distill"]),
            "detection": sorted(tuple(sorted(d.items())) for d in rep["detection"]), "claims": rep["claims"]}


@pytest.mark.slow
def test_preempted_study_on_slurm_ends_like_the_default_executor(tmp_path, slurm_env, inline_tiny, monkeypatch):
    spec = _write(tmp_path, TINY_SPEC, "tiny")
    out = tmp_path / "out"
    r = _study(spec, out, slurm_env, "--executor", "slurm", "--partition", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    exp = out / "distill" / "resnet18-frac1-seed0"
    for k in ("PATH", "FAKE_SLURM_DIR"):  # submitit's own preemption helper calls the stand-in scancel
        monkeypatch.setenv(k, slurm_env[k])
    import submitit
    preempted = []

    def preempt_after_first_epoch():  # Slurm preempts: SIGTERM, then submitit's signal (USR2), to every task
        if not preempted and (exp / "last.pth").exists():
            rec = _records(out)["distill/resnet18-frac1-seed0"]
            if torch.load(exp / "last.pth", weights_only=True)["epoch"] < 2:
                submitit.SlurmJob(folder=out / "slurm" / "logs" / "%j", job_id=rec["slurm_id"])._interrupt()
                preempted.append(rec["slurm_id"])

    jobs = _wait_all_final(slurm_env, 1200, preempt_after_first_epoch)
    assert preempted, "the distillation finished before it could be preempted"
    assert all(j["state"] == "COMPLETED" for j in jobs.values()), {k: j["state"] for k, j in jobs.items()}
    assert jobs[preempted[0]]["restarts"] == 1  # requeued once, same Slurm job
    log = (out / "logs" / "distill__resnet18-frac1-seed0.log").read_text()
    assert "restart 1" in log and f"resumed from {exp / 'last.pth'} at epoch" in log
    # the same student as the uninterrupted run of the default executor
    ref = inline_tiny / "distill" / "resnet18-frac1-seed0"
    a = torch.load(ref / "student.pth", weights_only=True)
    b = torch.load(exp / "student.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    # the report written by the last job has the default executor's numbers
    assert _numbers(json.loads((out / "report.json").read_text())) == \
        _numbers(json.loads((inline_tiny / "report.json").read_text()))

    n = len(_scripts(slurm_env))
    r = _study(spec, out, slurm_env, "--executor", "slurm", "--partition", "cpu")
    assert r.returncode == 0 and "nothing to submit" in r.stdout and len(_scripts(slurm_env)) == n, r.stdout
    r = _study(spec, out, slurm_env, "--status")
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 6 and all(ln.startswith("done") for ln in lines), r.stdout


def test_resources_come_from_the_spec_its_kinds_and_the_flags():
    from common.io import UserError
    from study.resources import job_resources
    from study.spec import load_spec
    spec = load_spec(ROOT / "configs/study/imagenet_transfer.yaml")
    d = job_resources(spec, "distill", True)
    assert (d.nodes, d.gpus_per_node, d.ntasks, d.cpus_per_task, d.mem_gb, d.timeout_min) == (1, 8, 8, 11, 480, 4320)
    t = job_resources(spec, "test", True, {"partition": "a100", "nodes": 2, "gpus_per_node": 4})
    assert (t.ntasks, t.cpus_per_task, t.timeout_min, t.partition) == (8, 5, 240, "a100")
    p = t.executor_params()
    assert p["slurm_partition"] == "a100" and p["tasks_per_node"] == 4 and p["gpus_per_node"] == 4
    single = job_resources(spec, "report", False, {"gpus_per_node": 4, "partition": "a100"})
    assert (single.ntasks, single.gpus_per_node, single.partition) == (1, 0, "a100")
    assert "gpus_per_node" not in single.executor_params()
    mini = load_spec(ROOT / "configs/study/mini.yaml")
    assert job_resources(mini, "distill", True).ntasks == 1
    assert job_resources(load_spec(ROOT / "configs/study/mini.yaml", "gpu"), "distill", True).gpus_per_node == 1
    with pytest.raises(UserError, match="mmengine's launchers are CUDA-only"):
        job_resources(mini, "transfer", True, {"tasks_per_node": 2})
    with pytest.raises(UserError, match="unknown job kinds: train"):
        job_resources({"slurm": {"kinds": {"train": {}}}}, "distill", True)
