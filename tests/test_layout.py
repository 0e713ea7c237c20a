"""The package's shape, held to what the README's "Layout" says of it (read from the source, no
import): every module is listed there, imports point down that list, there is no import cycle, and
only sweep/lifecycle.py writes the process's environment."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME_COLUMN = 26  # where the Layout block's descriptions start


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in (ROOT / "sweep").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _layout() -> list[str]:
    """The modules and packages of the README's Layout block, top to bottom."""
    text = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    block = text.split("```", 2)[1]
    order, package = [], None
    for line in block.splitlines():
        names = line[:NAME_COLUMN].strip()
        if not names or line.startswith(" " * NAME_COLUMN):
            continue  # a description's second line
        nested = line.startswith("    ")
        for n in (x.strip() for x in names.split(",")):
            if n.endswith("/"):
                package = n.rstrip("/").replace("/", ".")
                order.append(package)
                continue
            if nested:
                order.append(f"{package}.{n.removesuffix('.py')}")
            else:
                n = n if n.startswith("sweep/") else f"sweep/{n}"
                order.append(n.removesuffix(".py").replace("/", "."))
                package = None
    return order


def _imports(tree: ast.Module, modules: dict[str, ast.Module], type_checking: bool) -> set[str]:
    """The sweep modules `tree` imports, at module level or inside functions; those under
    `if TYPE_CHECKING:` only if `type_checking`."""
    skip: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(x) for x in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("sweep"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("sweep")}
    return out


def test_every_module_is_in_the_readmes_layout() -> None:
    listed = set(_layout())
    missing = sorted(m for m in _modules() if m not in listed and m not in ("sweep", "sweep.__main__"))
    assert missing == [], f"modules the README's Layout does not list: {missing}"


def test_imports_point_down_the_layout() -> None:
    modules, order = _modules(), _layout()
    rank = {m: i for i, m in enumerate(order)}

    def place(m: str) -> int | None:
        while m not in rank and "." in m:
            m = m.rsplit(".", 1)[0]
        return rank.get(m)

    up = []
    for m, tree in modules.items():
        for target in _imports(tree, modules, type_checking=False):
            if target == m or target == "sweep" or m.startswith(target + "."):
                continue
            here, there = place(m), place(target)
            if here is not None and there is not None and there < here:
                up.append(f"{m} -> {target}")
    assert up == [], f"imports pointing up the README's Layout: {sorted(up)}"


def test_no_import_cycle() -> None:
    modules = _modules()
    edges = {m: {t for t in _imports(tree, modules, type_checking=True)
                 if t in modules and t != m and t != "sweep" and not m.startswith(t + ".")}
             for m, tree in modules.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return [*path, m, t]
            if t not in state and (cycle := visit(t, [*path, m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(modules):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, f"import cycle: {' -> '.join(cycle[cycle.index(cycle[-1]):])}"


def test_only_the_lifecycle_module_writes_the_environment() -> None:
    """os.environ[...] = ..., os.environ.update/setdefault/pop/clear, del os.environ[...], os.putenv."""
    writers = []
    for m, tree in _modules().items():
        if m == "sweep.lifecycle":
            continue
        for node in ast.walk(tree):
            target = None
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                target = next((t for t in targets if isinstance(t, ast.Subscript)
                               and ast.unparse(t.value) == "os.environ"), None)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                f = ast.unparse(node.func)
                if f in ("os.putenv", "os.unsetenv") or (ast.unparse(node.func.value) == "os.environ" and node.func.attr
                                                         in ("update", "setdefault", "pop", "clear", "popitem")):
                    target = node
            if target is not None:
                writers.append(f"{m}:{node.lineno}")
    assert writers == [], f"writes to os.environ outside sweep/lifecycle.py: {writers}"


MAX_PARAMETERS = 7
MAX_LINES = 450
# an environment variable's name, as sweep's own code spells it (the libraries' and sweep's)
ENV_NAME = re.compile(r"(SWEEP|MLFLOW|KERAS|TF|XLA|CUDA|XDG)_[A-Z0-9_]+")


def _is_cli_command(node: ast.FunctionDef) -> bool:
    """A typer command in sweep/cli.py: its parameters are the command's options."""
    return any(ast.unparse(d).startswith(("app.command", "_command", "_trains")) for d in node.decorator_list)


def test_no_function_takes_more_than_seven_parameters() -> None:
    many = []
    for m, tree in _modules().items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
            names = names[1:] if names[:1] in (["self"], ["cls"]) else names
            if len(names) > MAX_PARAMETERS and not (m == "sweep.cli" and _is_cli_command(node)):
                many.append(f"{m}.{node.name}: {len(names)}")
    assert many == [], f"functions of more than {MAX_PARAMETERS} parameters: {many}"


def test_no_module_is_over_450_lines() -> None:
    long = {p.relative_to(ROOT).as_posix(): n for p in (ROOT / "sweep").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_each_environment_variable_is_named_in_one_place() -> None:
    """A variable's name as a string in one module, once; everywhere else reads the constant (or
    the library's own, such as mlflow.environment_variables)."""
    where: dict[str, list[str]] = {}
    for m, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.fullmatch(node.value):
                where.setdefault(node.value, []).append(f"{m}:{node.lineno}")
    twice = {name: places for name, places in where.items() if len(places) > 1}
    assert twice == {}, f"environment variables named in more than one place: {twice}"
    assert "SWEEP_CONFIG" in where and "KERAS_BACKEND" in where  # the scan sees them at all


def test_each_environment_variable_is_read_in_one_module() -> None:
    """os.environ.get(X), os.environ[X], X in os.environ and os.getenv(X), by the name X is read
    through (a constant, or the string); the other modules ask that one."""
    readers: dict[str, set[str]] = {}
    for m, tree in _modules().items():
        for node in ast.walk(tree):
            arg = None
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv") and node.args:
                arg = node.args[0]
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ" \
                    and isinstance(node.ctx, ast.Load):
                arg = node.slice
            elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)) \
                    and ast.unparse(node.comparators[0]) == "os.environ":
                arg = node.left
            name = None if arg is None else ast.unparse(arg).rsplit(".", 1)[-1]
            # a string or a constant (ENV_CONFIG, progress.ENV_MODE); not a loop's variable
            if name is not None and (isinstance(arg, ast.Constant) or name.isupper()):
                readers.setdefault(name, set()).add(m)
    many = {name: sorted(ms) for name, ms in readers.items() if len(ms) > 1}
    assert many == {}, f"environment variables read in more than one module: {many}"
    assert "ENV_CONFIG" in readers and "ENV_WORKER_NAME" in readers  # the scan sees them at all
