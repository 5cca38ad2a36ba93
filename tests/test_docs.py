"""README.md is the front door and docs/ holds one page per study: the README stays short, every relative link and
image in them resolves (anchors included), every page is linked from the README and links back, every path into the
repository's folders they name exists, and every script, module and stage a command in them names exists, with the
options it is given (so a moved or renamed script never leaves a stale command behind)."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
MARKDOWN = [README, *PAGES]
IDS = [str(p.relative_to(REPO)) for p in MARKDOWN]

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`]*`")  # may wrap onto the next line, as in the prose here
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# `python path/to/x.py ...` or `python -m a.b ...` (also .venv/bin/python, python3); torchrun's `-m stages train`
SCRIPT = re.compile(r"\bpython3?\s+((?:\./)?[\w./-]+\.py)\b")
MODULE = re.compile(r"\bpython3?\s+-m\s+([\w.]+)")
STAGE = re.compile(r"-m\s+stages\s+([\w<>-]+)")
# a path into the repository's own folders, in prose or code: `studies/score_samples.py`, `docs/gpu_study.csv`
# a repository path in prose or a command; link targets (after "](") are relative to their page: the link test
REPO_PATH = re.compile(
    r"(?<![\w/.-])(?<!\]\()((?:bench|studies|stages|pipeline|tests|docs|presets|notebooks)/[\w/.-]*\w)"
)
RUN_SCRIPT = re.compile(r"(?<![\w/.-])((?:bench|studies)/[\w/.-]+\.py)\b")  # a script run without `python`
COMMAND_END = re.compile(r"[;|&#]")  # a shell separator or a comment ends a command's options
OPTION = re.compile(r"(?<![\w-])--([a-zA-Z][\w-]*)")


def prose(text: str) -> str:
    """The text without code blocks and inline code, where a `[x](y)` is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)}


def command_lines(text: str) -> list[str]:
    """Each command as one line: the lines of code blocks (backslash continuations joined) and inline code spans."""
    blocks = [block.replace("\\\n", " ") for block in FENCE.findall(text)]
    spans = [span.replace("\n", " ") for span in INLINE_CODE.findall(FENCE.sub("", text))]
    return [line for block in blocks for line in block.splitlines()] + spans


def commands(text: str, *patterns: re.Pattern) -> list[tuple[str, re.Match]]:
    """(command line, match) for every match of the patterns in the text's commands."""
    return [(line, m) for line in command_lines(text) for pattern in patterns for m in pattern.finditer(line)]


def options_after(line: str, end: int) -> list[str]:
    rest = line[end:]
    stop = COMMAND_END.search(rest)
    return OPTION.findall(rest[: stop.start() if stop else len(rest)])


def test_readme_is_the_short_front_door():
    assert len(README.read_text().splitlines()) <= 350


@pytest.mark.parametrize("page", MARKDOWN, ids=IDS)
def test_relative_links_and_images_resolve(page):
    links = LINK.findall(prose(page.read_text()))
    assert links, page
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link} points to a missing file"
        if anchor:
            assert target.suffix == ".md" and anchor in anchors(target), f"{page.name}: no heading for {link}"


def test_every_docs_page_is_linked_from_the_readme_and_back():
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in LINK.findall(prose(README.read_text()))}
    assert PAGES
    for page in PAGES:
        assert page.resolve() in linked, f"README.md does not link {page.name}"
        assert "](../README.md)" in page.read_text(), f"{page.name} does not link back to the README"


@pytest.mark.parametrize("page", MARKDOWN, ids=IDS)
def test_paths_into_the_repository_exist(page):
    for path in REPO_PATH.findall(page.read_text()):
        assert (REPO / path).exists(), f"{page.name}: {path} does not exist"


@pytest.mark.parametrize("page", MARKDOWN, ids=IDS)
def test_commands_name_existing_scripts_and_their_options(page):
    text = page.read_text()
    for m in SCRIPT.finditer(text):  # anywhere, in prose too
        assert (REPO / m.group(1)).is_file(), f"{page.name}: `python {m.group(1)}`: no such script"
    assert len(commands(text, SCRIPT)) == len(SCRIPT.findall(text)), f"{page.name}: a `python x.py` outside code"
    for line, m in commands(text, SCRIPT, RUN_SCRIPT):
        assert (REPO / m.group(1)).is_file(), f"{page.name}: {m.group(1)}: no such script"
        source = (REPO / m.group(1)).read_text()
        for option in options_after(line, m.end()):
            assert f"--{option}" in source, f"{page.name}: {m.group(1)} has no option --{option}"
    for m in MODULE.finditer(text):
        module = m.group(1)
        local = REPO / module.replace(".", "/")
        if (REPO / module.split(".")[0]).exists():
            assert local.with_suffix(".py").is_file() or (local / "__main__.py").is_file(), f"{page.name}: -m {module}"
        else:
            assert importlib.util.find_spec(module) is not None, f"{page.name}: `python -m {module}`: not installed"


@pytest.mark.parametrize("page", MARKDOWN, ids=IDS)
def test_stage_commands_name_existing_stages(page):
    dvc_stages = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    for line, m in commands(page.read_text(), STAGE):
        stage = m.group(1)
        if stage.startswith(("<", "-")):  # `python -m stages <stage> --help`, `python -m stages --help`
            continue
        assert stage in dvc_stages and (REPO / "stages" / f"{stage}.py").is_file(), f"{page.name}: stage {stage}"
        code = (REPO / "stages" / f"{stage}.py").read_text() + (REPO / "stages" / "__init__.py").read_text()
        for option in options_after(line, m.end()):
            assert option == "help" or option.replace("-", "_") in code, f"{page.name}: {stage} has no --{option}"
