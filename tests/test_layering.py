"""The layers of DESIGN.md, checked: models/ <- fedsilo/ (engine, no Prefect) <- pipelines/ (Prefect,
no numerics). Imports are read from the source, function bodies included, and the engine is also
imported in a fresh interpreter."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

# MLflow belongs to the tracker, to the artifact store (mlflow-artifacts: URIs only) and to the
# logged model's own loader; nothing else in the engine may import it, even inside a function.
MLFLOW_ALLOWED = {"fedsilo/artifacts.py", "fedsilo/mlflow_model.py"}
MLFLOW_PACKAGE = "fedsilo/tracking/"  # the tracker's own package
COMPOSITION_ROOT = "fedsilo/cli.py"  # composes the layers: may import pipelines (and Prefect) lazily
RULES = {
    "models": {"prefect", "mlflow", "fedsilo", "pipelines"},
    "fedsilo": {"prefect", "pipelines", "mlflow"},
    "pipelines": {"torch", "numpy", "safetensors", "models"},  # Prefect wrapping: no tensor math
}


def imported_roots(path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def sources(package: str):
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(RULES))
def test_each_layer_imports_only_what_it_may(package):
    offences = []
    for path in sources(package):
        relative = str(path.relative_to(REPO))
        tracker = relative in MLFLOW_ALLOWED or relative.startswith(MLFLOW_PACKAGE)
        forbidden = RULES[package] - ({"mlflow"} if tracker else set())
        if relative == COMPOSITION_ROOT:
            forbidden = set()
        offences += [f"{relative} imports {name}" for name in sorted(imported_roots(path) & forbidden)]
    assert not offences


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from prefect import flow\n    import mlflow.pyfunc\n")
    assert imported_roots(module) == {"prefect", "mlflow"}


def fresh_interpreter_imports(*modules: str) -> set[str]:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(ast.literal_eval(run.stdout.strip().splitlines()[-1]))


def test_engine_imports_neither_prefect_nor_mlflow():
    engine = [f"fedsilo.{p.stem}" for p in sources("fedsilo") if p.parent.name == "fedsilo"]
    engine = [m for m in engine if m not in {"fedsilo.tracking", "fedsilo.mlflow_model", "fedsilo.__init__"}]
    packages = ["fedsilo.strategies", "fedsilo.data", "fedsilo.engine", "fedsilo.privacy.secure_aggregation"]
    packages += ["fedsilo.privacy.central_dp", "fedsilo.privacy.dp_sgd", "fedsilo.silo_steps", "models"]
    loaded = fresh_interpreter_imports(*engine, *packages)
    assert not loaded & {"prefect", "mlflow"}


def test_silo_messages_need_no_torch_and_compare_needs_no_transformers():
    assert "torch" not in fresh_interpreter_imports("fedsilo.messages", "fedsilo.steps")
    assert "transformers" not in fresh_interpreter_imports("fedsilo.tracking")


def module_name(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def top_level_imports(path, modules: set[str]) -> set[str]:
    """The fedsilo modules a module imports when it is loaded (not inside functions); its own
    parent packages, which Python loads first anyway, do not count."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedsilo"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            names |= submodules or {node.module}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("fedsilo")}
    own = module_name(path)
    return {name for name in names & modules if name != own and not own.startswith(name + ".")}


def test_no_import_circle_between_the_engines_modules():
    modules = {module_name(path): path for path in sources("fedsilo")}
    graph = {name: top_level_imports(path, set(modules)) for name, path in modules.items()}
    visiting, done, circles = set(), set(), []

    def visit(name, trail):
        if name in visiting:
            circles.append(" -> ".join([*trail[trail.index(name) :], name]))
            return
        if name in done:
            return
        visiting.add(name)
        for imported in sorted(graph[name]):
            visit(imported, [*trail, name])
        visiting.discard(name)
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert not circles


ROUND_LOOP = ["fedsilo/engine", "fedsilo/privacy", "fedsilo/transport.py", "fedsilo/steps.py"]


def test_the_round_loop_reads_in_small_pieces():
    """No engine module over ~250 lines, no class over ~200, no function over ~60."""
    too_long = []
    for place in ROUND_LOOP:
        for path in sorted((REPO / place).rglob("*.py")) if (REPO / place).is_dir() else [REPO / place]:
            lines = path.read_text().count("\n")
            if lines > 260:
                too_long.append(f"{path.name}: {lines} lines")
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ClassDef | ast.FunctionDef):
                    continue
                size, limit = node.end_lineno - node.lineno + 1, 200 if isinstance(node, ast.ClassDef) else 60
                if size > limit:
                    too_long.append(f"{path.name}: {node.name} has {size} lines")
    assert not too_long
