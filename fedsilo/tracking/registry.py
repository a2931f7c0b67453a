"""The registered model `<scenario>-global` and its alias `champion`: who is champion, the
champion's weights, and registering a job's final model (the alias moves only when asked)."""

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fedsilo.errors import RegistryUnavailable
from fedsilo.scenario import Scenario
from fedsilo.tracking import names
from fedsilo.tracking.packaging import logged_model_files
from fedsilo.tracking.store import STORE_ERRORS, says_not_found


class Registry:
    """One scenario's registered model, through `client`."""

    def __init__(self, client: MlflowClient, scenario: Scenario):
        self.client = client
        self.name = scenario.registered_model_name
        self.description = f"Global model of scenario {scenario.name}"

    def champion(self) -> tuple[str, str] | None:
        """(version, model URI) of the champion, or None only when the registry says there is none
        (no such model, or no such alias). Raises RegistryUnavailable on any failure to answer."""
        try:
            version = self.client.get_model_version_by_alias(self.name, names.CHAMPION)
        except STORE_ERRORS as exc:
            if isinstance(exc, MlflowException) and says_not_found(exc):
                return None
            raise RegistryUnavailable(
                f"the registry could not say which version of {self.name} is champion ({exc})"
            ) from exc
        return str(version.version), version.source

    def register(self, model_id: str, run_id: str, job: str, make_champion: bool, reason: str) -> str:
        """Register logged model `model_id` as a new version; move `champion` to it when
        `make_champion`. Returns the version number. MLflow's errors pass unchanged."""
        self._ensure_model()
        version = self.client.create_model_version(
            self.name,
            f"models:/{model_id}",
            run_id=run_id,
            model_id=model_id,
            tags={names.JOB: job},
            description=reason,
        )
        if make_champion:
            self.client.set_registered_model_alias(self.name, names.CHAMPION, version.version)
        return str(version.version)

    def _ensure_model(self) -> None:
        try:
            self.client.create_registered_model(self.name, description=self.description)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def champion_files(version: str, model_uri: str, adapter: bool) -> str:
    """The local weights file of champion `version` (model URI); with `adapter`, its LoRA
    adapters when it has them. Raises RegistryUnavailable when they cannot be read."""
    try:
        weights, _, adapters = logged_model_files(model_uri)
    except RegistryUnavailable as exc:
        raise RegistryUnavailable(f"champion v{version} could not be read ({exc})") from exc
    return (adapters or weights) if adapter else weights
