"""The package's arrangement (issue 27, docs/adding_a_loss.md), read from the sources with
`ast`: the library core never imports an application, no import runs back up a layer,
no import circle among pyhypersphere's modules, and every op family has all its pieces."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyhypersphere"

# The applications built on the library; the core never imports them.
APPLICATIONS = ("train", "bench", "sweep", "demo", "cli", "__main__", "machine", "argtypes")

# The core's layers, lowest first: a module imports only from its own layer or below.
LAYERS = (
    ("_C", "_extension", "_matmul_precision", "_global_batch", "reference"),
    ("triton_kernels",),
    ("ops",),
    ("gpu_backend",),
    ("losses", "contrastive", "distributed", "metrics", "nn", "key_queue", "large_batch"),
    ("",),  # pyhypersphere/__init__.py
)


def module_name(path: Path) -> str:
    parts = ("pyhypersphere",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
MODULES["pyhypersphere._C"] = None  # the compiled extension: imports nothing of ours


def imports_of(name: str) -> set:
    """The pyhypersphere modules `name` imports, at any depth of its code (a function's
    import included); `from a import b` counts as a.b when that is a module."""
    path = MODULES[name]
    if path is None:
        return set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def top(name: str) -> str:
    """The package-level part of a module name: pyhypersphere.ops.uniform -> ops."""
    return name.split(".")[1] if "." in name else ""


def is_application(name: str) -> bool:
    return top(name) in APPLICATIONS


def layer(name: str) -> int:
    for level, tops in enumerate(LAYERS):
        if top(name) in tops:
            return level
    raise AssertionError(f"{name} is neither an application nor in a layer of the core: add it to LAYERS")


CORE = sorted(name for name in MODULES if not is_application(name))


def test_the_core_never_imports_an_application():
    bad = {name: sorted(t for t in GRAPH[name] if is_application(t)) for name in CORE}
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_core_import_runs_back_up_a_layer():
    bad = {
        name: sorted(t for t in GRAPH[name] if not is_application(t) and layer(t) > layer(name))
        for name in CORE
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_import_circle_among_the_modules():
    # Tarjan's strongly connected components: a circle is a component of two or more.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert circles == []


def test_the_graph_sees_imports():
    # The checks above are only as good as the parser: known edges must be found.
    assert "pyhypersphere.ops.uniform" in GRAPH["pyhypersphere.ops.uniform_distributed"]
    assert "pyhypersphere._global_batch" in GRAPH["pyhypersphere.ops.contrastive_distributed"]
    assert "pyhypersphere.ops" in GRAPH["pyhypersphere.gpu_backend"]
    assert "pyhypersphere.sweep.plots" in GRAPH["pyhypersphere.sweep.outputs"]


def families() -> tuple:
    tree = ast.parse((PACKAGE / "ops" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["FAMILIES"]:
            return tuple(element.id for element in node.value.elts)
    raise AssertionError("pyhypersphere/ops/__init__.py lists no FAMILIES")


def test_the_families_are_listed():
    assert set(families()) >= {"uniform", "align", "contrastive"}


# The name of each schema string (every op's first argument is a Tensor).
SCHEMA_NAME = r'"(\w+)\(Tensor'
CHECKS_FRAGMENT = "TORCH_LIBRARY_FRAGMENT(pyhypersphere_checks, m) {"


def split_checks(source: str) -> tuple:
    """A family file's text apart from its block of argument checks, and that block (the
    checks' operators, torch.ops.pyhypersphere_checks.<op>, that the Triton launchers call)."""
    start = source.find(CHECKS_FRAGMENT)
    assert start >= 0, "the family file registers its argument checks: " + CHECKS_FRAGMENT
    end = source.index("\n}", start) + 2
    return source[:start] + source[end:], source[start:end]


@pytest.mark.parametrize("family", families())
def test_a_family_has_every_piece(family):
    pieces = [
        ROOT / "csrc" / f"{family}.cpp",
        ROOT / "csrc" / "cpu" / f"{family}_cpu.cpp",
        PACKAGE / "ops" / f"{family}.py",
        PACKAGE / "triton_kernels" / f"{family}.py",
    ]
    assert [str(p.relative_to(ROOT)) for p in pieces if not p.is_file()] == []
    schemas, checks = split_checks((ROOT / "csrc" / f"{family}.cpp").read_text())
    assert "TORCH_LIBRARY_FRAGMENT(pyhypersphere, m)" in schemas
    declared = set(re.findall(SCHEMA_NAME, schemas))
    assert set(re.findall(SCHEMA_NAME, checks)) == declared, "each op's argument check registered beside it"
    assert f'TORCH_LIBRARY_IMPL(pyhypersphere, CPU' in pieces[1].read_text()
    import pyhypersphere.ops

    ops = getattr(pyhypersphere.ops, family).OPS
    assert set(ops) == declared, "the family module's OPS must name the ops its csrc/<family>.cpp defines"
    launchers = {node.name for node in ast.parse(pieces[3].read_text()).body if isinstance(node, ast.FunctionDef)}
    assert set(ops) <= launchers, "each op's Triton launcher, of its name, in triton_kernels/<family>.py"
    cuda_glue = ROOT / "csrc" / "cuda" / f"{family}_cuda.cpp"
    assert cuda_glue.is_file() == any(ops.values()), "a C++ CUDA kernel exactly where OPS says so"


def test_every_schema_file_is_a_listed_family():
    with_schemas = {p.stem for p in (ROOT / "csrc").glob("*.cpp") if "TORCH_LIBRARY_FRAGMENT(pyhypersphere" in p.read_text()}
    assert with_schemas == set(families())


@pytest.mark.parametrize("family", families())
def test_each_op_has_its_argument_check(family):
    # The check of op <op> is torch.ops.pyhypersphere_checks.<op>: it takes some of the
    # op's arguments (same names and types), returns nothing, and is no op of pyhypersphere.
    import pyhypersphere.ops
    import torch

    for op in getattr(pyhypersphere.ops, family).OPS:
        schema = getattr(torch.ops.pyhypersphere, op).default._schema
        check = getattr(torch.ops.pyhypersphere_checks, op).default._schema
        arguments = {a.name: str(a.type) for a in schema.arguments}
        taken = {a.name: str(a.type) for a in check.arguments}
        assert taken and taken.items() <= arguments.items(), (op, str(check), str(schema))
        assert list(check.returns) == [], str(check)
