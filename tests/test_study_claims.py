"""Verdicts come from paired 95 % intervals over seeds (study/stats.py, study/claims.py), not from means or signs."""
import math
from pathlib import Path

import pytest

from study import stats
from study.claims import all_claims, checks, fig1_gaps


def test_t_interval_against_reference_values():
    # mean 1, sample sd exactly 1, n 4: half-width t(0.975, 3) / sqrt(4) = 3.182446305 / 2 (Student t table)
    mean, low, high = stats.t_interval([1 - math.sqrt(1.5), 1 + math.sqrt(1.5), 1.0, 1.0])
    assert mean == pytest.approx(1.0) and high - mean == pytest.approx(3.182446305 / 2, rel=1e-6)
    assert mean - low == pytest.approx(high - mean)
    m1, lo1, hi1 = stats.t_interval([0.7])
    assert m1 == 0.7 and lo1 == -math.inf and hi1 == math.inf  # one seed: no interval
    # 6 seeds of paired sd 1.0 give a half-width of 2.571 / sqrt(6) = 1.05; 7 give 0.92 (<= 1 point)
    assert stats.seeds_for_half_width(1.0, 1.0) == 7 and stats.seeds_for_half_width(0.5, 1.0, at_least=6) == 6


# (kind, diffs, margin, verdict): intervals that straddle zero or cross the margin are inconclusive whatever
# their mean says
CASES = [
    ("difference", [2.0, 2.5, 1.5, 2.2, 1.8, 2.1], None, "agrees"),
    ("difference", [-2.0, -2.5, -1.5, -2.2, -1.8, -2.1], None, "disagrees"),
    ("difference", [3.0, -1.0, 2.5, -0.5, 1.5, 0.2], None, "inconclusive"),  # mean +0.95 > 0, interval straddles 0
    ("difference", [-3.0, 1.0, -2.5, 0.5, -1.5, -0.2], None, "inconclusive"),  # mean -0.95 < 0
    ("equivalence", [0.1, -0.2, 0.15, 0.0, -0.1, 0.05], 1.0, "agrees"),
    ("equivalence", [0.6, 1.4, 0.2, 1.6, 0.9, 0.7], 1.0, "inconclusive"),  # mean 0.9 inside, interval crosses +1
    ("equivalence", [2.0, 2.5, 1.8, 2.2, 2.4, 2.1], 1.0, "disagrees"),  # wholly above the margin
    ("equivalence", [0.3, 2.9, -2.2, 1.5, -1.9, 0.2], 1.0, "inconclusive"),  # mean 0.13 but a wide interval
]


def verdict_failures(rule) -> list[str]:
    """The CASES a verdict rule gets wrong (rule(kind, diffs, margin) -> verdict)."""
    return [f"{k} {d}: {rule(k, d, m)} != {want}" for k, d, m, want in CASES if rule(k, d, m) != want]


def test_verdict_rule_reads_the_interval():
    def interval_rule(kind, diffs, margin):
        return stats.claim("x", "s", kind, diffs, margin)["verdict"]
    assert verdict_failures(interval_rule) == []

    def mean_only(kind, diffs, margin):  # the rule the issue forbids: it reads only the mean
        m = sum(diffs) / len(diffs)
        if kind == "difference":
            return "agrees" if m > 0 else "disagrees"
        return "agrees" if abs(m) <= margin else "disagrees"
    assert len(verdict_failures(mean_only)) >= 4  # the CASES catch it


def test_verdict_edges_and_errors():
    assert stats.verdict("difference", 0.0, 1.0) == "inconclusive"  # low must be above zero
    assert stats.verdict("equivalence", -1.0, 1.0, 1.0) == "agrees"
    assert stats.verdict("difference", math.nan, math.nan) == "not measured"
    with pytest.raises(ValueError):
        stats.verdict("equivalence", -0.1, 0.1, None)
    c = stats.claim("kd_beats_scratch", "s", "difference", [1.0])
    assert c["ci95"] == [None, None] and c["n_seeds"] == 1 and c["verdict"] == "inconclusive"


def _rec(method, fraction, seed, top1, variant="main"):
    return {"student": "s", "method": method, "fraction": fraction, "seed": seed, "top1": top1, "variant": variant,
            "steps_factor": 2 if variant == "long" else 1}


