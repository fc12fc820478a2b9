"""A study spec (YAML) and its expansion into the exact command lines a user would type.

A spec names a teacher, a distillation grid (students x methods x data fractions x seeds) and detection
runs (backbone initialisations x seeds). Every distillation setting that shares data (fraction, seed) and
the teacher is trained by one ``tools/distill.py`` call, so the teacher runs once per batch for all of them.
Strings may use ``{root}`` (the data root, ``--data-dir``) and ``{out}`` (the study's output folder). The data
section's ``dataset`` and ``val_split`` name the container every distillation reads (``--dataset hfds/...`` or
``wds/...``, docs/data.md); ``shapes: {format: [...]}`` writes the built-in world in those containers.
"""
from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple


from common.io import UserError, load_yaml_mapping

METHODS = {"scratch": "none", "kd": "kd", "bkd": "bkd", "dkd": "dkd", "dist": "dist", "lskd": "lskd",
           "cc": "cc", "rkd": "rkd", "crd": "crd", "review": "review", "kd_nohard": "kd"}
# (KD weight, hard-label weight) of the methods that are a loss with other weights (Table 4: KD without hard label)
WEIGHTS = {"kd_nohard": (1.0, 0.0)}
TOP_KEYS = {"name", "description", "data", "teacher", "distill", "detection", "paper", "profiles", "claims", "slurm"}


@dataclass
class Job:
    """One command of the study: what to run, what it must leave behind, and how to continue it."""

    id: str
    kind: str  # data | teacher | distill | transfer | test
    tool: str  # tools/<name>.py
    args: list[str]
    outputs: list[Path]
    resume_if: Path | None = None  # when this exists, the command continues with --resume
    distributed: bool = False  # runs under torchrun with --launcher torchrun
    meta: dict[str, Any] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)  # ids of the jobs whose outputs this one reads

    def argv(self, launcher: str = "none", nproc: int = 1, python: str = "python") -> list[str]:
        """The command; under ``slurm`` what each of the job's ``nproc`` Slurm tasks runs (srun starts them)."""
        if launcher == "torchrun" and self.distributed:
            head = ["torchrun", "--standalone", f"--nproc_per_node={nproc}", self.tool]
            extra = ["--launcher", "pytorch"] if self.kind in ("transfer", "test") else []
            return head + self.args + extra
        if launcher == "slurm" and self.distributed and nproc > 1:
            # distill.py reads torch's env:// variables (set per task from Slurm's); mmengine reads Slurm's own
            extra = ["--launcher", "slurm"] if self.kind in ("transfer", "test") else []
            return [python, self.tool] + self.args + extra
        return [python, self.tool] + self.args

    def command(self, launcher: str = "none", nproc: int = 1) -> str:
        cmd = shlex.join(self.argv(launcher, nproc))
        if launcher == "slurm" and self.distributed and nproc > 1:
            return f"srun --ntasks={nproc} {cmd}"
        return cmd


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return copy.deepcopy(over)


def load_spec(path: str | Path, profile: str | None = None) -> dict:
    """Read a spec (yaml.safe_load, never evaluated) and apply one of its ``profiles`` when named."""
    path = Path(path)
    spec = load_yaml_mapping(path, "study spec")
    unknown = sorted(set(spec) - TOP_KEYS)
    if unknown:
        raise UserError(f"study spec {path} has unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(TOP_KEYS))})")
    profiles = spec.pop("profiles", {}) or {}
    if profile and profile != "default":
        if profile not in profiles:
            raise UserError(f"study spec {path} has no profile {profile!r} (it has: default, {', '.join(profiles)})")
        spec = _merge(spec, profiles[profile])
    spec.setdefault("name", path.stem)
    spec["profile"] = profile or "default"
    spec["profiles_available"] = ["default", *profiles]
    dist = spec.get("distill") or {}
    for m in [*dist.get("methods", []), *_arm_methods(dist)]:
        if m not in METHODS:
            raise UserError(f"study spec {path}: unknown method {m!r} (known: {', '.join(METHODS)})")
    return spec


def flag_args(flags: dict | None) -> list[str]:
    """{'img-size': 32, 'scale': [0.5, 1], 'bce-loss': True} -> ['--img-size', '32', '--scale', '0.5', '1', '--bce-loss']."""
    out: list[str] = []
    for k, v in (flags or {}).items():
        name = "--" + str(k).replace("_", "-")
        if v is True:
            out.append(name)
        elif v is False or v is None:
            continue
        elif isinstance(v, (list, tuple)):
            out += [name, *(str(x) for x in v)]
        else:
            out += [name, str(v)]
    return out


