"""What one study job asks a Slurm cluster for: the spec's ``slurm:`` section, per job kind, plus flags.

The names are submitit's (AutoExecutor): ``nodes``, ``gpus_per_node``, ``tasks_per_node``, ``cpus_per_task``,
``mem_gb``, ``timeout_min`` and the Slurm-only ``partition``, ``account``, ``qos``, ``constraint`` (submitit's
``slurm_*``); ``max_timeouts`` is how often a job that reaches its time limit is requeued (submitit's
``slurm_max_num_timeout``). Multi-process jobs run one Slurm task per GPU, as the field's
``run_with_submitit.py`` scripts do; without GPUs, ``tasks_per_node`` processes (gloo). Jobs that are one
process by nature (making the data set, writing the report) always get one task on one node and no GPU.

    slurm:
      partition: gpu
      nodes: 1
      gpus_per_node: 8
      cpus_per_task: 10
      mem_gb: 480
      timeout_min: 4320
      kinds: {test: {timeout_min: 240}}   # per job kind: data, teacher, distill, transfer, test, report
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from common.io import UserError

KINDS = ("data", "teacher", "distill", "transfer", "test", "report")
SCHEDULING = ("partition", "account", "qos", "constraint")
SHAPE = ("nodes", "gpus_per_node", "tasks_per_node")
# a job that is one process: making the data set, writing the report
SINGLE = {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 2, "mem_gb": 16, "timeout_min": 120}


@dataclass
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_timeouts: int = 3

    @property
    def ntasks_per_node(self) -> int:
        """One task per GPU; without GPUs, ``tasks_per_node`` CPU processes."""
        return self.gpus_per_node if self.gpus_per_node > 0 else self.tasks_per_node

    @property
    def ntasks(self) -> int:
        return self.nodes * self.ntasks_per_node

    def executor_params(self) -> dict:
        """submitit AutoExecutor parameters (the slurm_* ones are ignored by the local executor)."""
        p = {"nodes": self.nodes, "tasks_per_node": self.ntasks_per_node, "timeout_min": self.timeout_min}
        if self.gpus_per_node:
            p["gpus_per_node"] = self.gpus_per_node
        if self.cpus_per_task:
            p["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb:
            p["mem_gb"] = self.mem_gb
        for k in SCHEDULING:
            if getattr(self, k):
                p[f"slurm_{k}"] = getattr(self, k)
        return p

    def describe(self) -> str:
        d = {**asdict(self), "tasks_per_node": self.ntasks_per_node}
        return " ".join(f"{k}={v}" for k, v in d.items() if v is not None and k != "max_timeouts")


FIELDS = {f.name for f in fields(Resources)}


def _check(section: dict, where: str) -> dict:
    if not isinstance(section, dict):
        raise UserError(f"{where} must be a mapping of resources (known: {', '.join(sorted(FIELDS))})")
    unknown = sorted(set(section) - FIELDS - {"kinds"})
    if unknown:
        raise UserError(f"{where} has unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))}, kinds)")
    for k, v in section.items():
        if k in ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "timeout_min", "max_timeouts") \
                and v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise UserError(f"{where}.{k} must be a whole number >= 0, not {v!r}")
    return section


def has_resources(spec: dict) -> bool:
    return bool(spec.get("slurm"))


def job_resources(spec: dict, kind: str, distributed: bool, overrides: dict | None = None) -> Resources:
    """The resources of one job: the spec's section, then its ``kinds`` entry, then the command-line flags.

    Flags for the job's shape (nodes, GPUs, tasks) apply to multi-process jobs only."""
    base = _check(dict(spec.get("slurm") or {}), "slurm")
    kinds = base.pop("kinds", None) or {}
    if not isinstance(kinds, dict) or set(kinds) - set(KINDS):
        raise UserError(f"slurm.kinds has unknown job kinds: {', '.join(sorted(set(kinds) - set(KINDS)))} "
                        f"(known: {', '.join(KINDS)})")
    merged = {**({**base, **SINGLE} if not distributed else base), **_check(dict(kinds.get(kind) or {}),
                                                                            f"slurm.kinds.{kind}")}
    for k, v in (overrides or {}).items():
        if v is not None and (distributed or k not in SHAPE):
            merged[k] = v
    if not distributed:
        merged.update(nodes=1, gpus_per_node=0, tasks_per_node=1)
    r = Resources(**{k: v for k, v in merged.items() if v is not None})
    if r.nodes < 1 or r.ntasks_per_node < 1:
        raise UserError(f"the {kind} jobs need at least one node and one task per node (slurm: {r.describe()})")
    if kind in ("transfer", "test") and r.ntasks > 1 and not r.gpus_per_node:
        raise UserError(f"the {kind} jobs ask for {r.ntasks} tasks without GPUs: mmengine's launchers are "
                        "CUDA-only, so detection on CPU runs as one task (set gpus_per_node, or tasks_per_node: 1)")
    return r