def _records():
    d = []
    for seed in range(6):
        j = 0.1 * (seed % 3)  # seed noise shared by the methods of a seed: cancels in paired differences
        d += [_rec("scratch", 0.3, seed, 40 + j), _rec("kd", 0.3, seed, 45 + j), _rec("dkd", 0.3, seed, 47 + j + 0.02 * seed),
              _rec("dist", 0.3, seed, 48 + j), _rec("scratch", 1.0, seed, 50 + j), _rec("kd", 1.0, seed, 55 + j),
              _rec("dkd", 1.0, seed, 55.1 + j - 0.01 * seed), _rec("dist", 1.0, seed, 54.9 + j),
              _rec("bkd", 1.0, seed, 53 + j), _rec("kd_nohard", 1.0, seed, 55.2 + j),
              _rec("lskd", 1.0, seed, 55 + j + (0.5 if seed % 2 else -0.5)),
              _rec("kd", 1.0, seed, 50 + j, "weak"), _rec("dkd", 1.0, seed, 53 + j, "weak"),
              _rec("dist", 1.0, seed, 51 + j + 0.3 * (seed % 2), "weak")]
        if seed < 3:
            d.append(_rec("scratch", 1.0, seed, 50.3 + j, "long"))
    det = [{"run": "m", "init": i, "seed": s, "bbox_mAP": v + 0.001 * s, "segm_mAP": v}
           for s in range(3) for i, v in (("kd", 0.30), ("supervised", 0.28))]
    return {"teacher_top1": 70.0, "distill": d, "detection": det}


SPEC = {"distill": {"arms": {"fraction": 1.0, "methods": ["bkd", "kd_nohard", "lskd"]},
                    "recipes": {"weak": {"fraction": 1.0, "methods": ["kd", "dkd", "dist"]}}, "recipe_label": "strong"},
        "claims": {"margin": 1.0}}


def test_claims_of_a_study():
    cl = {c["id"]: c for c in all_claims(_records(), SPEC)}
    for c in cl.values():
        assert set(c) >= {"id", "sentence", "kind", "estimate", "ci95", "method", "n_seeds", "verdict"}
        assert c["sentence"].endswith(".") and "95 % CI" in c["sentence"]
    assert cl["kd_beats_scratch@0.3"]["estimate"] == pytest.approx(5.0) and cl["kd_beats_scratch@0.3"]["verdict"] == "agrees"
    assert cl["dkd_leads_kd_on_small_data"]["verdict"] == "agrees" and cl["dkd_leads_kd_on_small_data"]["n_seeds"] == 6
    assert cl["dkd_gap_shrinks_with_data"]["estimate"] == pytest.approx(2.0 - 0.1 + 0.03 * 2.5, abs=1e-9)
    assert cl["dkd_gap_shrinks_with_data"]["verdict"] == "agrees"
    assert cl["kd_matches_dist_at_full_data"]["kind"] == "equivalence"
    assert cl["kd_matches_dist_at_full_data"]["margin"] == 1.0 and cl["kd_matches_dist_at_full_data"]["verdict"] == "agrees"
    assert cl["kd_beats_bkd"]["verdict"] == "agrees" and cl["hard_label_matters_little"]["verdict"] == "agrees"
    # LS-KD alternates +-0.5 around KD: a mean of 0 with a spread, so the interval straddles zero
    assert cl["lskd_beats_kd"]["estimate"] == pytest.approx(0.0, abs=1e-9)
    assert cl["lskd_beats_kd"]["verdict"] == "inconclusive" and cl["lskd_beats_kd"]["n_seeds"] == 6
    # weak recipe: DKD leads KD by 3, strong by 0.1 - 0.01 s: the lead shrinks with the recipe
    assert cl["dkd_gap_shrinks_with_recipe"]["verdict"] == "agrees"
    assert cl["kd_backbone_transfers_better_box"]["estimate"] == pytest.approx(2.0)
    assert cl["kd_backbone_transfers_better_box"]["n_seeds"] == 3