def _without(flags: dict | None, *keys: str) -> dict:
    """Drop flags the study sets itself (seed, fraction, epochs per fraction), whatever their spelling."""
    drop = {k.replace("_", "-") for k in keys}
    return {k: v for k, v in (flags or {}).items() if str(k).replace("_", "-") not in drop}


def _fill(value: Any, subs: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in subs.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, list):
        return [_fill(v, subs) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, subs) for k, v in value.items()}
    return value


def coco_root_options(coco_root: str) -> list[str]:
    """mmengine --cfg-options pointing a COCO-layout config at another data root."""
    root = coco_root.rstrip("/") + "/"
    ann = f"{root}annotations/instances_val2017.json"
    return [f"train_dataloader.dataset.data_root={root}", f"val_dataloader.dataset.data_root={root}",
            f"test_dataloader.dataset.data_root={root}", f"val_evaluator.ann_file={ann}",
            f"test_evaluator.ann_file={ann}"]


def fraction_tag(f: float) -> str:
    return f"{f:g}"


def _g(x: float) -> str:
    return f"{float(x):g}"


def setting_name(model: str, loss: str, kd_weight: float, ori_weight: float, n_settings: int) -> str:
    """tools/distill.py's name of a setting (distill/settings.py), so the study finds its folder."""
    name = f"{model}-{loss}"
    if n_settings > 1 and (kd_weight != 1 or ori_weight != 1):
        name += f"-kd{kd_weight:g}-ori{ori_weight:g}"
    return name


def _arm_methods(dist: dict) -> list[str]:
    return [*((dist.get("arms") or {}).get("methods") or []),
            *(m for r in (dist.get("recipes") or {}).values() for m in (r.get("methods") or []))]


def distill_experiment(students: list[str], fraction: float, seed: int) -> str:
    return f"{'_'.join(students)}-frac{fraction_tag(fraction)}-seed{seed}"


class _Cell(NamedTuple):
    """One distill.py call: the settings that share a data subset (fraction, seed), so one teacher forward."""

    variant: str  # main | det | long | a recipe's name
    fraction: float
    seed: int
    methods: list[str]
    flags: dict | None
    factor: int  # times epochs_by_fraction (the long variant's extra steps)
    students: list[str]
    epochs: int | None  # fixed epochs instead of epochs_by_fraction (detection students)


@dataclass(frozen=True)
class _Study:
    """Where every kind of job reads and writes, so the job builders need only their own section."""

    out: Path
    cls_dir: str
    coco_dir: str | None
    data_dep: list[str]  # ["data"] when the study generates its data, else nothing to wait for
    teacher_cls_dir: str | None = None  # the teacher's own training data (data.teacher), if any
    teacher_data_dep: list[str] = field(default_factory=list)  # ["data-teacher"] when the study generates it
    container: tuple[str, ...] = ()  # data.dataset / data.val_split: --dataset, --val-split of every distill.py job

    @property
    def runs_dir(self) -> Path:
        return self.out / "distill"


def _data_and_subs(spec: dict, out: Path, data_dir: str | None) -> tuple[dict, dict[str, str]]:
    """The spec's data section with {root} and {out} filled in, and those substitutions for the other sections."""
    data = dict(spec.get("data") or {})
    root = data_dir or data.get("root")
    if not root:
        raise UserError("the study needs a data root: give --data-dir or data.root in the spec")
    subs = {"root": str(root).rstrip("/"), "out": str(out)}
    return _fill(data, subs), subs


def _data_jobs(data: dict, root: str) -> list[Job]:
    """make_shapes.py when the spec uses the built-in world, generated offline from a seed; else nothing.

    ``data.teacher`` (optional) is the teacher's own draw of the same world under another seed: more images
    than the students' whole training set and none of theirs, as the paper's teachers saw more data than any
    student of Fig. 1."""
    jobs = []
    for jid, d, out in (("data", data, root), ("data-teacher", data.get("teacher") or {}, None)):
        if d.get("shapes") is None:
            continue
        out = out or d.get("root")
        if not out:
            raise UserError("data.teacher needs a root (where its world is written)")
        shapes = dict(d["shapes"])
        seed = shapes.pop("seed", 0)
        stamp = Path(out) / "classification" / "train"
        formats = shapes.get("format") or []
        formats = [formats] if isinstance(formats, str) else formats
        written = [Path(out) / f"classification-{f}" / ".containers.json" for f in formats if f != "folder"]
        jobs.append(Job(jid, "data", "tools/make_shapes.py", ["--out", out, "--seed", str(seed), *flag_args(shapes)],
                        [stamp, *written]))
    return jobs


