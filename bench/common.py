"""What every benchmark shares: one JSON line per figure, the machine it ran on, where files go."""

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

transformers_logging.set_verbosity_error()  # the new-head load report is expected, not news
transformers_logging.disable_progress_bar()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "results"))
SHARED_DATA = Path(
    os.environ.get("FEDSILO_SHARED_DATA", Path(__file__).parents[1] / ".." / "shared" / "data")
)


def results_dir() -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS


def machine() -> dict:
    """The facts a reader needs to compare figures across machines."""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    facts = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def emit(
    bench: str,
    figure: str,
    value: float,
    unit: str,
    target: str | None = None,
    met: bool | None = None,
    **details,
) -> dict:
    """Print one figure as a JSON line and append it to results/<bench>.jsonl."""
    record = {"bench": bench, "figure": figure, "value": value, "unit": unit}
    if target is not None:
        record |= {"target": target, "met": met}
    record |= details
    line = json.dumps(record, default=float)
    print(line, flush=True)
    with (results_dir() / f"{bench}.jsonl").open("a") as out:
        out.write(line + "\n")
    return record


def start(bench: str) -> None:
    """Begin a benchmark: a fresh results file headed by the machine facts."""
    (results_dir() / f"{bench}.jsonl").unlink(missing_ok=True)
    emit(bench, "machine", 0, "", **machine(), argv=sys.argv[1:])


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, with a clear message when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        sys.exit(
            f"{path} not found: the benchmarks read real data from ../shared/data "
            "(or set FEDSILO_SHARED_DATA to that folder)"
        )
    return path.resolve()


FEDSILO = str(Path(sys.executable).with_name("fedsilo"))


def cnn_checkpoint() -> Path:
    """The digits-pretrained CNN the image benchmarks start from, trained once (about a minute)."""
    from fedsilo.pretrain import pretrain_cnn

    path = results_dir() / "cnn-digits.safetensors"
    if not path.exists():
        pretrain_cnn(path)
    return path


def scratch_env(folder: str) -> dict[str, str]:
    """Environment for `fedsilo run` with its own MLflow store and job folder under `folder`."""
    return os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
        "FEDSILO_WORKDIR": f"{folder}/jobs",
    }


def run_timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and stdout of a command; a failure ends the benchmark with its output."""
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode:
        sys.exit(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return seconds, done.stdout


def save_plot(figure, name: str) -> Path:
    """Write a matplotlib figure to results/<name>.png and close it."""
    import matplotlib.pyplot as plt

    path = results_dir() / f"{name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
