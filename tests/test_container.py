"""The Dockerfile, built with podman, runs each silo as its own container with only its data mounted.

Needs Debian's podman, runc and debootstrap (`make system-deps`, as root); without them, or
where podman cannot run containers, the test says so and skips. The base image is made locally
with debootstrap because no registry can be pulled from here (see docker/podman.sh).
"""

import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.containers import podman

pytestmark = pytest.mark.slow


ROSTER = "/etc/fedsilo/roster.yaml"


def client_env(stack) -> list[str]:
    variables = {
        "PREFECT_API_URL": stack.prefect_api,
        "MLFLOW_TRACKING_URI": stack.mlflow_uri,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "FEDSILO_ROSTER": ROSTER,
    }
    return [f"--env={name}={value}" for name, value in variables.items()]


def keys_for(image: str, folder: Path) -> str:
    """`folder` (a party's key folder on this host) handed to the image's user, read-write at /state."""
    uid = podman("run", "--rm", "--entrypoint=id", image, "-u").stdout.strip()
    subprocess.run(["chown", "-R", uid, str(folder)], check=True)
    return f"--volume={folder}:/state"


def test_image_runs_as_a_user_and_holds_no_credentials(fedsilo_image):
    assert podman("run", "--rm", "--entrypoint=id", fedsilo_image, "-u").stdout.strip() != "0"
    environment = podman("run", "--rm", "--entrypoint=env", fedsilo_image).stdout
    assert not [line for line in environment.splitlines() if "PASSWORD" in line or "AUTH_STRING" in line]
    listed = podman("run", "--rm", "--entrypoint=ls", fedsilo_image, "/app/scenarios").stdout.split()
    assert {"medical.yaml", "smoke.yaml"} <= set(listed)


def test_silos_as_containers_complete_the_smoke_scenario(fedsilo_image, stack, silo_files):
    names, roster = [], stack.env["FEDSILO_ROSTER"]
    try:
        for silo, path in silo_files.items():
            path.parent.chmod(0o755)  # readable by the image's unprivileged user
            path.chmod(0o644)
            name = f"fedsilo-test-{silo}"
            podman("rm", "--force", name, check=False)
            stack.enrol(silo)  # its key in its own state folder, its public key in the roster
            podman(
                "run", "--detach", f"--name={name}", "--network=host", *client_env(stack),
                f"--volume={path.parent}:/data:ro", f"--volume={roster}:{ROSTER}:ro",
                keys_for(fedsilo_image, stack.silo_state(silo)), fedsilo_image,
                "worker", f"--silo={silo}", "--scenario=scenarios/smoke.yaml", "--data=/data/notes.csv",
                "--state=/state",
            )  # fmt: skip
            names.append(name)
        coordinator = podman(
            "run", "--rm", "--network=host", *client_env(stack), "--env=FEDSILO_COORDINATOR_STATE=/state",
            f"--volume={roster}:{ROSTER}:ro", keys_for(fedsilo_image, stack.root / "coordinator"),
            fedsilo_image, "run", "scenarios/smoke.yaml", "--mode=distributed", "--job-name=containers",
        )  # fmt: skip
        assert "Done: global accuracy" in coordinator.stdout
        for name, silo in zip(names, silo_files):
            logs = podman("logs", name).stdout + podman("logs", name).stderr
            assert f"{silo} fit-round-2: served" in logs and "/data/notes.csv" in logs
    finally:
        for name in names:
            podman("kill", "--signal=INT", name, check=False)
            podman("rm", "--force", name, check=False)

    client = MlflowClient(stack.mlflow_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id], "attributes.run_name = 'containers'"
    )
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "global_accuracy")
    assert [m.step for m in history] == [0, 1, 2]