def _teacher(teacher: dict, study: _Study) -> tuple[list[Job], list[str]]:
    """The distill calls' teacher flags, and the job training the teacher when the spec names no weights for it."""
    if not teacher:
        return [], []
    if "model" not in teacher:
        raise UserError("teacher needs a model (a timm name)")
    args = ["--teacher", teacher["model"]]
    if teacher.get("checkpoint"):
        return [], args + ["--teacher-checkpoint", teacher["checkpoint"]]
    if teacher.get("pretrained"):
        return [], args + ["--teacher-pretrained"]
    # trained by the study, on its own data when the spec gives it one (data.teacher), else the students' set
    recipe = ["-c", teacher["recipe"]] if teacher.get("recipe") else []
    t_dir = study.runs_dir / "teacher"
    job = Job("teacher", "teacher", "tools/distill.py",
              [*recipe, "--data-dir", study.teacher_cls_dir or study.cls_dir,
               *(() if study.teacher_cls_dir else study.container), "--model", teacher["model"],
               *flag_args(teacher.get("flags")), "--output", str(study.runs_dir), "--experiment", "teacher"],
              [t_dir / "summary.json", t_dir / "student.pth"], resume_if=t_dir / "last.pth",
              distributed=True, meta={"dir": str(t_dir), "model": teacher["model"]},
              after=study.teacher_data_dep or study.data_dep)
    return [job], args + ["--teacher-checkpoint", str(t_dir / "student.pth")]


def _main_cells(dist: dict, students: list[str], methods: list[str]) -> list[_Cell]:
    """The grid itself: every fraction x seed, with the arms' extra methods at the arms' fraction."""
    arms = dist.get("arms") or {}
    cells = []
    for fraction in dist.get("fractions", [1.0]):
        extra = list(arms.get("methods") or []) if arms and float(arms["fraction"]) == float(fraction) else []
        for seed in dist.get("seeds", [0]):
            cells.append(_Cell("main", float(fraction), int(seed), methods + extra, dist.get("flags"), 1,
                               students, None))
    return cells


def _recipe_cells(dist: dict, students: list[str], methods: list[str]) -> list[_Cell]:
    """Named recipes: their own fraction, seeds, methods, and flags over the grid's (Table 4's strategies)."""
    return [_Cell(str(name), float(rec["fraction"]), int(seed), list(rec.get("methods") or methods),
                  _merge(dist.get("flags") or {}, rec.get("flags") or {}), 1, students, None)
            for name, rec in (dist.get("recipes") or {}).items()
            for seed in rec.get("seeds", dist.get("seeds", [0]))]


def _detection_student_cells(dist: dict, students: list[str]) -> list[_Cell]:
    """Students trained only to initialise the detectors (Table 11), one call per seed."""
    det = dist.get("detection_students") or {}
    return [_Cell("det", float(det.get("fraction", 1.0)), int(seed), list(det.get("methods") or ["scratch", "kd"]),
                  _merge(dist.get("flags") or {}, det.get("flags") or {}), 1,
                  list(det.get("students") or students), det.get("epochs"))
            for seed in det.get("seeds", [])]


def _long_cells(dist: dict, students: list[str]) -> list[_Cell]:
    """The convergence check: settings trained again with ``factor`` times the steps."""
    long = dist.get("long") or {}
    if not long:
        return []
    return [_Cell("long", float(long.get("fraction", 1.0)), int(seed), list(long.get("methods") or ["scratch"]),
                  dist.get("flags"), int(long.get("factor", 2)), students, None)
            for seed in long.get("seeds", dist.get("seeds", [0]))]


def _distill_job(cell: _Cell, recipe: list[str], study: _Study, teacher_args: list[str], teacher_dep: list[str],
                 by_fraction: dict[float, int], val_points: int = 0) -> Job:
    """The distill.py call of one cell; its settings' folders are where the report and the detectors look."""
    exp = distill_experiment(cell.students, cell.fraction, cell.seed)
    exp += "" if cell.variant == "main" else f"-{cell.variant}"
    exp_dir = study.runs_dir / exp
    models = [s for s in cell.students for _ in cell.methods]
    method_of = [m for _ in cell.students for m in cell.methods]
    kd_w = [WEIGHTS.get(m, (1.0, 1.0))[0] for m in method_of]
    ori_w = [WEIGHTS.get(m, (1.0, 1.0))[1] for m in method_of]
    uses_teacher = any(m != "scratch" for m in cell.methods)
    settings = {}
    for s, m, kw, ow in zip(models, method_of, kd_w, ori_w):
        name = setting_name(s, METHODS[m], kw, ow, len(models)) if uses_teacher else s
        settings[name] = dict(student=s, method=m, dir=str(exp_dir if len(models) == 1 else exp_dir / name))
    epochs = (["--epochs", str(int(cell.epochs))] if cell.epochs is not None else
              ["--epochs", str(by_fraction[cell.fraction] * cell.factor)] if cell.fraction in by_fraction else [])
    own = ("seed", "train-subset", "output", "experiment", *(["epochs"] if epochs else []))
    if val_points and epochs:  # the same number of top-1 points on every cell's learning curve, whatever its epochs
        epochs += ["--val-interval", str(max(1, int(epochs[1]) // int(val_points)))]
        own += ("val-interval",)
    weights = (["--kd-loss-weight", *map(_g, kd_w), "--ori-loss-weight", *map(_g, ori_w)]
               if any(w != 1.0 for w in kd_w + ori_w) else [])
    kd = [*teacher_args, "--kd-loss", *(METHODS[m] for m in method_of), *weights] if uses_teacher else []
    args = [*recipe, "--data-dir", study.cls_dir, *study.container, "--model", *models, *kd,
            *flag_args(_without(cell.flags, *own)), "--train-subset", str(cell.fraction),
            "--seed", str(cell.seed), *epochs, "--output", str(study.runs_dir), "--experiment", exp]
    return Job(f"distill/{exp}", "distill", "tools/distill.py", args,
               [exp_dir / "summary.json"], resume_if=exp_dir / "last.pth", distributed=True,
               meta={"dir": str(exp_dir), "fraction": cell.fraction, "seed": cell.seed, "variant": cell.variant,
                     "steps_factor": cell.factor, "settings": settings},
               after=study.data_dep + (teacher_dep if uses_teacher else []))


def _distill_jobs(dist: dict, study: _Study, teacher_args: list[str], teacher_dep: list[str]) -> list[Job]:
    """One distill.py call per cell: the grid, then its recipes, detection students and long variant."""
    students = list(dist.get("students") or [])
    methods = list(dist.get("methods") or [])
    if not (students and methods):
        return []
    if not teacher_args and any(m != "scratch" for m in methods + _arm_methods(dist)):
        raise UserError("the distillation grid has KD methods but the spec has no teacher")
    by_fraction = {float(k): int(v) for k, v in (dist.get("epochs_by_fraction") or {}).items()}
    recipe = ["-c", dist["recipe"]] if dist.get("recipe") else []
    cells = [*_main_cells(dist, students, methods), *_recipe_cells(dist, students, methods),
             *_detection_student_cells(dist, students), *_long_cells(dist, students)]
    return [_distill_job(c, recipe, study, teacher_args, teacher_dep, by_fraction, int(dist.get("val_points") or 0))
            for c in cells]


def _trained_students(jobs: list[Job]) -> dict[tuple, tuple[Path, str]]:
    """(student, method, fraction, seed) -> (its folder, its distill job) for the grid's and detection students."""
    return {(s["student"], s["method"], j.meta["fraction"], j.meta["seed"]): (Path(s["dir"]), j.id)
            for j in jobs if j.meta["variant"] in ("main", "det") for s in j.meta["settings"].values()}


def _init_source(init: str, how: dict, seed: Any, dist: dict,
                 trained: dict[tuple, tuple[Path, str]]) -> tuple[list[str], list[str]]:
    """transfer.py's flags for one backbone init, and the distill job it reads when the study trains that student."""
    students = list(dist.get("students") or [])
    model = how.get("student") or (students[0] if students else None)
    if init == "random" or how.get("random"):
        return ["--random-init"] + (["--model", model] if model else []), []
    if how.get("checkpoint"):
        return ["--checkpoint", how["checkpoint"]] + (["--model", how["student"]] if how.get("student") else []), []
    method, fraction = how.get("method"), float(how.get("fraction", 1.0))
    dseeds = [int(s) for s in dist.get("seeds", [0])]
    sseed = int(seed) if (model, method, fraction, int(seed)) in trained or not dseeds \
        else dseeds[0]  # the detector's own seed's student when the grid trained one
    key = (model, method, fraction, sseed)
    if key not in trained:
        raise UserError(f"detection init {init!r} wants the {method} student {model} at fraction "
                        f"{fraction:g}, which the distillation grid does not train")
    sdir, producer = trained[key]
    return ["--checkpoint", str(sdir / "student.pth"), "--model", model], [producer]


def _transfer_and_test(run: dict, epochs: int, init: str, seed: Any, src: list[str], after: list[str],
                       study: _Study) -> list[Job]:
    """Fine-tune a detector from one backbone init, then test its last epoch's checkpoint."""
    wd = study.out / "detection" / run["name"] / f"{init}-seed{seed}"
    tid = f"transfer/{run['name']}/{init}-seed{seed}"
    coco = coco_root_options(study.coco_dir) if study.coco_dir else []
    opts = [*coco, f"train_cfg.max_epochs={epochs}", f"train_cfg.val_interval={epochs}", f"randomness.seed={seed}",
            *[f"{k}={v}" for k, v in (run.get("cfg_options") or {}).items()]]
    test_opts = [*coco, *[f"{k}={v}" for k, v in (run.get("test_cfg_options") or {}).items()]]
    meta = {"run": run["name"], "init": init, "seed": int(seed), "dir": str(wd), "config": run["config"]}
    return [Job(tid, "transfer", "tools/transfer.py",
                [run["config"], *src, "--work-dir", str(wd), "--cfg-options", *opts],
                [wd / f"epoch_{epochs}.pth"], resume_if=wd / "last_checkpoint", distributed=True,
                meta=meta, after=after),
            Job(f"test/{run['name']}/{init}-seed{seed}", "test", "tools/test.py",
                [run["config"], str(wd / f"epoch_{epochs}.pth"), "--out", str(wd / "test.json"),
                 "--work-dir", str(wd / "test"), *(["--cfg-options", *test_opts] if test_opts else [])],
                [wd / "test.json"], distributed=True, meta=meta, after=[tid])]


def _detection_jobs(det: dict, dist: dict, study: _Study, trained: dict[tuple, tuple[Path, str]]) -> list[Job]:
    """A transfer job and its test job per detection run x backbone init x seed."""
    jobs: list[Job] = []
    for run in det.get("runs", []):
        for key in ("name", "config", "epochs", "inits"):
            if key not in run:
                raise UserError(f"detection run {run.get('name', '?')!r} needs {key!r}")
        epochs = int(run["epochs"])
        for init, how in run["inits"].items():
            for seed in det.get("seeds", [0]):
                src, producer = _init_source(init, how or {}, seed, dist, trained)
                jobs += _transfer_and_test(run, epochs, init, seed, src, [*study.data_dep, *producer], study)
    return jobs


def expand(spec: dict, out: str | Path, data_dir: str | None = None) -> list[Job]:
    """All jobs of the study in the order they must run (later jobs read earlier jobs' outputs)."""
    out = Path(out)
    data, subs = _data_and_subs(spec, out, data_dir)
    data_jobs = _data_jobs(data, subs["root"])
    tdata = data.get("teacher") or {}
    container = flag_args({"dataset": data.get("dataset"), "val-split": data.get("val_split")})  # docs/data.md
    study = _Study(out, data.get("classification", subs["root"]), data.get("coco"),
                   ["data"] if any(j.id == "data" for j in data_jobs) else [],
                   tdata.get("classification") or (f"{tdata['root']}/classification" if tdata.get("root") else None),
                   ["data-teacher"] if any(j.id == "data-teacher" for j in data_jobs) else [], tuple(container))
    teacher_jobs, teacher_args = _teacher(_fill(dict(spec.get("teacher") or {}), subs), study)
    dist = _fill(dict(spec.get("distill") or {}), subs)
    distill_jobs = _distill_jobs(dist, study, teacher_args, ["teacher"] if teacher_jobs else [])
    det = _fill(dict(spec.get("detection") or {}), subs)
    detection_jobs = _detection_jobs(det, dist, study, _trained_students(distill_jobs))
    return [*data_jobs, *teacher_jobs, *distill_jobs, *detection_jobs]
