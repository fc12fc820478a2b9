"""The manual stays true: every documented command parses with its tool's own argument parser, every repository
path and Makefile target it names exists, every page is linked from the README, figures say when and how they
were made, and the README stays short."""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
from pathlib import Path

import pytest

from conftest import tool_main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# folders of the repository whose paths the docs may name (outputs such as work_dirs/ or output/ are not checked)
REPO_DIRS = ("common", "distill", "transfer", "export", "shapes", "study", "configs", "tools", "bench", "scripts",
             "docs", "tests", "requirements", "rehearse")
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
DATE = re.compile(r"20\d\d-\d\d-\d\d")


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def shell_blocks(text: str) -> list[str]:
    """Fenced blocks that hold shell commands (bash/sh/console or unlabelled ones whose lines start like commands)."""
    out = []
    for lang, body in FENCE.findall(text):
        if lang in ("bash", "sh", "shell", "console") or (not lang and re.search(r"^(python|torchrun|make|srun) ",
                                                                                   body, re.M)):
            out.append(body)
    return out


def commands(block: str, variables: dict[str, str] | None = None) -> list[list[str]]:
    """Simple commands of a shell block: continuations joined, VAR="..." assignments (kept in ``variables`` across
    the blocks of a page) and for-loop variables (first value) substituted, split at ; && || |, comments and
    redirections dropped. An unresolved $VAR at the start of a command fails: it would hide the command."""
    variables = {} if variables is None else variables
    out = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        m = re.match(r'^\s*([A-Z_][A-Z0-9_]*)=(".*"|\S+)\s*$', line)
        if m:
            variables[m.group(1)] = shlex.split(m.group(2))[0] if m.group(2) else ""
            continue
        for loop in re.finditer(r"for (\w+) in ([^;]+);\s*do", line):
            variables[loop.group(1)] = loop.group(2).split()[0]
        line = re.sub(r"for \w+ in [^;]+;\s*do", ";", line)
        line = re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), line)
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lex.whitespace_split, lex.commenters = True, "#"
        try:
            tokens = list(lex)
        except ValueError as e:
            raise AssertionError(f"unparseable shell line: {line!r} ({e})")
        cmd: list[str | None] = []
        for tok in tokens + [";"]:
            if tok in (";", "&&", "||", "|", "&") or tok in ("do", "done") and not cmd:
                if cmd:
                    out.append(cmd)
                cmd = []
            elif set(tok) <= set("<>&"):
                cmd.append(None)  # a redirection: the rest is not the command's
            else:
                cmd.append(tok)
    cmds = [list(itertools.takewhile(lambda t: t is not None, c)) for c in out]
    for c in cmds:
        assert not (c and c[0].startswith("$")), f"a documented command starts with an unknown variable: {c[0]}"
    return cmds


def tool_invocations(text: str) -> list[tuple[str, list[str]]]:
    """(tools/NAME.py, argv) for every documented call of one of our tools, directly or through torchrun/srun."""
    calls, variables = [], {}
    for block in shell_blocks(text):
        for cmd in commands(block, variables):
            for i, tok in enumerate(cmd):
                if re.fullmatch(r"tools/\w+\.py", tok):
                    launcher = cmd[:i]
                    if launcher and Path(launcher[0]).name not in ("python", "python3", "torchrun", "srun") \
                            and not launcher[0].endswith("/python"):
                        break
                    calls.append((tok, cmd[i + 1:]))
                    break
    return calls


class _Parsed(BaseException):
    """Raised once a tool's parser accepted the arguments: nothing after parsing runs."""


def parse_with_tool(tool: str, argv: list[str]) -> None:
    """Import tools/NAME.py and hand argv to its own main(); stop right after its parser accepts it."""
    main = tool_main(tool)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        self.allow_abbrev = False  # a documented prefix of a renamed flag must not pass for it
        ns = original(self, args, namespace)
        if getattr(self, "add_help", True):  # the tool's parser, not a pre-parser for -c
            raise _Parsed(ns)
        return ns

    argparse.ArgumentParser.parse_args = parse_then_stop
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(argv)
    except _Parsed:
        return
    except SystemExit as e:
        raise AssertionError(f"{tool} {shlex.join(argv)}: its parser refused it (exit {e.code}): "
                             f"{err.getvalue().strip().splitlines()[-1:]}")
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{tool} {shlex.join(argv)}: main() returned without parsing its arguments")


ALL_CALLS = [(page, tool, argv) for page in PAGES for tool, argv in tool_invocations(page.read_text())]


def test_docs_document_commands():
    assert len(ALL_CALLS) >= 40, f"only {len(ALL_CALLS)} tool commands found in the docs: is the extraction broken?"
    documented = {tool for _, tool, _ in ALL_CALLS}
    for tool in ("tools/distill.py", "tools/convert.py", "tools/transfer.py", "tools/test.py", "tools/export_onnx.py",
                 "tools/study.py", "tools/cka.py", "tools/coco_eval.py", "tools/summarize.py"):
        assert tool in documented, f"{tool} is not documented by any command in README.md or docs/"


@pytest.mark.parametrize("page,tool,argv", ALL_CALLS,
                         ids=[f"{_rel(p)}:{t}:{i}" for i, (p, t, _) in enumerate(ALL_CALLS)])
def test_documented_command_parses(page, tool, argv):
    assert (ROOT / tool).is_file(), f"{_rel(page)} runs {tool}, which does not exist"
    parse_with_tool(tool, argv)


def test_a_renamed_flag_fails_the_check():
    """The check can fail: the same documented command with one flag misspelt is refused."""
    page, tool, argv = next(c for c in ALL_CALLS if c[1] == "tools/convert.py" and "--verify" in c[2])
    parse_with_tool(tool, argv)
    with pytest.raises(AssertionError, match="refused"):
        parse_with_tool(tool, [a if a != "--verify" else "--verfy" for a in argv])


def _braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(",") for q in _braces(path[:m.start()] + alt + path[m.end():])]


def named_paths(text: str) -> set[str]:
    """Repository paths a page names (in code spans, code blocks and links), brace alternatives expanded."""
    found = set()
    pattern = r"(?<![\w./-])((?:%s)/[\w.{},/*-]*)" % "|".join(REPO_DIRS)
    for m in re.finditer(pattern, text):
        p = m.group(1).rstrip(".,)")
        if "*" in p or "<" in p:
            continue
        found.update(_braces(p))
    return found


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_paths_exist(page):
    text = page.read_text()
    missing = sorted(p for p in named_paths(text) if not (ROOT / p).exists())
    assert not missing, f"{_rel(page)} names paths that do not exist: {missing}"
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    broken = [l for l in links if "://" not in l and not (page.parent / l).exists()]
    assert not broken, f"{_rel(page)} links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_make_targets_exist(page):
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named, variables = set(re.findall(r"`make ([\w-]+)", page.read_text())), {}
    for block in shell_blocks(page.read_text()):
        named |= {c[1] for c in commands(block, variables) if len(c) > 1 and c[0] == "make"}
    assert named <= targets, f"{_rel(page)} names make targets that do not exist: {sorted(named - targets)}"


def test_every_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"docs/{page.name} is not linked from README.md"


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 160, f"README.md has {n} lines; the manual belongs in docs/"


def measured_tables(text: str) -> list[tuple[int, str]]:
    """Markdown tables of measured figures: a row with a decimal number outside its first column, not quoted
    from the paper, the model zoo or a target; returned with their first line number."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            rows = lines[i:j]
            header = rows[0].lower()
            numeric = any(re.search(r"\d\.\d", "|".join(r.split("|")[2:])) for r in rows[2:])
            if numeric and not re.search(r"paper|zoo|default|flag", header):
                out.append((i, "\n".join(rows)))
            i = j
        else:
            i += 1
    return out


def figures_without_provenance(text: str) -> list[str]:
    """Tables of measured figures with no date or no command within the paragraphs around them."""
    lines, bad = text.splitlines(), []
    for start, table in measured_tables(text):
        around = "\n".join(lines[max(0, start - 12):start + len(table.splitlines()) + 12])
        if not DATE.search(around) or not re.search(r"`(make \w+|python [^`]+|bash [^`]+|torchrun [^`]+)`", around):
            bad.append(f"line {start + 1}:\n{table}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_figures_say_when_and_how(page):
    bad = figures_without_provenance(page.read_text())
    assert not bad, f"{_rel(page)}: tables of figures without the date and command that made them: {bad}"


def test_figure_check_can_fail():
    table = "| run | top-1 |\n|---|---|\n| kd | 30.2 |\n"
    assert figures_without_provenance("Some prose.\n\n" + table)
    assert figures_without_provenance("Measured 2026-11-29.\n\n" + table)  # a date but no command
    assert not figures_without_provenance("Measured 2026-11-29 with `make demo`.\n\n" + table)
    assert not figures_without_provenance("| flag | default |\n|---|---|\n| --temperature | 1.0 |\n")
