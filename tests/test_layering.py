"""The package layout's rule (docs/architecture.md): folders are layers, and a module imports only
from its own folder or from a folder of a lower layer; no import circle, lazy imports included.

``python tests/test_layering.py`` prints the layers and the folder-to-folder imports.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# folder -> layer (a folder may import only from folders of a lower number, and from itself)
LAYERS = {
    "runtime": 0,
    "data": 1,
    "models": 2,
    "generation": 3,
    "judges": 3,
    "selection": 4,
    "training": 5,
    "eval": 5,
    "report": 6,
    "cli": 7,
}


def module_name(path: Path) -> str:
    parts = path.with_suffix("").relative_to(SRC).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str) -> set[str]:
    """Every ``ssr`` module ``path`` imports, at the top or inside a function (``from ssr.x import
    y`` counts as ``ssr.x.y`` when that is a module, else ``ssr.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ssr")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ssr"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (SRC / sub.replace(".", "/")).with_suffix(".py").exists() else node.module)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.joinpath("ssr").rglob("*.py")}
    return {name: {m for m in imports(path, name) if m in modules} for name, path in modules.items()}


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "."


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(edges.items()):
        for dst in sorted(targets):
            a, b = folder(src), folder(dst)
            if a != b and (a not in LAYERS or b not in LAYERS or LAYERS[b] >= LAYERS[a]):
                bad.append(f"{src} ({a}) imports {dst} ({b})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer_table(edges: dict[str, set[str]]) -> str:
    uses: dict[str, set[str]] = defaultdict(set)
    for src, targets in edges.items():
        for dst in targets:
            if folder(src) != folder(dst):
                uses[folder(src)].add(folder(dst))
    rows = []
    for name, layer in sorted(LAYERS.items(), key=lambda kv: (kv[1], kv[0])):
        n = sum(1 for m in edges if folder(m) == name)
        rows.append(f"L{layer} {name:<11} {n:>2} modules  imports: {', '.join(sorted(uses[name])) or '-'}")
    return "\n".join(rows)


def test_every_module_lives_in_a_layer_folder():
    loose = [m for m in graph() if folder(m) not in LAYERS and m != "ssr"]
    assert not loose, f"modules outside the layer folders: {loose}"


def test_imports_go_downward_only():
    edges = graph()
    print("\n" + layer_table(edges))
    assert not upward_imports(edges), "\n".join(upward_imports(edges))


def test_no_import_circle():
    found = cycles(graph())
    assert not found, f"import circles: {found}"


def test_the_checks_catch_an_upward_import_and_a_circle():
    edges = {"ssr.runtime.a": {"ssr.cli.b"}, "ssr.cli.b": {"ssr.runtime.a"}}
    assert upward_imports(edges) == ["ssr.runtime.a (runtime) imports ssr.cli.b (cli)"]
    assert cycles(edges) == [["ssr.cli.b", "ssr.runtime.a"]]
    assert upward_imports({"ssr.eval.a": {"ssr.training.b"}}), (
        "same-layer siblings must not import each other"
    )


if __name__ == "__main__":
    print(layer_table(graph()))
