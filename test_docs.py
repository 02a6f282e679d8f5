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


def test_readme_names_each_step_of_grpo_main_that_handles_groups():
    """README's "where to start reading" follows the code: its training-loop row names grpo.py's
    main, its Group record, and every grpo.py function or class that main's loop calls to make
    the step's groups or hand them on (sample G, reward, advantages, log-probs, update)."""
    tree = ast.parse(read("grpo.py"))
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    loop = next(node for node in ast.walk(main) if isinstance(node, ast.For))
    makes_groups = {id(node.value) for node in ast.walk(loop) if isinstance(node, ast.Assign)
                    and any(isinstance(n, ast.Name) and n.id == "groups" for n in ast.walk(node.targets[0]))}
    steps = set()
    for call in (node for node in ast.walk(loop) if isinstance(node, ast.Call)):
        takes_groups = any(isinstance(a, ast.Name) and a.id == "groups" for a in call.args)
        func = call.func.value if isinstance(call.func, ast.Attribute) else call.func
        if (takes_groups or id(call) in makes_groups) and isinstance(func, ast.Name):
            steps.add(func.id)
    assert {"sample_step", "set_advantages", "policy_update"} <= steps <= defined_names("grpo.py")
    row = next(line for line in read("README.md").splitlines() if "`grpo.py:main`" in line)
    assert steps | {"main", "Group"} <= {name for path, name in CODE_NAME.findall(row) if path == "grpo.py"}
