"""One MLflow user per silo for the compose stack; run as the MLflow admin (`mlflow-users` service).

FEDSILO_SILO_PASSWORDS holds `silo=password` pairs (a silo with no password is skipped). Each
silo's user is created, or its password set again (how passwords rotate), and given EDIT on the
experiment of every scenario in /app/scenarios it takes part in, creating the experiment if needed.
With the server's default_permission NO_PERMISSIONS, that is all a silo can read or write.
"""

import os
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from fedsilo.scenario import load_scenario
from fedsilo.tracking import ensure_experiment

SCENARIOS = Path(os.environ.get("FEDSILO_HOME", "/app")) / "scenarios"


def silo_passwords() -> dict[str, str]:
    pairs = (item.split("=", 1) for item in os.environ.get("FEDSILO_SILO_PASSWORDS", "").split())
    return {silo: password for silo, password in pairs if password}


def ensure_user(auth, silo: str, password: str) -> None:
    try:
        auth.create_user(silo, password)
        print(f"user {silo}: created")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
        auth.update_user_password(silo, password)
        print(f"user {silo}: password set again")


def grant_edit(auth, silo: str, experiment: str) -> None:
    try:
        auth.grant_user_permission(silo, "experiment", experiment, "EDIT")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise


def main() -> int:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    auth, client = get_app_client("basic-auth", tracking_uri=uri), MlflowClient(uri)
    passwords = silo_passwords()
    for silo, password in passwords.items():
        ensure_user(auth, silo, password)
    for path in sorted(SCENARIOS.glob("*.yaml")):
        scenario = load_scenario(path)
        members = [silo for silo in scenario.silo_names() if silo in passwords]
        if members:
            experiment = ensure_experiment(client, scenario)
            for silo in members:
                grant_edit(auth, silo, experiment)
            print(f"experiment {scenario.experiment_name}: EDIT for {', '.join(members)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
