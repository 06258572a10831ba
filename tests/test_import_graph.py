"""The modules of tfp_bnn import each other without a cycle.

Edges are the ``import tfp_bnn...`` / ``from tfp_bnn... import ...`` statements a module runs
when it is imported: its top level, including class bodies and ``if``/``try`` blocks. Imports
inside functions are left out: they run at call time, after every module has finished loading,
so they cannot leave a half-initialised module behind (the reason a cycle is a bug), and a few
(the CLI's lazy sub-commands) exist precisely to keep start-up light. ``from pkg import name``
is an edge to ``pkg.name`` when that is a module, else to ``pkg``; importing ``pkg.sub`` also
runs ``pkg/__init__``, but that is the package's own loading order, not an edge of ``sub``.
"""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tfp_bnn")


def _modules():
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PACKAGE))
                name = rel[:-3].replace(os.sep, ".")
                found[name[:-len(".__init__")] if name.endswith(".__init__") else name] = (
                    os.path.join(root, f))
    return found


def _top_level_imports(tree):
    """Import nodes executed at import time: not inside a def or lambda."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _edges(name, path, modules):
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    for node in _top_level_imports(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.split(".")[0] == "tfp_bnn")
            continue
        base = node.module or ""
        if node.level:  # relative import
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                            + ([node.module] if node.module else []))
        if base.split(".")[0] != "tfp_bnn":
            continue
        for alias in node.names:
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {t for t in targets if t in modules and t != name}


def _cycle(graph):
    """One cycle of ``graph`` as a list of nodes, or None (depth-first search, three colours)."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_import_graph_of_tfp_bnn_has_no_cycle():
    modules = _modules()
    graph = {name: _edges(name, path, modules) for name, path in modules.items()}
    assert {"tfp_bnn.layers", "tfp_bnn.rnn", "tfp_bnn.bayesian"} <= set(graph)
    assert "tfp_bnn.bayesian" in graph["tfp_bnn.rnn"] and "tfp_bnn.rnn" in graph["tfp_bnn.layers"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set(), "c": {"b"}}, None),
])
def test_cycle_finder(graph, expected):
    assert _cycle(graph) == expected


def test_edges_follow_module_and_name_imports(tmp_path):
    pkg = tmp_path / "tfp_bnn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from tfp_bnn import b\nfrom tfp_bnn.c import thing\n"
                              "import tfp_bnn.d\nclass K:\n    from tfp_bnn import e\n"
                              "def f():\n    from tfp_bnn import g\n")
    modules = {f"tfp_bnn.{m}": "" for m in "abcdeg"}
    modules["tfp_bnn"] = ""
    assert _edges("tfp_bnn.a", str(pkg / "a.py"), modules) == {
        "tfp_bnn.b", "tfp_bnn.c", "tfp_bnn.d", "tfp_bnn.e"}
