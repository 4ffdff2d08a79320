"""Imports flow one way (docs/architecture.md, "Dependencies").

The module graph is read from the source with `ast` (nothing is imported):
tinytrain/ as tinytrain.*, compiler/ as tinytrain.compiler.* (pyproject's
package-dir).  What counts as an edge:
  * every `import` / `from ... import` statement anywhere in a module: at the
    top, inside functions (the CLI imports lazily to start fast), in try/except
    and `if __name__ == "__main__"` blocks.  A lazy import is still a
    dependency: it runs when the function is called, and a cycle through it is
    a real cycle whose failure only waits for the first call;
  * `from pkg import sub` where sub is a module is an edge to pkg.sub; any other
    `from mod import name` is an edge to mod;
  * not counted: the parent packages Python runs implicitly (importing
    tinytrain.compiler.ops.conv first runs tinytrain/__init__.py and
    compiler/ops/__init__.py); with them every module would depend on its
    package's __init__ and the graph would say nothing.

Checked: no cycle; every module in a layer, no layer importing a higher one;
the leaf modules import nothing of the project; and no module reaches into a
`_private` name of another package (an import, or `mod._name` on an imported
module), in particular tinytrain/ into the compiler.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (("tinytrain", "tinytrain"), ("compiler", "tinytrain.compiler"))

# top to bottom; a module may import its own layer or lower ones, never a higher one.
# An entry names a module or a package (the package and everything under it).
LAYERS = (
    ("commands", ("tinytrain.cli", "tinytrain.boards", "tinytrain.flash", "tinytrain.mezo_ort_cli",
                  "tinytrain.fleet.cli")),
    ("runtime", ("tinytrain", "tinytrain.api", "tinytrain.train", "tinytrain.host", "tinytrain.qemu",
                 "tinytrain.sim", "tinytrain.data", "tinytrain.report", "tinytrain.memreport",
                 "tinytrain.mezo_ort", "tinytrain.tools", "tinytrain.pngdraw", "tinytrain.fleet")),
    ("pipeline", ("tinytrain.compiler.pipeline",)),
    ("passes", ("tinytrain.compiler.frontend", "tinytrain.compiler.passes", "tinytrain.compiler.codegen",
                "tinytrain.compiler.scheme", "tinytrain.compiler.tte_schemes", "tinytrain.compiler.verify",
                "tinytrain.compiler.reference", "tinytrain.compiler.hparams",
                "tinytrain.compiler.serialize")),
    ("ops", ("tinytrain.compiler.ops",)),
    ("base", ("tinytrain.compiler", "tinytrain.compiler.ir", "tinytrain.compiler.quant",
              "tinytrain.compiler.errors", "tinytrain.compiler.cfmt", "tinytrain.compiler.layout",
              "tinytrain.compiler.options")),
)
# modules that import nothing of the project (numpy and the standard library only)
LEAVES = ("tinytrain.compiler", "tinytrain.compiler.errors", "tinytrain.compiler.cfmt",
          "tinytrain.compiler.layout", "tinytrain.compiler.quant.qparams", "tinytrain.compiler.quant.fixedpoint",
          "tinytrain.compiler.quant.fmath", "tinytrain.compiler.quant.prng", "tinytrain.compiler.ops.base",
          "tinytrain.compiler.recipe")


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def find_modules(root=ROOT):
    """{dotted name: (path, is_package)}"""
    mods = {}
    for folder, prefix in SOURCES:
        for p in sorted((root / folder).rglob("*.py")):
            parts = list(p.relative_to(root / folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts.pop()
            mods[".".join([prefix] + parts)] = (p, is_pkg)
    return mods


def _absolute(name, is_pkg, node):
    if not node.level:
        return node.module
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(target, mods):
    """The project module an import statement's target lives in (None: outside the project)."""
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def read_imports(name, source, is_pkg, mods):
    """-> list of (target module, imported name or None, line), and the module's
    `mod._name` uses of imported project modules as (module, name, line)."""
    tree = ast.parse(source)
    found, bound = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                t = _known(a.name, mods)
                if t:
                    found.append((t, None, node.lineno))
                    if a.asname and a.name == t:
                        bound[a.asname] = t
        elif isinstance(node, ast.ImportFrom):
            mod = _absolute(name, is_pkg, node)
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in mods:                       # from pkg import submodule
                    found.append((sub, None, node.lineno))
                    bound[a.asname or a.name] = sub
                else:
                    t = _known(mod, mods)
                    if t:
                        found.append((t, a.name, node.lineno))
    uses = [(bound[n.value.id], n.attr, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
            and _private(n.attr)]
    return found, uses


def build_graph(root=ROOT):
    """-> (mods, {module: {imported module: first line}}, [private reaches as text])"""
    mods = find_modules(root)
    graph, private = {}, []
    for name, (path, is_pkg) in mods.items():
        found, uses = read_imports(name, path.read_text(), is_pkg, mods)
        edges = graph.setdefault(name, {})
        for target, what, line in found:
            if target != name:
                edges.setdefault(target, line)
        mine = name if is_pkg else name.rpartition(".")[0]
        for target, what, line in found + uses:
            if what is None:                          # a module: private if its own name is
                full = target
                home, what = target.rpartition(".")[0], target.rpartition(".")[2]
            else:
                full = f"{target}.{what}"
                home = target if mods[target][1] else target.rpartition(".")[0]
            if _private(what) and home != mine:
                private.append(f"{path.relative_to(root)}:{line}: {name} uses {full}")
    return mods, graph, private


def find_cycles(graph):
    """Strongly connected components with more than one module (Tarjan), each as
    one concrete cycle [a, b, ..., a]; sorted, so the report is stable."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in sorted(comps):
        inside, start = set(comp), comp[0]
        path, seen = [start], {start}
        while True:                                   # walk inside the component until it closes
            nxt = sorted(w for w in graph[path[-1]] if w in inside)
            back = [w for w in nxt if w == start]
            if back and len(path) > 1:
                cycles.append(path + [start])
                break
            step = next((w for w in nxt if w not in seen), None)
            if step is None:                          # dead end inside the SCC: close on an earlier node
                w = next(w for w in nxt if w in seen)
                cycles.append(path[path.index(w):] + [w])
                break
            path.append(step)
            seen.add(step)
    return cycles


def layer_of(name):
    best = None
    for k, (_, entries) in enumerate(LAYERS):
        for e in entries:
            if name == e or name.startswith(e + "."):
                if best is None or len(e) > len(best[1]):
                    best = (k, e)
    return None if best is None else best[0]


@pytest.fixture(scope="module")
def project():
    return build_graph()


def test_the_graph_is_read(project):
    """The reader sees the modules and the kinds of import the checks rely on."""
    mods, graph, _ = project
    assert len(mods) > 60
    assert "tinytrain.compiler.ops.conv" in mods and "tinytrain.compiler.pipeline" in mods
    assert "tinytrain.boards" in graph["tinytrain.cli"]                    # lazy, inside a function
    assert "tinytrain.compiler.errors" in graph["tinytrain.cli"]           # relative, at the top
    assert "tinytrain.compiler.cfmt" in graph["tinytrain.compiler.ops.conv"]   # `..` inside a function
    assert "tinytrain.compiler.ops.zo" in graph["tinytrain.train.mezo"]    # from pkg import submodule


def test_no_import_cycles(project):
    _, graph, _ = project
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_layers(project):
    """No module imports a layer above its own (LAYERS, top to bottom)."""
    mods, graph, _ = project
    unplaced = sorted(m for m in mods if layer_of(m) is None)
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"
    bad = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]}) at line {line}"
           for a, edges in sorted(graph.items()) for b, line in sorted(edges.items())
           if layer_of(b) < layer_of(a)]
    assert not bad, "imports against the layers:\n  " + "\n  ".join(bad)


def test_leaves_import_nothing_of_the_project(project):
    _, graph, _ = project
    bad = {m: sorted(graph[m]) for m in LEAVES if graph[m]}
    assert not bad, f"leaf modules with project imports: {bad}"


def test_no_private_names_across_packages(project):
    _, _, private = project
    assert not private, "private names used from another package:\n  " + "\n  ".join(private)


# -- the checks themselves can fail -------------------------------------------------

def test_cycle_finder():
    assert find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}, "c": {"b": 1}}) == []
    two = find_cycles({"a": {"b": 1}, "b": {"a": 1}, "x": {"y": 1}, "y": {"x": 1}})
    assert two == [["a", "b", "a"], ["x", "y", "x"]]


def test_reader_on_a_lazy_cycle_and_a_private_reach(tmp_path):
    """A miniature tree: a cycle through a function-level import, and tinytrain/
    reading a private compiler name both by import and by attribute."""
    (tmp_path / "tinytrain").mkdir()
    (tmp_path / "compiler" / "ops").mkdir(parents=True)
    (tmp_path / "tinytrain" / "__init__.py").write_text("")
    (tmp_path / "tinytrain" / "a.py").write_text("from .compiler.ops import zo\n"
                                                 "from .compiler.ops.zo import _kernel\n"
                                                 "def f():\n    from . import b\n    return zo._step\n")
    (tmp_path / "tinytrain" / "b.py").write_text("from .a import f\n")
    (tmp_path / "compiler" / "__init__.py").write_text("")
    (tmp_path / "compiler" / "ops" / "__init__.py").write_text("")
    (tmp_path / "compiler" / "ops" / "zo.py").write_text("def _kernel():\n    pass\n")
    mods, graph, private = build_graph(tmp_path)
    assert find_cycles(graph) == [["tinytrain.a", "tinytrain.b", "tinytrain.a"]]
    assert [p.split(": ", 1)[1] for p in private] == ["tinytrain.a uses tinytrain.compiler.ops.zo._kernel",
                                                      "tinytrain.a uses tinytrain.compiler.ops.zo._step"]
