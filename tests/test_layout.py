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


# Top to bottom (docs/design.md, "Layers"): the CLI, the API and the commands' library, the
# pipeline (prompts and switches), the chunk loop (sampling), the cache, the model. A layer
# imports only layers below it; io/ (files and formats) and small utilities serve them all.
# The cache reads one data type of heads/ (the head map), never its profiling.
BELOW = [
    ("headforcing.model", ("headforcing.cache", "headforcing.heads", "headforcing.io")),
    ("headforcing.cache", ("headforcing.sampling", "headforcing.heads.profile")),
    ("headforcing.cache", ("headforcing.heads.recall", "headforcing.heads.calibrate")),
    ("headforcing.sampling", ("headforcing.switch",)),
    ("headforcing.cache", ("headforcing.heads.lookup",)),
    ("headforcing.switch", ("headforcing.pipeline",)),
    # the commands' library sits above the pipeline: loading, planning, the writer, ...
    ("headforcing.pipeline", ("headforcing.loading", "headforcing.planning")),
    ("headforcing.pipeline", ("headforcing.io.writer", "headforcing.heads.lookup")),
    ("headforcing.pipeline", ("headforcing.distributed.generate", "headforcing.prompts")),
]
ABOVE_ALL = ("headforcing.cli",)  # below the CLI, nothing imports it
UPPER = (
    "headforcing.pipeline",
    "headforcing.loading",
    "headforcing.planning",
    "headforcing.bench",
    "headforcing.batch",
    "headforcing.toyworld",
)


def layer_violations(src: Path = SRC) -> list[str]:
    found = []
    for path in (src / "headforcing").rglob("*.py"):
        name = module_name(path, src)
        imported = imports_of(path)
        forbidden = []
        if not name.startswith((*ABOVE_ALL, "headforcing.__main__")):
            forbidden += ABOVE_ALL
        for layer, below_it_not in BELOW:
            if name.startswith(layer):
                forbidden += below_it_not
        if name.startswith(("headforcing.model", "headforcing.cache", "headforcing.sampling")):
            forbidden += ("headforcing.switch", *UPPER)
        if name.startswith("headforcing.switch"):
            forbidden += UPPER
        bad = {target for target in imported if target.startswith(tuple(forbidden))}
        for target in sorted(bad):
            if not any(target.startswith(other + ".") for other in bad):  # a module, not a name
                found.append(f"{name} imports {target}")
    return found


def test_layers_import_only_the_layers_below():
    assert layer_violations() == []


def test_layer_check_finds_a_planted_upward_import(tmp_path):
    package = tmp_path / "headforcing" / "cache"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "kv.py").write_text("from headforcing.pipeline import Pipeline\n")
    assert layer_violations(tmp_path) == ["headforcing.cache.kv imports headforcing.pipeline"]


MAX_MODULE_LINES = 500  # a module one reads in one sitting (docs/design.md, "Layers")


def long_modules(src: Path = SRC, limit: int = MAX_MODULE_LINES) -> list[str]:
    found = []
    for path in sorted((src / "headforcing").rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(src)}: {lines} lines")
    return found


def test_no_module_is_over_500_lines():
    assert long_modules() == []


def test_module_length_check_finds_a_long_module(tmp_path):
    package = tmp_path / "headforcing"
    package.mkdir()
    (package / "short.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    (package / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert long_modules(tmp_path) == [f"headforcing/long.py: {MAX_MODULE_LINES + 1} lines"]


def test_the_cli_modules_are_short():
    """The CLI parses, calls the library and prints: each command's module about 250 lines
    (the shared option handling, cli/options.py, a little more)."""
    cli = SRC / "headforcing" / "cli"
    lengths = {path.name: len(path.read_text().splitlines()) for path in cli.glob("*.py")}
    assert len(lengths) >= 10, lengths  # a package, one module per command
    assert {name: n for name, n in lengths.items() if n > 300} == {}