def test_checks_and_fig1_gaps():
    got = {c["id"]: c for c in checks(_records(), SPEC)}
    assert got["convergence"]["value"] == pytest.approx(0.3) and got["convergence"]["met"]
    assert got["convergence"]["n_seeds"] == 3
    assert got["data_axis"]["value"] == pytest.approx(10.0) and got["data_axis"]["met"]
    assert got["teacher_room"]["value"] == pytest.approx(70 - (55.2 + 0.1)) and got["teacher_room"]["met"]
    recs = _records()
    recs["teacher_top1"] = 57.0
    assert not {c["id"]: c for c in checks(recs, SPEC)}["teacher_room"]["met"]
    gaps = fig1_gaps(_records()["distill"], "s")
    dist03 = next(g for g in gaps if g["fraction"] == 0.3 and g["method"] == "dist")
    assert dist03["gap"] == pytest.approx(3.0) and dist03["n_seeds"] == 6


def test_imagenet_data_scale_report_prints_the_papers_gaps_beside_ours(tmp_path):
    """The ImageNet spec at the paper's fractions; its report puts the official Fig. 1 bars beside the measured
    gaps (runs stood in for by summary.json files written here)."""
    import json

    from study.report import write
    from study.spec import expand, load_spec
    spec = load_spec("configs/study/imagenet_data_scale.yaml")
    jobs = expand(spec, tmp_path / "out", str(tmp_path / "IMAGENET"))
    distill = [j for j in jobs if j.kind == "distill"]
    assert sorted(j.meta["fraction"] for j in distill) == [0.3, 0.6, 1.0]
    for j in distill:
        Path(j.meta["dir"]).mkdir(parents=True)
        settings = {name: {"top1": 80.0 + {"kd": 0.0, "dkd": 0.5, "dist": -0.25}[info["method"]], "top5": 95.0,
                           "best_top1": 80.0} for name, info in j.meta["settings"].items()}
        (Path(j.meta["dir"]) / "summary.json").write_text(json.dumps({"settings": settings, "epochs": 300}))
    meta = {"jobs": len(jobs), "ran": 0, "skipped": 0, "seconds_total": 0.0, "seconds_this_call": 0.0, "cpus": 2}
    rep = write(tmp_path / "out", spec, jobs, meta)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 0.3 | +0.50 | - | -0.25 | - | +0.28 / +0.17 |" in md  # one seed: no interval
    assert "| 1 | +0.50 | - | -0.25 | - | +0.01 / -0.46 |" in md
    assert "CIFAR-100 +0.76 / +2.17" in md and (tmp_path / "out" / "fig1_gaps.png").stat().st_size > 5000
    assert {c["verdict"] for c in rep["claims"]} == {"inconclusive"} and rep["claims"]
    # the stand-in runs recorded no environment: one group, said so
    assert [e["environment"] for e in rep["run_environments"]] == [None] and "not recorded" in md


