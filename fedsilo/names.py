"""The one mapping from fedsilo's names (scenario, silo, job) to the names other systems accept.

Scenario and silo names follow the schema (`NAME_PATTERN`: lower-case letters, digits, `_` and
`-`, 64 characters at most); job names follow `JOB_PATTERN`. Each system they end up in has an
alphabet of its own:

    what                                      accepts                           function
    Prefect artifact key                      a-z 0-9 -                         artifact_key
    Prefect deployment, work pool, flow run   anything but / % & < >            work_pool_name, silo_run_name
    MLflow registered and logged models       anything but / : . % " '          registered_model_name
    a registered model the scenario names     anything but / :                  model_name_problem
    a file or folder name                     A-Z a-z 0-9 . _ -, no leading .   file_name

A name already in a target's alphabet maps to itself, so what users see in Prefect and MLflow is
what they wrote. A name that is not is rewritten and gets a short hash of the original, so two
different names never share a key: `medical_v2` -> `medical-v2-<hash>`, `medical-v2` -> itself.
Pure: no Prefect or MLflow import; tests/test_names.py checks every target's own validator.
"""

import hashlib
import re
from datetime import datetime

from fedsilo.errors import ScenarioError

NAME_PATTERN, NAME_MAX_LENGTH = r"^[a-z0-9][a-z0-9_-]*$", 64  # the schema's scenario and silo names
JOB_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # job names: MLflow run names, Prefect, folders
JOB_MAX_LENGTH = 128
FILE_MAX_LENGTH = 200  # bytes; below the 255 of common file systems, leaving room for a suffix

_NOT_IN_KEY = re.compile(r"[^a-z0-9-]")
_NOT_IN_FILE = re.compile(r"[^A-Za-z0-9._-]")
_PREFECT_BANNED = re.compile(r"[/%&<>]")
_MODEL_BANNED = re.compile(r"[/:.%\"']")  # a logged model's; a registered model's are / and :


def _tag(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:6]


def _fit(name: str, outside: re.Pattern, filler: str, max_length: int = FILE_MAX_LENGTH, fold=str) -> str:
    """`name` itself when it is in the alphabet and short enough, else a rewrite plus its hash."""
    if name and not outside.search(name) and len(name.encode()) <= max_length:
        return name
    rewritten = outside.sub(filler, fold(name)).strip(filler)[: max_length - 7] or "x"
    return f"{rewritten}{filler}{_tag(name)}"


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lower-case letters, digits and dashes) for `parts` joined by dashes,
    e.g. `artifact_key("medical_v2", "progress")`."""
    return "-".join(_fit(part, _NOT_IN_KEY, "-", fold=str.lower) for part in parts)


def prefect_name(name: str) -> str:
    """A Prefect deployment, work pool or flow run name: none of `/ % & < >`."""
    return _fit(name, _PREFECT_BANNED, "-", max_length=10_000)


def work_pool_name(silo: str) -> str:
    """The silo's work pool, `fedsilo-<silo>`."""
    return prefect_name(f"fedsilo-{silo}")


def silo_deployment_name(silo: str) -> str:
    """The name of the silo's deployment of the `silo-job` flow (`silo-job/<silo>` in full)."""
    return prefect_name(silo)


def silo_run_name(job: str, silo: str) -> str:
    """The flow run of one silo in one job, `<job>:<silo>`."""
    return prefect_name(f"{job}:{silo}")


def registered_model_name(scenario: str) -> str:
    """The MLflow registered (and logged) model of a scenario's global model, `<scenario>-global`."""
    return _fit(f"{scenario}-global", _MODEL_BANNED, "-", max_length=10_000)


def model_name_problem(name: str) -> str | None:
    """Why MLflow's registry would refuse `name` (`tracking.registered_model`), or None."""
    if not name.strip() or name in {".", ".."} or re.search(r"[/:]", name):
        return f"{name!r} cannot name an MLflow registered model: not blank, '.' or '..', no '/' or ':'"
    return None


def file_name(name: str) -> str:
    """A file or folder name for `name`: letters, digits, `.`, `_`, `-`, never `.` or `..` or a
    hidden file, at most FILE_MAX_LENGTH bytes."""
    fitted = _fit(name, _NOT_IN_FILE, "_")
    return f"_{fitted[: FILE_MAX_LENGTH - 8]}_{_tag(name)}" if fitted.startswith(".") else fitted


def default_job_name(scenario: str, started: datetime) -> str:
    """A job's name when none is given: the scenario and its start time, `medical-20250101-120000`."""
    return f"{scenario}-{started:%Y%m%d-%H%M%S}"


def job_name_problem(name: str) -> str | None:
    """Why `name` cannot name a job (it goes into MLflow run names and search filters, Prefect flow
    run names and folder names), or None."""
    if len(name) > JOB_MAX_LENGTH:
        return f"job name {name[:20]!r}... is longer than {JOB_MAX_LENGTH} characters"
    if not re.match(JOB_PATTERN, name):
        return (
            f"job name {name!r} must start with a letter or digit and hold only letters, "
            "digits, '.', '_' and '-'"
        )
    return None


def check_job_name(name: str, source: str = "--job-name") -> str:
    """`name` if it can name a job; else a ScenarioError naming `source` and what to change."""
    if problem := job_name_problem(name):
        raise ScenarioError(source, [problem])
    return name
