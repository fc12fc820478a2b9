"""The layering the README describes: tools -> transfer, export -> distill, with common/ (checkpoint I/O, errors,
the CLI wrapper) under all of them, and no import cycle inside a package or a folder of scripts (statically,
every import counted)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "distill", "transfer", "export", "shapes", "study", "rehearse", "demo")
SCRIPT_DIRS = ("bench", "tools")  # no __init__.py: run as `python bench/run.py`, importing each other as modules


def imports_of(path: Path, package: str) -> set[str]:
    """Absolute module names imported anywhere in a file (function-level imports too)."""
    mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    pkg = mod.rsplit(".", 1)[0] if path.name != "__init__.py" else mod.removesuffix(".__init__")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from . import hooks` names a module
    return out


def graph(package: str) -> dict[str, set[str]]:
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / package).rglob("*.py")}
    return {m: {i for i in imports_of(p, package) if i in files and i != m} for m, p in files.items()}


def script_graph(folder: str) -> dict[str, set[str]]:
    """A folder of scripts: a sibling is imported as ``bench.loader`` (the scripts put the repository root on
    sys.path) or as plain ``loader`` (a script's own folder is sys.path[0]); both name the node ``bench.loader``.
    A plain name that is also a top-level package (``distill`` next to tools/distill.py) is that package: the
    scripts insert the repository root in front."""
    files = {f"{folder}.{p.stem}": p for p in (ROOT / folder).glob("*.py")}

    def node(name: str) -> str:
        if name.split(".")[0] == folder or (ROOT / name.split(".")[0]).is_dir():
            return name
        return f"{folder}.{name}"

    return {m: ({node(i) for i in imports_of(p, folder)} & files.keys()) - {m} for m, p in files.items()}


def assert_no_cycle(g: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(g[m]):
            assert state.get(n) != 1, f"import cycle: {' -> '.join(stack + [m, n])}"
            if n not in state:
                visit(n, stack + [m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])


def test_no_import_cycle_inside_a_package():
    for package in PACKAGES:
        assert_no_cycle(graph(package))


def test_no_import_cycle_inside_a_script_folder():
    for folder in SCRIPT_DIRS:
        g = script_graph(folder)
        assert g, folder
        assert_no_cycle(g)
    # the graph sees the benches' shared clock (both spellings resolve to the same node)
    assert "bench.timing" in script_graph("bench")["bench.loader"]


def test_shared_layer_is_common_not_distill():
    assert not (ROOT / "distill" / "io.py").exists()
    for package in ("common", "transfer", "export"):
        for p in (ROOT / package).rglob("*.py"):
            bad = {i for i in imports_of(p, package) if i == "distill.io" or i.startswith("distill.io.")}
            assert not bad, f"{p.relative_to(ROOT)} imports {bad}"
    for p in (ROOT / "common").rglob("*.py"):  # the bottom floor imports no floor above it
        above = {i for i in imports_of(p, "common") if i.split(".")[0] in ("distill", "transfer", "export", "tools")}
        assert not above, f"{p.relative_to(ROOT)} imports {above}"
    # transfer/ and export/ need nothing from distill/ (the model factory is common.models)
    for folder in ("transfer", "export"):
        for p in (ROOT / folder).rglob("*.py"):
            assert not {i for i in imports_of(p, folder) if i.split(".")[0] == "distill"}, p


def test_sources_cite_only_the_repository_or_public_references():
    """The facts note beside the checkout is not part of the repository: no file may send a reader there."""
    cited = [str(p.relative_to(ROOT)) for folder in (*PACKAGES, *SCRIPT_DIRS, "configs", "docs", "tests", "scripts")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".sh")
             and "reference" + ".md" in p.read_text()]
    assert (ROOT / "README.md").read_text().count("reference" + ".md") == 0
    assert cited == []


# the one module that starts our own tools, and the few files that run other programs on purpose
PROCESS_STARTERS = {
    "common/jobs.py": "the job runner: study, its Slurm tasks, rehearse and the demo start tools through it",
    "study/slurm.py": "Slurm's own commands (sbatch, squeue, sacct, scancel)",
    "bench/coco_process.py": "times a whole process against a plain pycocotools script",
    "common/environment.py": "git and nvidia-smi queries for the environment fingerprint",
}


def test_processes_start_only_in_the_job_runner():
    found = sorted({str(p.relative_to(ROOT)) for folder in ("study", "rehearse", "tools", "bench", "demo", "common")
                    for p in (ROOT / folder).rglob("*.py")
                    if "subprocess" in p.read_text() or "Popen" in p.read_text()})
    assert set(found) <= set(PROCESS_STARTERS), set(found) - set(PROCESS_STARTERS)
    assert "common/jobs.py" in found


def test_tools_are_parsers_over_packages():
    """Every tools/*.py is argparse plus one call into a package: the logic is importable and tested in-process."""
    long = {p.name: n for p in (ROOT / "tools").glob("*.py") if (n := len(p.read_text().splitlines())) > 90}
    assert long == {}


def test_reading_weights_needs_no_detection_package():
    """The general weight reader lives in common/: exporting, CKA and distillation never import transfer/."""
    from common.openmmlab import read_student
    from transfer.convert import read_student as via_transfer
    assert via_transfer is read_student
    for package in ("common", "distill", "export", "demo"):
        for p in (ROOT / package).rglob("*.py"):
            found = {i for i in imports_of(p, package) if i.split(".")[0] == "transfer"}
            if p == ROOT / "export" / "vit_pyramid.py":  # a ViT's detection pyramid is ViTDet's modules
                found = {i for i in found if i.split(".")[:2] != ["transfer", "vitdet"]}
            assert not found, p


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore is its module's own; what another module needs is public."""
    ours = set(PACKAGES) | {"demo", "bench"}
    found = []
    for folder in (*PACKAGES, "demo", *SCRIPT_DIRS):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in ours):
                    found += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []
