"""The documentation: README.md stays a front page whose quick start runs, docs/ links resolve, and the benchmark
report writes its generated tables into docs/benchmarks.md, and every command the docs show parses. Fast: no solver
runs."""

import ast
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def _without_code(text: str) -> str:
    """The text with fenced blocks and inline code removed (links shown as code are examples, not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", FENCE.sub("", page.read_text()), re.M)}


def _section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def test_docs_pages_exist():
    for name in ("usage", "tasks", "solvers", "priors", "benchmarks", "quantisation", "deployment", "development"):
        assert (REPO / "docs" / f"{name}.md").is_file(), name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_docs_relative_links_resolve(page):
    bad = []
    for target in LINK.findall(_without_code(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target} (no heading with that anchor)")
    assert not bad, f"{page.relative_to(REPO)}: broken links: {bad}"


def test_docs_readme_links_every_docs_page():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in LINK.findall(_without_code(README.read_text()))}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(REPO)}"


def test_docs_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) < 150, f"README.md has {len(lines)} lines: move detail to docs/"
    assert "RESULTS:BEGIN" not in README.read_text(), "the generated tables live in docs/benchmarks.md"


def _unknown_options(command, args: list[str]) -> list[str]:
    """The options in ``args`` that the click ``command`` does not define."""
    names = {o for p in command.params for o in getattr(p, "opts", [])}
    return [t for t in args if t.startswith("-") and t.split("=", 1)[0] not in names]


def _commands(block: str):
    for line in block.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line:
            yield shlex.split(line)


def test_docs_readme_commands_exist():
    """Every command the README shows in its set-up and quick start names a real make target, restore subcommand
    (with options it has) or importable module."""
    import typer.main

    from restore import cli
    from restore.tasks import parse

    group = typer.main.get_command(cli.app)
    makefile = (REPO / "Makefile").read_text()
    text = README.read_text()
    blocks = [b for lang, b in FENCE.findall(_section(text, "Set-up: two commands") + _section(text, "Quick start"))
              if lang == "bash"]
    seen = set()
    for argv in (a for b in blocks for a in _commands(b)):
        if argv[0] == "make":
            assert re.search(rf"^{re.escape(argv[1])}:", makefile, re.M), f"no make target {argv[1]}"
        elif argv[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
        elif argv[0] == "restore":
            sub = argv[1] if argv[1] in cli.SUBCOMMANDS else "run"  # `restore IMAGE ...` is `restore run IMAGE ...`
            assert sub in group.commands, f"restore {sub} is not a subcommand"
            bad = _unknown_options(group.commands[sub], argv[2:])
            assert not bad, f"restore {sub} has no option {', '.join(bad)}: {' '.join(argv)}"
            for flag in ("-t", "--task"):
                if flag in argv:
                    parse(argv[argv.index(flag) + 1])
        else:
            raise AssertionError(f"README quick start shows an unchecked command: {' '.join(argv)}")
        seen.add(argv[0] if argv[0] != "restore" else f"restore {argv[1] if argv[1] in cli.SUBCOMMANDS else 'run'}")
    assert {"make", "restore run", "restore batch", "restore ui"} <= seen, seen


def test_docs_readme_python_quick_start_names_exist():
    """The quick start's Python block parses, imports names restore exports, and uses Posterior attributes."""
    import restore
    from restore.api import RECOMMENDED
    from restore.posterior import Posterior

    code = "\n".join(b for lang, b in FENCE.findall(_section(README.read_text(), "Quick start")) if lang == "python")
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module == "restore"
            assert all(a.name in restore.__all__ for a in node.names)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "post":
            assert hasattr(Posterior, node.attr) or node.attr in Posterior.__dataclass_fields__, node.attr
    # the README states the recommended solvers; keep it in step with restore.api.RECOMMENDED
    quick = _section(README.read_text(), "Quick start")
    shown = quick.upper().replace("-", "")  # RED-Diff is the solver `reddiff`
    assert "PMRF" in quick and all(s.upper() in shown for s in RECOMMENDED.values())


# ---- benchmarks.report writes docs/benchmarks.md ----------------------------------------------------------------


def test_report_markers_live_in_docs_benchmarks():
    from benchmarks import report

    assert report.PAGE == REPO / "docs" / "benchmarks.md"
    page = report.PAGE.read_text()
    assert page.count(report.BEGIN) == 1 and page.count(report.END) == 1
    assert page.index(report.BEGIN) < page.index(report.END)


def test_report_rewrites_only_the_block(tmp_path):
    from benchmarks import report

    page, readme = tmp_path / "page.md", tmp_path / "README.md"
    page.write_text(f"# hand-written\n\n{report.BEGIN}\nstale\n{report.END}\n\ntail\n")
    readme.write_text(f"# intro\n\n{report.VS_TV_BEGIN}\nold table\n{report.VS_TV_END}\n\nmore\n")
    report.main(["--page", str(page), "--readme", str(readme)])
    text = page.read_text()
    assert "stale" not in text and text.startswith("# hand-written\n\n") and text.endswith(f"{report.END}\n\ntail\n")
    assert report.render() in text
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# intro\n\n") and text.endswith(f"{report.VS_TV_END}\n\nmore\n")
    assert "| TV least squares itself (PSNR) |" in text


def test_readme_table_against_tv_is_the_generated_one():
    """README's table against TV least squares is what benchmarks.report makes of quality.json, so its numbers
    cannot drift from the run; each cell reads from the paired rows, the default solver's in bold."""
    from benchmarks import report

    readme = (REPO / "README.md").read_text()
    assert readme.count(report.VS_TV_BEGIN) == 1 and readme.count(report.VS_TV_END) == 1
    data = json.loads((report.RESULTS / "quality.json").read_text())
    assert report.against_tv_matrix(data) in readme
    toy = {"tasks": {"denoise25": "denoise:gaussian:sigma=0.1", "sr4": "sr:bicubic:factor=4,noise=0.01"},
           "rows": [{"task": "denoise25", "method": "tv least squares", "psnr": 26.5},
                    {"task": "denoise25", "method": "pmrf", "psnr": 30.6, "coverage_90": 0.93}],
           "against_tv": [{"task": "denoise25", "method": "pmrf", "psnr_difference": 4.126, "ci95": 0.3, "wins": 24,
                           "images": 24},
                          {"task": "sr4", "method": "pmrf", "psnr_difference": -0.104, "ci95": 0.12, "wins": 6,
                           "images": 24}],
           "per_image": [], "command": "python -m benchmarks.quality --resume --methods pmrf vble --jobs 2",
           "environment": {"date": "2026-12-05 01:00:00"}}
    lines = report.against_tv_matrix(toy).splitlines()
    assert lines[2] == "| TV least squares itself (PSNR) | 26.50 | - |"
    assert lines[3] == "| PMRF | **+4.13 ± 0.30 (24/24)** | -0.10 ± 0.12 (6/24) |"  # RED-Diff runs x4 SR
    assert lines[4] == "| recommended solver's 90 % coverage | 0.93 | - |"
    assert lines[-1] == "`python -m benchmarks.quality --resume` (last rows 2026-12-05)"
    # a result whose provenance the code no longer matches (here: an option the solver no longer has) is marked
    toy["per_image"] = [{"task": "sr4", "method": "pmrf", "image": "a.png", "provenance": "k1"}]
    toy["provenances"] = {"k1": {"solvers": [{"name": "pmrf", "options": {"no_such_option": 1}, "config": {}}],
                                 "priors": {}}}
    assert report.stale_cells(toy) == {("sr4", "pmrf")}
    text = report.against_tv_matrix(toy)
    assert "| -0.10 ± 0.12 (6/24) † |" in text and "† measured before a later change" in text


def test_results_older_than_the_code_are_labelled_as_such():
    from benchmarks import report

    assert set(report.OLDER_THAN_THE_CODE) <= set(report.RENDER)  # a typo would silently drop the label
    text = report.render()
    for name in report.OLDER_THAN_THE_CODE:
        if (report.RESULTS / f"{name}.json").exists():
            assert report.OLDER_THAN_THE_CODE[name] in text


def test_report_refuses_a_page_without_markers(tmp_path):
    from benchmarks import report

    page = tmp_path / "page.md"
    page.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="lacks the markers"):
        report.main(["--page", str(page)])
    assert page.read_text() == "# no markers\n"


# ---- every command the docs show parses with the options its program has ------------------------------------------

DOC_PAGES = [*PAGES, REPO / "models" / "MODELS.md", REPO / "data" / "README.md"]


def _doc_commands():
    """(page, command, whole) for every `python -m ...` / `restore ...` command in the docs: whole = a line of a fenced
    block (run as shown: it must parse completely), else inline code in prose (its options must exist)."""
    for page in DOC_PAGES:
        text = page.read_text()
        for _, block in FENCE.findall(text):
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip()
                if line.startswith(("python -m ", "restore ")):
                    yield page, line, True
        for m in re.finditer(r"`((?:python -m|restore) [^`]+)`", FENCE.sub("", text)):
            yield page, " ".join(m.group(1).split()), False


class _Parsed(Exception):
    pass


def test_docs_commands_parse(monkeypatch):
    """Each documented command names a real module or `restore` subcommand, and its options parse there (argparse
    mains are stopped right after parsing, click/typer commands only build their context): docs cannot rot silently.
    "..." marks an elided command (skipped) and [...] an optional part (dropped)."""
    import argparse
    import importlib
    import inspect

    import click
    import typer.main

    from restore import cli

    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse_args(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    group = typer.main.get_command(cli.app)

    def python_module(where, module_name, args, whole):
        main = getattr(importlib.import_module(module_name), "main", None)
        if main is None:
            return [f"{where}: {module_name} has no main() to parse its options"] if whole or args else []
        try:
            if inspect.signature(main).parameters:
                main(args)
            else:
                monkeypatch.setattr("sys.argv", [module_name, *args])
                main()
            return [f"{where}: did not parse its arguments"]
        except _Parsed:
            return []
        except SystemExit as e:
            return [f"{where}: argparse refused it (exit {e.code})"]

    problems, checked = [], 0
    for page, line, whole in _doc_commands():
        if "..." in line:
            continue
        argv = shlex.split(re.sub(r"\[[^\]]*\]", "", line))
        where = f"{page.relative_to(REPO)}: {line}"
        checked += 1
        if argv[0] == "python":
            problems += python_module(where, argv[2], argv[3:], whole)
            continue
        sub = argv[1] if argv[1] in cli.SUBCOMMANDS else "run"
        rest = argv[2:] if argv[1] in cli.SUBCOMMANDS else argv[1:]
        if sub == "bench" and rest and not rest[0].isupper():  # `restore bench NAME ARGS` runs benchmarks.NAME ARGS
            problems += python_module(where, f"benchmarks.{rest[0]}", rest[1:], whole)
            continue
        command = group.commands[sub]
        if whole:
            try:
                command.make_context(sub, list(rest))
            except click.ClickException as e:
                problems.append(f"{where}: {e.format_message()}")
        else:
            problems += [f"{where}: restore {sub} has no option {t}" for t in _unknown_options(command, rest)]
    assert checked > 50, checked
    assert not problems, "\n".join(problems)
