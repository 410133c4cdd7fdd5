"""Layers you can see, cycles you cannot hide: lorakit's import graph, function-local imports included.

Every module is parsed (nothing is imported) and every `import` it holds, at the top or inside a function, becomes an
edge. Imports only a type checker sees (`if TYPE_CHECKING:`) are left out: they run nothing.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

from ..conftest import REPO

PACKAGE = REPO / "lorakit"

# The layers, lowest first: a module imports its own layer or a lower one, never a higher one. Within a layer the
# imports must still form no cycle. A unit is a top-level module or package of lorakit ("lorakit" is __init__).
LAYERS: list[tuple[str, set[str]]] = [
    # Leaves: the errors a user acts on, the console, the fence around private library hooks, guarded reads and
    # atomic writes, where the cache lives, and the package root (__version__ only).
    ("base", {"lorakit", "assets", "errors", "console", "compat", "io", "cache"}),
    # What every stage is configured and talks with: the recipe schema (config), the chat-template vocabulary (and the
    # families base models get their template from), and
    # the built-in tiny model (built with tokenizers/transformers from io up, so model resolution can use it).
    ("vocabulary", {"config", "chat_template", "chat_families", "tiny"}),
    # What the stages read and write: outputs (every folder lorakit writes and reads back), model (sources, base
    # resolution, loading; gguf_source unpacks GGUF bases into the cache), infer (a run or merged model loaded for
    # generation), data (datasets, formats, tokenization), vram (pure arithmetic over a recipe: memory plans),
    # rewards (what GRPO and eval score replies with: built-ins, the user's functions, a reward model).
    ("model, data, outputs", {"outputs", "model", "gguf_source", "infer", "data", "vram", "rewards"}),
    # The stages, and what reports on their outputs (env describes what a run would choose on this machine).
    ("stages", {"train", "export", "eval", "report", "env"}),
    # `lorakit run`: the stages in order.
    ("pipeline", {"pipeline"}),
    # The command line: the one error boundary, and the only place lorakit imports lazily (so `--help` is instant).
    ("cli", {"cli", "__main__"}),
]
LAYER_OF = {unit: index for index, (_, units) in enumerate(LAYERS) for unit in units}
LAZY_ALLOWED = {"cli", "__main__"}

# Modules still allowed a lorakit-internal function-local import outside cli: none.
PENDING: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    is_package = modules()[importer].name == "__init__.py"
    base = package if is_package else package[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def imports() -> list[tuple[str, str, bool, int]]:
    """(importer, imported module, inside a function, line) for every lorakit-internal import."""
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, in_function: bool, name: str = name) -> None:
            if isinstance(node, ast.If) and _type_checking_only(node):
                for child in node.orelse:
                    visit(child, in_function, name)
                return
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "lorakit" or alias.name.startswith("lorakit."):
                        found.append((name, alias.name, in_function, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, node)
                if target == "lorakit" or target.startswith("lorakit."):
                    for alias in node.names:  # `from lorakit import compat`: the module itself
                        child = f"{target}.{alias.name}"
                        found.append((name, child if child in modules() else target, in_function, node.lineno))
            inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for child in ast.iter_child_nodes(node):
                visit(child, inner, name)

        visit(tree, False)
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules()}
    for importer, imported, _, _ in imports():
        if imported != importer and imported in modules():
            edges[importer].add(imported)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
    return found


def test_every_unit_has_a_layer():
    assert {unit(m) for m in modules()} <= set(LAYER_OF), "a new top-level module: give it a layer in LAYERS"


def test_every_lorakit_import_names_a_module_that_exists():
    missing = [f"{importer}:{line} imports {imported}" for importer, imported, _, line in imports()
               if imported not in modules()]
    assert not missing, "\n".join(missing)


def test_imports_point_down_the_layers():
    upward = [f"{importer}:{line} ({LAYERS[LAYER_OF[unit(importer)]][0]}) imports {imported} "
              f"({LAYERS[LAYER_OF[unit(imported)]][0]})"
              for importer, imported, _, line in imports()
              if imported in modules() and LAYER_OF[unit(imported)] > LAYER_OF[unit(importer)]]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules():
    assert cycles(graph()) == []


def test_no_import_cycle_between_packages():
    """train, export, eval, report, pipeline, outputs, model, data... as units: no two need each other."""
    edges: dict[str, set[str]] = {}
    for importer, imported in ((a, b) for a, bs in graph().items() for b in bs):
        if unit(importer) != unit(imported):
            edges.setdefault(unit(importer), set()).add(unit(imported))
            edges.setdefault(unit(imported), set())
    assert cycles(edges) == []


def test_lorakit_imports_inside_functions_only_in_the_cli():
    """Function-local imports are for heavy third-party libraries (torch, transformers, ...), and in the CLI, which
    keeps `lorakit --help` instant; elsewhere one hides a cycle or a layer it should not reach."""
    lazy = [f"{importer}:{line} imports {imported} inside a function" for importer, imported, local, line in imports()
            if local and unit(importer) not in LAZY_ALLOWED and importer not in PENDING]
    assert not lazy, "\n".join(lazy)


def test_pending_modules_still_need_to_be_pending():
    """PENDING lists only modules that still import lorakit lazily: one that no longer does leaves the set."""
    still = {importer for importer, _, local, _ in imports() if local}
    assert PENDING <= set(modules()) and PENDING <= still, sorted(PENDING - still)


def test_the_report_depends_on_outputs_only():
    allowed = {"report", "outputs", "io", "console", "errors", "lorakit"}
    reached = {unit(imported) for importer, imported, _, _ in imports() if unit(importer) == "report"}
    assert reached <= allowed, sorted(reached - allowed)


MANIFEST_READS = re.compile(r"manifest\.get\(|manifest\[[\"']|\bread_json\([^)]*MANIFEST|\"manifest\.json\"")


def test_nobody_outside_outputs_parses_a_manifest():
    # lorakit.io names the file (a folder without it is not lorakit's to replace) and never reads it
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for name, path in modules().items() if unit(name) not in ("outputs", "io")
             for number, line in enumerate(path.read_text().splitlines(), start=1) if MANIFEST_READS.search(line)]
    assert not found, "\n".join(found)
