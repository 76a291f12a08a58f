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
