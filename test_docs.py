"""The documents hold together: every relative link in README.md, EXPERIMENTS.md, METHOD.md and
REFERENCE.md reaches a file (and its #section, where one is named), every file.py:function and
test_file.py::test named in METHOD.md's map and the README exists, and README.md stays short."""

import ast
import functools
import os
import re

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = ("README.md", "EXPERIMENTS.md", "METHOD.md", "REFERENCE.md")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")           # [text](target) and ![alt](target)
CODE_NAME = re.compile(r"`([a-z_]+\.py)::?([A-Za-z_][\w.:]*)`")  # `grpo.py:grpo_loss`, `test_x.py::test_y`


@functools.cache
def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as file:
        return file.read()


def anchors(markdown: str) -> set[str]:
    """GitHub's ids of a document's headings: "## 10. Map from the papers" -> "10-map-from-the-papers"."""
    ids = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, re.M):
        text = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", ""))
        ids.add(text.replace(" ", "-"))
    return ids


def broken_links(name: str) -> list[str]:
    text = re.sub(r"```.*?```", "", read(name), flags=re.S)     # code blocks hold no links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):                        # http:, https:, mailto:
            continue
        path, _, section = target.partition("#")
        path = path or name
        if not os.path.isfile(os.path.join(HERE, path)):
            broken.append(target)
        elif section and path.endswith(".md") and section not in anchors(read(path)):
            broken.append(target)
    return broken


@functools.cache
def defined_names(path: str) -> frozenset[str]:
    """Top-level functions, classes, their methods ("Class.method") and assigned names of a file."""
    with open(os.path.join(HERE, path), encoding="utf-8") as file:
        tree = ast.parse(file.read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(f"{node.name}.{sub.name}" for sub in node.body
                             if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)))
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return frozenset(names)


def test_anchors_follow_githubs_rule():
    assert anchors("# Title\n## 10. Map from the papers to the code\n### GRPO (§5) — grpo.py, `policy.py`\n") == {
        "title", "10-map-from-the-papers-to-the-code", "grpo-5--grpopy-policypy"}


@pytest.mark.parametrize("name", DOCS)
def test_every_relative_link_resolves(name):
    assert broken_links(name) == []


def test_every_function_and_test_named_in_the_map_exists():
    named = CODE_NAME.findall(read("METHOD.md"))
    assert len(named) > 100  # the map names well over a hundred functions and tests
    named += CODE_NAME.findall(read("README.md"))
    missing = [f"{path}:{name}" for path, name in named
               if not os.path.isfile(os.path.join(HERE, path))
               or name.replace("::", ".") not in defined_names(path)]
    assert missing == []


def test_readme_is_short():
    assert len(read("README.md").splitlines()) <= 260
