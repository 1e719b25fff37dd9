"""The shape of gaea_nas: the public names importable from the top, no import cycles between its
modules, and no relative import hidden inside a function (except the CLI's and the plots'
lazy imports of heavy optional dependencies, and the image-folder loader's import of its
optional DALI backend, which builds on the loader's folder index)."""
import ast
from pathlib import Path

import gaea_nas

PACKAGE = Path(gaea_nas.__file__).resolve().parent

PUBLIC_NAMES = [
    "ArchParameters", "DartsSuperNet", "Genotype", "NB201Network", "NB201SuperNet", "NB201Table",
    "NetworkCIFAR", "NetworkImageNet", "SuperNet", "checkpoint", "count_macs", "count_parameters",
    "data", "derive_genotype", "derive_nb201_arch", "format_arch", "genotypes", "is_valid_arch",
    "mix_node", "mixing", "parse_arch", "runtime", "schedules", "search", "search_config", "spaces",
]


def test_public_names_import_from_the_top():
    import importlib
    top = importlib.import_module("gaea_nas")
    missing = [n for n in PUBLIC_NAMES if not hasattr(top, n)]
    assert not missing
    assert sorted(top.__all__) == sorted(PUBLIC_NAMES)
    assert top.search_config.SearchConfig is top.search.SearchConfig
    assert top.genotypes.DARTS_V2.normal[0] == ("sep_conv_3x3", 0)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph, inner = {}, set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in tree.body:  # module-level imports only
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                for t in [target] + [f"{target}.{a.name}" for a in node.names]:
                    if t in modules and t != name:
                        deps.add(t)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(fn)):
                    inner.add(name)
        graph[name] = deps
    return graph, inner


def test_no_import_cycles():
    graph, _ = _graph()
    state, cycles = {}, []

    def visit(u, stack):
        state[u] = "open"
        for v in graph[u]:
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack + [v])
        state[u] = "done"

    for u in graph:
        if u not in state:
            visit(u, [u])
    assert cycles == []


def test_no_relative_imports_inside_functions_but_the_lazy_ones():
    _, inner = _graph()
    assert inner == {"gaea_nas.cli", "gaea_nas.plots", "gaea_nas.data.image_folder"}
