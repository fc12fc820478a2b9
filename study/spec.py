"""A study spec (YAML) and its expansion into the exact command lines a user would type.

A spec names a teacher, a distillation grid (students x methods x data fractions x seeds) and detection
runs (backbone initialisations x seeds). Every distillation setting that shares data (fraction, seed) and
the teacher is trained by one ``tools/distill.py`` call, so the teacher runs once per batch for all of them.
Strings may use ``{root}`` (the data root, ``--data-dir``) and ``{out}`` (the study's output folder).
"""
from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from common.io import UserError, load_yaml_mapping

METHODS = {"scratch": "none", "kd": "kd", "bkd": "bkd", "dkd": "dkd", "dist": "dist",
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


def expand(spec: dict, out: str | Path, data_dir: str | None = None) -> list[Job]:
    """All jobs of the study in the order they must run (later jobs read earlier jobs' outputs)."""
    out = Path(out)
    data = dict(spec.get("data") or {})
    root = data_dir or data.get("root")
    if not root:
        raise UserError("the study needs a data root: give --data-dir or data.root in the spec")
    subs = {"root": str(root).rstrip("/"), "out": str(out)}
    data = _fill(data, subs)
    cls_dir = data.get("classification", subs["root"])
    coco_dir = data.get("coco")
    jobs: list[Job] = []

    if data.get("shapes") is not None:  # the built-in world, generated offline from a seed
        shapes = dict(data["shapes"])
        seed = shapes.pop("seed", 0)
        stamp = Path(subs["root"]) / "classification" / "train"
        jobs.append(Job("data", "data", "tools/make_shapes.py",
                        ["--out", subs["root"], "--seed", str(seed), *flag_args(shapes)], [stamp]))
    data_dep = ["data"] if jobs else []

    runs_dir = out / "distill"
    teacher = _fill(dict(spec.get("teacher") or {}), subs)
    dist = _fill(dict(spec.get("distill") or {}), subs)
    recipe = ["-c", dist["recipe"]] if dist.get("recipe") else []
    teacher_args: list[str] = []
    if teacher:
        if "model" not in teacher:
            raise UserError("teacher needs a model (a timm name)")
        teacher_args = ["--teacher", teacher["model"]]
        if teacher.get("checkpoint"):
            teacher_args += ["--teacher-checkpoint", teacher["checkpoint"]]
        elif teacher.get("pretrained"):
            teacher_args += ["--teacher-pretrained"]
        else:  # trained by the study on the whole training set
            t_recipe = ["-c", teacher["recipe"]] if teacher.get("recipe") else []
            t_dir = runs_dir / "teacher"
            jobs.append(Job("teacher", "teacher", "tools/distill.py",
                            [*t_recipe, "--data-dir", cls_dir, "--model", teacher["model"],
                             *flag_args(teacher.get("flags")), "--output", str(runs_dir), "--experiment", "teacher"],
                            [t_dir / "summary.json", t_dir / "student.pth"], resume_if=t_dir / "last.pth",
                            distributed=True, meta={"dir": str(t_dir), "model": teacher["model"]}, after=data_dep))
            teacher_args += ["--teacher-checkpoint", str(t_dir / "student.pth")]
    teacher_dep = ["teacher"] if any(j.id == "teacher" for j in jobs) else []

    students = list(dist.get("students") or [])
    methods = list(dist.get("methods") or [])
    student_dirs: dict[tuple, tuple[Path, str]] = {}
    if students and methods:
        needs_teacher = any(m != "scratch" for m in methods + _arm_methods(dist))
        if needs_teacher and not teacher_args:
            raise UserError("the distillation grid has KD methods but the spec has no teacher")
        by_fraction = {float(k): int(v) for k, v in (dist.get("epochs_by_fraction") or {}).items()}
        arms = dist.get("arms") or {}
        long = dist.get("long") or {}
        cells = []  # (variant, fraction, seed, methods, flags, epochs factor)
        for fraction in dist.get("fractions", [1.0]):
            extra = list(arms.get("methods") or []) if arms and float(arms["fraction"]) == float(fraction) else []
            for seed in dist.get("seeds", [0]):
                cells.append(("main", float(fraction), int(seed), methods + extra, dist.get("flags"), 1, students, None))
        for name, rec in (dist.get("recipes") or {}).items():
            for seed in rec.get("seeds", dist.get("seeds", [0])):
                cells.append((str(name), float(rec["fraction"]), int(seed), list(rec.get("methods") or methods),
                              _merge(dist.get("flags") or {}, rec.get("flags") or {}), 1, students, None))
        det_students = dist.get("detection_students") or {}
        for seed in det_students.get("seeds", []):  # trained only to initialise the detectors (Table 11)
            cells.append(("det", float(det_students.get("fraction", 1.0)), int(seed),
                          list(det_students.get("methods") or ["scratch", "kd"]),
                          _merge(dist.get("flags") or {}, det_students.get("flags") or {}), 1,
                          list(det_students.get("students") or students), det_students.get("epochs")))
        if long:
            for seed in long.get("seeds", dist.get("seeds", [0])):
                cells.append(("long", float(long.get("fraction", 1.0)), int(seed), list(long.get("methods") or ["scratch"]),
                              dist.get("flags"), int(long.get("factor", 2)), students, None))
        for variant, fraction, seed, cell_methods, flags, factor, cell_students, cell_epochs in cells:
            exp = distill_experiment(cell_students, fraction, seed) + ("" if variant == "main" else f"-{variant}")
            exp_dir = runs_dir / exp
            models = [s for s in cell_students for _ in cell_methods]
            method_of = [m for _ in cell_students for m in cell_methods]
            losses = [METHODS[m] for m in method_of]
            kd_w = [WEIGHTS.get(m, (1.0, 1.0))[0] for m in method_of]
            ori_w = [WEIGHTS.get(m, (1.0, 1.0))[1] for m in method_of]
            uses_teacher = any(m != "scratch" for m in cell_methods)
            settings = {}
            for s, m, kw, ow in zip(models, method_of, kd_w, ori_w):
                name = setting_name(s, METHODS[m], kw, ow, len(models)) if uses_teacher else s
                sdir = exp_dir if len(models) == 1 else exp_dir / name
                settings[name] = dict(student=s, method=m, dir=str(sdir))
                if variant in ("main", "det"):
                    student_dirs[(s, m, fraction, seed)] = (sdir, f"distill/{exp}")
            epochs = (["--epochs", str(int(cell_epochs))] if cell_epochs is not None else
                      ["--epochs", str(by_fraction[fraction] * factor)] if fraction in by_fraction else [])
            own = ("seed", "train-subset", "output", "experiment", *(["epochs"] if epochs else []))
            weights = (["--kd-loss-weight", *map(_g, kd_w), "--ori-loss-weight", *map(_g, ori_w)]
                       if any(w != 1.0 for w in kd_w + ori_w) else [])
            args = [*recipe, "--data-dir", cls_dir, "--model", *models,
                    *(teacher_args + ["--kd-loss", *losses, *weights] if uses_teacher else []),
                    *flag_args(_without(flags, *own)), "--train-subset", str(fraction),
                    "--seed", str(seed), *epochs, "--output", str(runs_dir), "--experiment", exp]
            jobs.append(Job(f"distill/{exp}", "distill", "tools/distill.py", args,
                            [exp_dir / "summary.json"], resume_if=exp_dir / "last.pth", distributed=True,
                            meta={"dir": str(exp_dir), "fraction": fraction, "seed": seed, "variant": variant,
                                  "steps_factor": factor, "settings": settings},
                            after=data_dep + (teacher_dep if uses_teacher else [])))

    det = _fill(dict(spec.get("detection") or {}), subs)
    for run in det.get("runs", []):
        for key in ("name", "config", "epochs", "inits"):
            if key not in run:
                raise UserError(f"detection run {run.get('name', '?')!r} needs {key!r}")
        epochs = int(run["epochs"])
        for init, how in run["inits"].items():
            how = how or {}
            for seed in det.get("seeds", [0]):
                wd = out / "detection" / run["name"] / f"{init}-seed{seed}"
                src: list[str]
                deps = list(data_dep)
                model = how.get("student") or (students[0] if students else None)
                if init == "random" or how.get("random"):
                    src = ["--random-init"] + (["--model", model] if model else [])
                elif how.get("checkpoint"):
                    src = ["--checkpoint", how["checkpoint"]] + (["--model", how["student"]] if how.get("student") else [])
                else:
                    method, fraction = how.get("method"), float(how.get("fraction", 1.0))
                    dseeds = [int(s) for s in dist.get("seeds", [0])]
                    sseed = int(seed) if (model, method, fraction, int(seed)) in student_dirs or not dseeds \
                        else dseeds[0]  # the detector's own seed's student when the grid trained one
                    key = (model, method, fraction, sseed)
                    if key not in student_dirs:
                        raise UserError(f"detection init {init!r} wants the {method} student {model} at fraction "
                                        f"{fraction:g}, which the distillation grid does not train")
                    sdir, producer = student_dirs[key]
                    src = ["--checkpoint", str(sdir / "student.pth"), "--model", model]
                    deps.append(producer)
                opts = [*(coco_root_options(coco_dir) if coco_dir else []),
                        f"train_cfg.max_epochs={epochs}", f"train_cfg.val_interval={epochs}", f"randomness.seed={seed}",
                        *[f"{k}={v}" for k, v in (run.get("cfg_options") or {}).items()]]
                meta = {"run": run["name"], "init": init, "seed": int(seed), "dir": str(wd), "config": run["config"]}
                jobs.append(Job(f"transfer/{run['name']}/{init}-seed{seed}", "transfer", "tools/transfer.py",
                                [run["config"], *src, "--work-dir", str(wd), "--cfg-options", *opts],
                                [wd / f"epoch_{epochs}.pth"], resume_if=wd / "last_checkpoint", distributed=True,
                                meta=meta, after=deps))
                test_opts = [*(coco_root_options(coco_dir) if coco_dir else []),
                             *[f"{k}={v}" for k, v in (run.get("test_cfg_options") or {}).items()]]
                jobs.append(Job(f"test/{run['name']}/{init}-seed{seed}", "test", "tools/test.py",
                                [run["config"], str(wd / f"epoch_{epochs}.pth"), "--out", str(wd / "test.json"),
                                 "--work-dir", str(wd / "test"), *(["--cfg-options", *test_opts] if test_opts else [])],
                                [wd / "test.json"], distributed=True, meta=meta,
                                after=[f"transfer/{run['name']}/{init}-seed{seed}"]))
    return jobs
