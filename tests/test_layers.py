"""The layering README draws, checked on the code's own imports (module-level and inside functions).

    rtxpack.core          shared by both sides; imports nothing else of rtxpack
    rtxpack.backends      backend implementations; import core
    rtxpack.installer     the PC side; imports core and backends, never the farm
    rtxpack.farm          the publisher side; imports core and backends, never the installer
    rtxpack.cli           on top: every command; no library module imports it
    rtxpack.demo          the embedded example; no library module imports it

Also: no import cycle between modules, and rtxpack's own modules are imported at module level
(lazy imports are for heavy third-party libraries only), except the ``rtxpack.load`` facade.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "rtxpack"
ALLOWED = {
    "core": {"core"},
    "backends": {"core", "backends"},
    "installer": {"core", "backends", "installer"},
    "farm": {"core", "backends", "farm"},
    "cli": {"core", "backends", "installer", "farm", "cli", "top", "demo"},   # demo: `rtxpack demo`, when run
    "demo": {"core", "backends", "installer", "farm", "cli", "demo", "top"},
    "top": {"installer"},
}
#: rtxpack modules imported inside a function on purpose: (importing module, imported module). The
#: CLI's command handlers import what they drive when they run, so start-up stays argparse-only.
LAZY_OK = {("rtxpack", "rtxpack.installer.loader")}
LAZY_ROOMS = {"cli"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "top"


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported rtxpack module, inside a function?, line) for every import in ``path``."""
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            func = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, in_func, child.lineno) for a in child.names if a.name.split(".")[0] == "rtxpack")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != "rtxpack":
                    continue
                for a in child.names:   # "from . import x" may name a submodule
                    sub = f"{target}.{a.name}"
                    out.append((sub if _exists(sub) else target, in_func, child.lineno))
            visit(child, func)

    visit(tree, False)
    return out


def _exists(module: str) -> bool:
    p = PKG.parent.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _graph() -> dict[str, list[tuple[str, bool, int]]]:
    return {_module_name(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def test_every_import_goes_down_the_layers() -> None:
    bad = []
    for mod, imports in _graph().items():
        for target, _, line in imports:
            if _room(target) not in ALLOWED[_room(mod)] and _room(target) != _room(mod):
                bad.append(f"{mod}:{line} imports {target} ({_room(mod)} may import {sorted(ALLOWED[_room(mod)])})")
    assert not bad, "\n".join(bad)


def test_no_library_module_imports_the_cli_or_the_demo() -> None:
    bad = [f"{mod}:{line} imports {t}" for mod, imps in _graph().items() for t, _, line in imps
           if _room(t) in ("cli", "demo") and _room(mod) not in ("cli", "demo")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle() -> None:
    graph = {m: sorted({t for t, _, _ in imps if t != m}) for m, imps in _graph().items()}
    # a package's own __init__ importing its submodules is not a cycle with them importing siblings
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, ()):
            if t.startswith(m + ".") or m.startswith(t + ".") and t == m.rsplit(".", 1)[0]:
                continue   # package <-> its own submodule
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t in graph and state.get(t) is None:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if state.get(m) is None:
            dfs(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_own_modules_are_imported_at_module_level() -> None:
    lazy = [(mod, t, line) for mod, imps in _graph().items() for t, in_func, line in imps
            if in_func and (mod, t) not in LAZY_OK and _room(mod) not in LAZY_ROOMS]
    assert not lazy, "\n".join(f"{m}:{line} imports {t} inside a function" for m, t, line in lazy)


def test_the_checker_can_fail(tmp_path: Path) -> None:
    """The import parser sees relative, absolute and function-level imports."""
    p = PKG / "core" / "versions.py"
    assert all(_room(t) == "core" for t, _, _ in _imports(p))
    fake = ast.parse("def f():\n    from ..installer import store\n")
    assert isinstance(fake.body[0], ast.FunctionDef)
    src = PKG / "installer" / "loader.py"
    assert any(t == "rtxpack.installer.pipeline" for t, _, _ in _imports(src))
    assert ("rtxpack.installer.loader", True) in {(t, f) for t, f, _ in _imports(PKG / "__init__.py")}
