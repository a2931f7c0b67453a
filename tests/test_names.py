"""fedsilo.names: every name the scenario schema allows maps to a name each system accepts, checked
with Prefect's and MLflow's own validators, and a scenario named `medical_v2` runs."""

import random
import re
import string
from datetime import datetime
from typing import Annotated, get_args

import pytest
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_logged_model_name, _validate_model_name
from prefect.client.schemas.actions import ArtifactCreate, WorkPoolCreate
from prefect.types.names import WITHOUT_BANNED_CHARACTERS
from pydantic import TypeAdapter, ValidationError

from fedsilo import names
from fedsilo.errors import ScenarioError
from fedsilo.scenario import Scenario, load_scenario
from tests.conftest import REPO

SMOKE = REPO / "scenarios" / "smoke.yaml"


def _field(model, name: str) -> TypeAdapter:
    field = model.model_fields[name]
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)])


SCENARIO_NAME = _field(Scenario, "name")
SILO_NAME = _field(get_args(Scenario.model_fields["silos"].annotation)[0], "name")


def allowed(name: str) -> bool:
    """Whether the schema accepts `name` as a scenario's or a silo's name."""
    for field in (SCENARIO_NAME, SILO_NAME):
        try:
            field.validate_python(name)
        except ValidationError:
            continue
        return True
    return False


def candidates() -> list[str]:
    """Edge cases, names drawn from the schema's own alphabet, and near misses from a wider one;
    the schema decides which of them count."""
    rng = random.Random(0)
    first = string.ascii_lowercase + string.digits
    narrow, wide = first + "_-", string.printable[:-5] + "éß"
    drawn = [rng.choice(first) + "".join(rng.choices(narrow, k=rng.randint(0, 63))) for _ in range(400)]
    drawn += ["".join(rng.choices(wide, k=rng.randint(0, 70))) for _ in range(400)]
    edges = ["a", "0", "a" * 64, "a_", "a-", "a__b", "a--b", "a_b", "a-b", "medical_v2", "medical-v2"]
    edges += ["0_" * 32, "x" + "_" * 63, "Medical", "a.b", "a/b", "..", "-a", "_a", "a" * 65, ""]
    return sorted(set(edges + drawn))


NAMES = [name for name in candidates() if allowed(name)]


def test_the_sample_covers_the_schema():
    assert len(NAMES) > 400 and {"medical_v2", "a" * 64, "x" + "_" * 63} <= set(NAMES)
    assert not {"Medical", "a.b", "a/b", "..", "-a", "_a", "a" * 65, ""} & set(NAMES)


@pytest.mark.parametrize("what", ["progress", "rounds"])
def test_every_allowed_name_gives_a_prefect_artifact_key(what):
    keys = [names.artifact_key(name, what) for name in NAMES]
    for key in keys:
        assert ArtifactCreate(key=key).key == key
    assert len(set(keys)) == len(NAMES)  # two scenarios never share a key


def test_every_allowed_name_gives_prefect_names():
    for name in NAMES:
        pool = names.work_pool_name(name)
        assert WorkPoolCreate(name=pool, type="process").name == pool
        for value in (names.silo_deployment_name(name), names.silo_run_name("job-1", name)):
            assert re.match(WITHOUT_BANNED_CHARACTERS, value), value


def test_every_allowed_name_gives_mlflow_model_names():
    models = [names.registered_model_name(name) for name in NAMES]
    for model in models:
        _validate_model_name(model)
        _validate_logged_model_name(model)
    assert len(set(models)) == len(NAMES)


@pytest.mark.parametrize("name", ["acme.global", "a b", "x", "a/b", "a:b", "", " ", ".", ".."])
def test_registered_model_names_mlflow_refuses_are_named(name):
    problem = names.model_name_problem(name)
    try:
        _validate_model_name(name)
    except MlflowException:
        assert problem and repr(name) in problem
    else:
        assert problem is None


def test_every_allowed_name_and_job_name_gives_a_file_name(tmp_path):
    jobs = [names.default_job_name(name, datetime(2025, 1, 2, 3, 4, 5)) for name in NAMES]
    for name in NAMES + jobs + ["..", ".", "a/../../b", "x" * 300, "Job", ""]:
        path = tmp_path / names.file_name(name)
        path.mkdir(exist_ok=True)
        assert path.parent == tmp_path and not path.name.startswith(".")
    assert len({names.file_name(name) for name in NAMES}) == len(NAMES)


def test_names_already_in_a_systems_alphabet_are_kept():
    assert names.artifact_key("medical-v2", "progress") == "medical-v2-progress"
    assert names.artifact_key("medical_v2", "progress").startswith("medical-v2-")
    assert names.artifact_key("medical_v2", "progress") != names.artifact_key("medical-v2", "progress")
    assert names.file_name("medical_v2") == "medical_v2" and names.file_name("run-1.2") == "run-1.2"
    assert names.work_pool_name("clinic_a") == "fedsilo-clinic_a"
    assert names.silo_run_name("smoke-20250101-120000", "clinic-a") == "smoke-20250101-120000:clinic-a"
    assert names.registered_model_name("medical_v2") == "medical_v2-global"


def test_job_names():
    default = names.default_job_name("medical_v2", datetime(2025, 1, 2, 3, 4, 5))
    assert default == "medical_v2-20250102-030405" and names.check_job_name(default) == default
    for good in ("a", "Job.2", "x" * names.JOB_MAX_LENGTH):
        assert names.job_name_problem(good) is None
    for bad in ("", "a'b", 'a"b', "a/b", "-a", ".a", "a b", "x" * (names.JOB_MAX_LENGTH + 1)):
        with pytest.raises(ScenarioError, match="--resume"):
            names.check_job_name(bad, "--resume")


@pytest.mark.slow
def test_a_scenario_named_with_an_underscore_runs(prefect_server, mlflow_store):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from fedsilo.silo import release_participants
    from pipelines.flows import federated_training

    scenario = load_scenario(SMOKE, ["name=medical_v2", "federation.rounds=1"])
    try:
        result = federated_training(scenario, job_name="underscore")
    finally:
        release_participants()
    assert result.experiment == "medical_v2" and result.rounds == 1
    key = names.artifact_key("medical_v2", "progress")
    with get_client(sync_client=True) as client:
        (progress,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert progress.data == 100.0
