"""The architecture, checked from the source (docs/architecture.md): which part may import which, no part
of core reaching up by import or by a module name in a string, and no import circle anywhere. The graph
counts every import, function-level ones too: a late import hides a circle from Python, not from a reader."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("core", "export", "audit", "studio", "benchmarks", "unlearn")
# Who may import whom (besides itself). `unlearn` is the command line that composes every part.
MAY_IMPORT = {
    "core": set(),
    "export": {"core"},
    "audit": {"core", "export"},          # the quantize attack measures exported artifacts
    "studio": {"core", "export", "audit"},
    "benchmarks": {"core", "export", "audit", "studio"},
    "unlearn": {"core", "export", "audit", "studio"},
}
UPPER_PARTS = ("export", "audit", "studio", "benchmarks", "unlearn")


def module_files() -> dict[str, Path]:
    files = {}
    for part in PARTS:
        for path in (REPO / part).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            files[name] = path
    return files


def imported_names(module: str, path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Every module name `path` imports, relative imports made absolute. `from package import submodule`
    names the submodule (one of `modules`), not the package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in modules else base)
    return names


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: {name for name in imported_names(module, path, set(files)) if name in files and name != module}
            for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = counter[0]
                    counter[0] += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_circle_anywhere():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    """The check above can fail: a three-module circle and a self-contained pair beside it."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_each_part_imports_only_the_parts_below_it():
    wrong = [f"{module} imports {target}" for module, targets in import_graph().items() for target in targets
             if target.split(".")[0] not in MAY_IMPORT[module.split(".")[0]] | {module.split(".")[0]}]
    assert wrong == []


def test_core_names_no_upper_part_in_a_string():
    """`importlib.import_module("export.cli")` would hide an upward tie from the import graph."""
    files = module_files()
    upper = {name for name in files if name.split(".")[0] in UPPER_PARTS}
    found = []
    for module, path in files.items():
        if not module.startswith("core"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and names_module(node.value, upper):
                found.append(f"{module}: {node.value!r}")
            if isinstance(node, ast.Call) and _called_name(node) in ("import_module", "__import__", "find_spec"):
                found += [f"{module}: imports {arg.value!r}" for arg in node.args[:1]
                          if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in UPPER_PARTS]
    assert found == []


def _called_name(call: ast.Call) -> str:
    return getattr(call.func, "attr", None) or getattr(call.func, "id", "")


def names_module(text: str, modules: set[str]) -> bool:
    """A dotted module path ('export.cli', 'export.cli:main'); a bare word ('export', the verb, or 'unlearn',
    the program's name) is prose, and 'audit.json' is a file."""
    name = text.partition(":")[0]
    return "." in name and name in modules


def test_a_module_name_in_a_string_is_recognised():
    modules = {"export", "export.cli", "audit"}
    assert names_module("export.cli", modules) and names_module("export.cli:main", modules)
    assert not names_module("audit.json", modules) and not names_module("export", modules)


@pytest.mark.parametrize("source, expected", [
    ("from .evaluation import scores\n", {"core.evaluation.scores"}),
    ("from .evaluation import evaluate\n", {"core.evaluation"}),
    ("from ..runs import RunDir\n", {"core.runs"}),
    ("import export.cli\n", {"export.cli"}),
])
def test_relative_imports_resolve_to_absolute_names(tmp_path, source, expected):
    path = tmp_path / "cli.py"
    path.write_text(source)
    module = "core.evaluation.cli" if source.startswith("from ..") else "core.cli"
    assert imported_names(module, path, {"core.evaluation", "core.evaluation.scores", "core.runs"}) == expected
