"""The package's modules import each other without cycles (module-level and deferred imports alike)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "headforcing"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The package modules `path` imports anywhere in it (a `from pkg import name` of a module counts as it)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            for alias in node.names:
                module = f"{target}.{alias.name}"
                found.add(module if (ROOT.parent / module.replace(".", "/")).with_suffix(".py").exists() else target)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m.startswith("headforcing.") and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node, path):
        for dep in sorted(graph.get(node, ())):
            if dep in path:
                found.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])
    return found


def test_no_import_cycles():
    graph = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}
    assert graph["headforcing.engine.session"] >= {"headforcing.engine.state"}  # the walk sees real edges
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_tools_do_not_import_the_toy_world():
    graph = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}
    tools = {m: deps for m, deps in graph.items() if m.startswith("headforcing.tools.")}
    assert tools and not {d for deps in tools.values() for d in deps if d.startswith("headforcing.toyworld")}


# the package's layers, top to bottom (docs/ARCHITECTURE.md): a layer imports only the layers below it
LAYERS = ("__main__", "cli", "server", "runs", "tools", "toyworld", "evaluation", "headforcing", "engine", "models", "cache",
          "utils", "errors")


def layer(module: str) -> str:
    """headforcing.runs.checks -> runs; the package's own __init__ (its Python API) -> headforcing."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if LAYERS.index(layer(d)) < LAYERS.index(layer(m)))


def test_imports_only_go_down_the_layers():
    graph = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}
    assert {layer(m) for m in graph} == set(LAYERS)  # every layer is named, and no new one goes unplaced
    assert upward(graph) == []


def test_the_layer_check_finds_an_upward_import():
    assert upward({"headforcing.cache.store": {"headforcing.engine.session"}}) == ["headforcing.cache.store -> headforcing.engine.session"]


def private_writes(tree) -> list[str]:
    """Assignments to another object's private field (`x._f = ...`, `x._f[i] += ...`; self and cls are one's own)."""
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for part in ast.walk(target):
                if (isinstance(part, ast.Attribute) and part.attr.startswith("_") and not part.attr.startswith("__")
                        and not (isinstance(part.value, ast.Name) and part.value.id in ("self", "cls"))):
                    found.append(f"{ast.unparse(part)} (line {part.lineno})")
    return found


def test_no_module_writes_another_objects_private_fields():
    found = [f"{path.relative_to(ROOT)}: {w}" for path in ROOT.rglob("*.py") for w in private_writes(ast.parse(path.read_text()))]
    assert found == []


def test_the_private_write_check_finds_one():
    assert private_writes(ast.parse("session._cache = None\nself._own = 1\nstore._slots[0] += 2")) == [
        "session._cache (line 1)", "store._slots (line 3)"]


TABLES = {("cache/policy.py", "preset")}  # functions that are tables of data (the presets, one entry each)


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                if (str(path.relative_to(ROOT)), node.name) not in TABLES:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_the_toy_models_profile_prompts_are_its_worlds_captions():
    from headforcing.models.specs import TOY
    from headforcing.models.toy import PROFILE_PROMPTS
    from headforcing.toyworld.world import make_world

    assert list(PROFILE_PROMPTS) == [make_world(seed, TOY.size[0]).caption() for seed in range(8)]
