"""The layout's promises, read from the source with ``ast``: no import cycle in ``cache/``
(imports under ``TYPE_CHECKING`` count: they are a dependency all the same)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``headforcing`` module ``path`` imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("headforcing")}


def cycles(package: str, src: Path = SRC) -> list[list[str]]:
    """Import cycles among the modules of ``package`` (a package imports its ``__init__``
    re-exports: only module-to-module edges inside the package are followed)."""
    root = src / package.replace(".", "/")
    modules = {module_name(path, src): path for path in root.rglob("*.py")}
    graph = {
        name: sorted(
            target
            for target in imports_of(path)
            if target in modules and target != name and not name.startswith(target + ".")
        )
        for name, path in modules.items()
    }
    found, state = [], {}

    def visit(name, stack):
        state[name] = "open"
        for target in graph[name]:
            if state.get(target) == "open":
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    return found


def test_cycle_finder_finds_a_planted_cycle(tmp_path):
    package = tmp_path / "headforcing" / "planted"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from headforcing.planted.b import thing\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from headforcing.planted.a import x\n"
    )
    assert cycles("headforcing.planted", tmp_path) == [
        ["headforcing.planted.a", "headforcing.planted.b", "headforcing.planted.a"]
    ]


def test_the_cache_has_no_import_cycle():
    assert cycles("headforcing.cache") == []
