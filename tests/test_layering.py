import subprocess
import sys

ENGINE = [
    "fedsilo.scenario",
    "fedsilo.data",
    "fedsilo.silo",
    "fedsilo.federation",
    "fedsilo.aggregation",
    "fedsilo.weights",
    "fedsilo.artifacts",
    "fedsilo.metrics",
    "fedsilo.training",
    "fedsilo.pretrain",
    "fedsilo.cli",
    "models",
]


def test_engine_imports_neither_prefect_nor_mlflow():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in ENGINE)
        + ("print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow'}))")
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
