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
MLFLOW_ALLOWED = {"fedsilo/tracking.py", "fedsilo/artifacts.py", "fedsilo/mlflow_model.py"}
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
        forbidden = RULES[package] - ({"mlflow"} if relative in MLFLOW_ALLOWED else set())
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
    loaded = fresh_interpreter_imports(*engine, "fedsilo.strategies", "fedsilo.data", "models")
    assert not loaded & {"prefect", "mlflow"}


def test_silo_messages_need_no_torch_and_compare_needs_no_transformers():
    assert "torch" not in fresh_interpreter_imports("fedsilo.messages")
    assert "transformers" not in fresh_interpreter_imports("fedsilo.tracking")