def test_spec_variants_expand_into_distill_commands_whose_settings_the_report_finds(tmp_path):
    """The Table 4 arms join the grid's call at their fraction; a weaker recipe, the convergence check (twice the
    steps) and the detection students get calls of their own; every setting name is distill.py's own."""
    from distill.args import parse_args
    from distill.settings import settings_spec
    from study.spec import expand
    spec = {"name": "v", "data": {"root": str(tmp_path)}, "teacher": {"model": "resnet18", "checkpoint": "t.pth"},
            "distill": {"students": ["test_resnet"], "methods": ["scratch", "kd", "dkd", "dist"], "fractions": [0.25, 1.0],
                        "seeds": [0, 1], "flags": {"aa": "rand-m7-mstd0.5", "mixup": 0.1}, "epochs_by_fraction": {0.25: 8, 1.0: 2},
                        "arms": {"fraction": 1.0, "methods": ["bkd", "kd_nohard"]},
                        "recipes": {"weak": {"fraction": 1.0, "methods": ["kd", "dkd"], "flags": {"aa": None, "mixup": 0}}},
                        "long": {"fraction": 1.0, "factor": 2, "seeds": [0]},
                        "detection_students": {"students": ["resnet18"], "methods": ["scratch", "kd"], "seeds": [0, 1, 2],
                                               "epochs": 3}},
            "detection": {"seeds": [0, 1, 2], "runs": [{"name": "m", "config": "c.py", "epochs": 1, "inits": {
                "supervised": {"student": "resnet18", "method": "scratch"}, "kd": {"student": "resnet18", "method": "kd"}}}]}}
    jobs = expand(spec, tmp_path / "out")
    distill = {j.id: j for j in jobs if j.kind == "distill"}
    assert len(distill) == 2 * 2 + 2 + 1 + 3
    assert not [j for j in jobs if j.kind == "data"]  # no shapes: the study makes no data
    for j in distill.values():
        args = parse_args(j.args)
        assert sorted(s["name"] for s in settings_spec(args)) == sorted(j.meta["settings"]), j.id
    full = distill["distill/test_resnet-frac1-seed0"].meta["settings"]
    assert {v["method"] for v in full.values()} == {"scratch", "kd", "dkd", "dist", "bkd", "kd_nohard"}
    assert "test_resnet-kd-kd1-ori0" in full
    weak = distill["distill/test_resnet-frac1-seed1-weak"]
    assert "--aa" not in weak.args and weak.args[weak.args.index("--mixup") + 1] == "0"
    long = distill["distill/test_resnet-frac1-seed0-long"]
    assert long.args[long.args.index("--epochs") + 1] == "4" and long.meta["steps_factor"] == 2
    det = [j for j in jobs if j.kind == "transfer"]
    assert len(det) == 6
    for j in det:  # each detector seed starts from the detection student of its own seed
        seed = j.meta["seed"]
        assert f"resnet18-frac1-seed{seed}-det" in j.args[j.args.index("--checkpoint") + 1]


def test_a_spec_that_is_not_yaml_is_one_line(tmp_path, capsys):
    import importlib.util
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npaper:\n  cannot_show:\n    - Two seeds (t = 12.7): inconclusive\n      by construction\n")
    spec = importlib.util.spec_from_file_location("_study_tool", Path(__file__).resolve().parent.parent / "tools/study.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit) as e:
        tool.main([str(bad), "--dry-run"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "is not valid YAML" in err


def test_teacher_world_and_val_points_expand(tmp_path):
    """data.teacher: the teacher trains on its own draw of the world (a second make_shapes job, another seed),
    the students on theirs; val_points gives every cell the same number of top-1 points whatever its epochs."""
    from distill.args import parse_args
    from study.spec import expand
    root = tmp_path / "w"
    spec = {"name": "t", "data": {"root": str(root), "classification": "{root}/classification",
                                  "shapes": {"seed": 0, "world": "groups", "cls-train-per-class": 4},
                                  "teacher": {"root": "{root}/teacher", "shapes": {"seed": 1, "world": "groups",
                                                                                   "cls-train-per-class": 40}}},
            "teacher": {"model": "test_resnet", "flags": {"epochs": 2}},
            "distill": {"students": ["test_resnet"], "methods": ["scratch", "kd", "lskd"], "fractions": [0.5, 1.0],
                        "seeds": [0], "val_points": 4, "flags": {"val-interval": 1},
                        "epochs_by_fraction": {0.5: 40, 1.0: 20}}}
    jobs = {j.id: j for j in expand(spec, tmp_path / "out")}
    data, tdata, teacher = jobs["data"], jobs["data-teacher"], jobs["teacher"]
    assert data.args[:4] == ["--out", str(root), "--seed", "0"] and "--world" in data.args
    assert tdata.args[:4] == ["--out", f"{root}/teacher", "--seed", "1"]
    assert tdata.args[tdata.args.index("--cls-train-per-class") + 1] == "40"
    assert teacher.after == ["data-teacher"]
    assert teacher.args[teacher.args.index("--data-dir") + 1] == f"{root}/teacher/classification"
    for frac, interval in ((0.5, 10), (1.0, 5)):
        j = jobs[f"distill/test_resnet-frac{frac:g}-seed0"]
        a = parse_args(j.args)
        assert a.val_interval == interval and j.args.count("--val-interval") == 1
        assert a.data_dir == f"{root}/classification" and a.kd_loss == ["none", "kd", "lskd"]
        assert {s["method"] for s in j.meta["settings"].values()} == {"scratch", "kd", "lskd"}
        assert set(j.after) == {"data", "teacher"}
