"""The project's files import one another as a star: scripts on top, concepts below, no circle.
Imports are read with ast, those inside functions included, so a lazy import cannot hide a cycle."""

import ast
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def project_imports(folder: str = HERE) -> dict[str, set[str]]:
    """{module: the project's modules it imports anywhere in its file}, for the top-level .py files."""
    modules = {name[:-3] for name in os.listdir(folder) if name.endswith(".py")}
    graph = {}
    for module in modules:
        with open(os.path.join(folder, module + ".py"), encoding="utf-8") as file:
            tree = ast.parse(file.read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        graph[module] = (names & modules) - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, path = {}, []

    def visit(module):
        state[module], path[len(path):] = "open", [module]
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"b", "c"}}) is None  # a diamond
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_project_imports_reads_imports_inside_functions(tmp_path):
    (tmp_path / "low.py").write_text("import os\n")
    (tmp_path / "top.py").write_text("import low\n")
    (tmp_path / "lazy.py").write_text("def f():\n    from top import g\n")
    assert project_imports(str(tmp_path)) == {"low": set(), "top": {"low"}, "lazy": {"top"}}


def test_no_import_circle_among_the_project_files():
    graph = project_imports()
    assert "records" in graph["data"] and "records" in graph["phantom"] and "data" not in graph["phantom"]
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"
