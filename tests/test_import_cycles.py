"""No import cycles: every module of the project imports alone in a fresh interpreter, and the graph of
module-level imports between the project's modules has no loop (python-zeroconf's
``tests/test_circular_imports.py`` does the first).

A cycle that works today because of import order breaks as soon as someone imports the other module first;
both checks name the modules involved.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_agent", "ops_native", "discovery", "models")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module under the project's packages (``__main__`` modules left out: they run, not import)."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "__main__.py" or "tests" in path.relative_to(ROOT / pkg).parts:
                continue
            found[_module_name(path)] = path
    return found


MODULES = project_modules()


def test_the_walk_finds_every_room() -> None:
    assert {"edge_agent", "edge_agent.cli.main", "edge_agent.lab.netlab", "ops_native", "discovery",
            "models.zoo"} <= set(MODULES)
    assert not any(name.endswith("__main__") for name in MODULES)


# ------------------------------------------------------------------------------------------ dynamic
# One interpreter loads the third-party libraries (numpy, onnx, ...) and no project module, then forks a
# child per module that imports just that module: each child starts with none of the project imported,
# which is what "fresh" has to mean for an import cycle, and the whole walk takes seconds instead of a
# minute of interpreter start-ups.
_FORK_EACH = r"""
import importlib, json, os, sys, traceback
project, preload, modules = json.loads(sys.stdin.read())
for name in preload:
    try:
        importlib.import_module(name)
    except Exception:
        pass
leaked = sorted(m for m in sys.modules if m.split(".")[0] in project)
if leaked:
    sys.exit("project modules loaded by the third-party preload: " + ", ".join(leaked))
for module in modules:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            importlib.import_module(module)
        except BaseException:
            os.write(w, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        print(json.dumps([module, err or "exit status %d" % status]), flush=True)
"""


def third_party_imports() -> list[str]:
    """Modules the project imports (anywhere) that are not its own (preloaded before forking)."""
    names = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module)
    return sorted(n for n in names if n.split(".")[0] not in (*PACKAGES, "__future__"))


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    job = json.dumps([PACKAGES, third_party_imports(), sorted(MODULES)])
    res = subprocess.run([sys.executable, "-c", _FORK_EACH], input=job, capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    failed = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert not failed, "modules that fail to import alone:\n" + "\n".join(f"  {m}: {e}" for m, e in failed)


# ------------------------------------------------------------------------------------------ static
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: its body, class bodies, if/try/with blocks at module
    level; not function bodies (lazy imports) and not ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(block)
            elif isinstance(node, (ast.With, ast.For, ast.While)):
                visit(node.body)
                visit(getattr(node, "orelse", []))

    visit(tree.body)
    return out


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges_of(target: str, importer: str) -> set[str]:
    """The project modules that importing ``target`` from ``importer`` runs: the target, and its parent
    packages unless ``importer`` already lives inside them (then they are initialised already)."""
    out = set()
    parts = target.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in MODULES:
            continue
        if i < len(parts) and (importer == name or importer.startswith(name + ".")):
            continue
        out.add(name)
    return out


def _is_extension(name: str) -> bool:
    """Whether ``name`` is a compiled submodule of a project package (built from a .pyx, or a .so)."""
    folder = ROOT.joinpath(*name.split(".")[:-1])
    leaf = name.rpartition(".")[2]
    return (folder / f"{leaf}.pyx").exists() or any(folder.glob(f"{leaf}.*.so"))


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports at module level."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    deps |= _edges_of(alias.name, module)
            else:
                base = _resolve(module, path, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    # a submodule (a compiled one, like ops_native._core, is a leaf outside the graph)
                    is_sub = sub in MODULES or _is_extension(sub)
                    deps |= _edges_of(sub if is_sub else base, module)
        deps.discard(module)
        graph[module] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module, as one loop through it (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_loop_through(graph, comp) for comp in components]


def _loop_through(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A path start -> ... -> start inside one strongly connected component (breadth-first)."""
    members, start = set(comp), comp[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def test_find_cycles_reports_a_loop_and_ignores_a_chain() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


# Cycles in rooms being rewritten elsewhere, each with its mend. An entry that no longer matches a cycle
# exactly fails the test too, so it goes when its cycle does (and a module joining the loop is caught).
KNOWN_CYCLES: dict[frozenset[str], str] = {}   # cycle -> why it is tolerated and how it ends


def test_module_level_imports_between_project_modules_form_no_cycle() -> None:
    cycles = find_cycles(import_graph())
    new = [c for c in cycles if frozenset(c) not in KNOWN_CYCLES]
    gone = [sorted(k) for k in KNOWN_CYCLES if k not in {frozenset(c) for c in cycles}]
    if new:
        pytest.fail("import cycles (module-level imports):\n" + "\n".join("  " + " -> ".join(c) for c in new))
    if gone:
        pytest.fail(f"KNOWN_CYCLES lists cycles that no longer exist (remove them): {gone}")
