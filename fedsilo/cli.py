"""`fedsilo` command line: run, worker, validate, compare, pretrain. The composition root.

User mistakes (a bad scenario, missing data, an unloadable model) end with a message that names
the field, file or silo and exit code 2 or 1, never a traceback: every fedsilo.errors.FedsiloError
is printed as one line `fedsilo <command>: <message>` with errors.exit_code's status.

Process hygiene: SIGTERM (what Docker and Kubernetes send) stops `run`, `worker` and `serve` like
Ctrl-C does, so the flow engine and the coordinator unwind and mark the job failed and resumable
(exit 130). The embedded Prefect server of `fedsilo run` lives in a session of its own, so a
signal sent to the terminal's process group does not stop it while the job still reports to it;
fedsilo stops it on every way out, and the kernel stops it if fedsilo itself is killed.
"""

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from fedsilo import names
from fedsilo.cli_trust import add_commands as add_trust_commands
from fedsilo.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    FederationError,
    FedsiloError,
    exit_code,
)
from fedsilo.scenario import ScenarioError, changed_fields, load_scenario, load_scenario_text

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_TIMEOUT_SECONDS = 120  # the ephemeral server took 11-13 s on an idle 2-core machine
PORT_IN_USE = 3  # uvicorn's exit status when its port was taken meanwhile


def _quiet_defaults() -> None:
    # No analytics insert on the ephemeral server's SQLite (the "database is locked" source)
    # and no transformers load reports about the new classifier head, which is expected.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A busy machine starts Prefect's ephemeral server slower than its 20 s default.
    os.environ.setdefault(STARTUP_TIMEOUT_ENV, str(STARTUP_TIMEOUT_SECONDS))


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, as SIGINT does."""
    signal.signal(signal.SIGTERM, _interrupt)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM for a short cleanup that must not be cut halfway."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# Run by the server's own interpreter before it becomes uvicorn: ask the kernel for SIGTERM when
# fedsilo's main thread ends (even by SIGKILL), and give up if fedsilo is already gone (Linux).
_TIED_TO_PARENT = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalPrefectServer:
    """The Prefect API of an embedded run: Prefect's ephemeral server, started once by fedsilo.

    It starts at once and is awaited only when the flow needs it, so it comes up while silos load
    their data. Prefect's own `SubprocessASGIServer` is given this server, so nothing in the
    process starts a second one; its output goes to a log file, named when it does not start.
    """

    def __init__(self):
        handle, path = tempfile.mkstemp(prefix="fedsilo-prefect-server-", suffix=".log")
        os.close(handle)
        self.log = Path(path)
        self.port = 0
        self.failed = False  # then its log is kept: the error names it
        self.process: subprocess.Popen | None = None
        self._launch()

    def _launch(self) -> None:
        self.port = _free_port()
        command = ["-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error"]
        env = os.environ | {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}
        env |= {"PREFECT__SERVER_FINAL": "1"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _TIED_TO_PARENT, str(os.getpid()), *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in a terminal reaches the group, not the server
            )

    def _healthy(self) -> bool:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        try:
            with direct.open(f"http://127.0.0.1:{self.port}/api/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def wait_ready(self) -> None:
        """Wait until the server answers, then hand it to Prefect; FedsiloError if it does not."""
        limit = float(os.environ.get(STARTUP_TIMEOUT_ENV) or STARTUP_TIMEOUT_SECONDS)
        deadline = time.monotonic() + limit
        while not self._healthy():
            code = self.process.poll()
            if code not in (None, PORT_IN_USE):
                raise self._failure(f"exited with status {code}")
            if time.monotonic() > deadline:
                raise self._failure(
                    f"did not answer within {limit:.0f} s",
                    f"; set {STARTUP_TIMEOUT_ENV} higher, or PREFECT_API_URL to a running server",
                )
            if code == PORT_IN_USE:
                self._launch()
            time.sleep(0.2)
        _share_with_prefect(self.port, self.process)

    def _failure(self, what: str, advice: str = "") -> FedsiloError:
        self.failed = True
        return FedsiloError(f"the local Prefect server {what} (its log: {self.log}){advice}")

    def stop(self) -> None:
        """Flush what Prefect still has to send, then stop the server (SIGKILL after 5 s)."""
        with _signals_held():
            _drain_prefect()
            if self.process.poll() is None:  # not reaped yet, so its group is still its own
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            _share_with_prefect(None, None)
        if not self.failed:
            self.log.unlink(missing_ok=True)


class _StoppedServer:
    """Prefect's ephemeral server once fedsilo has stopped it: a late Prefect call fails at once,
    where Prefect would retry the dead server for minutes or start a second one."""

    def start(self, timeout: int | None = None) -> None:
        raise FedsiloError("the local Prefect server has been stopped")


def _share_with_prefect(port: int | None, process: subprocess.Popen | None) -> None:
    """Make this server the one Prefect's clients use when PREFECT_API_URL is unset (they ask
    `SubprocessASGIServer()`, a singleton, to start); None: the stopped stand-in."""
    if process is None and "prefect.server.api.server" not in sys.modules:
        return
    from prefect.server.api.server import SubprocessASGIServer

    if process is None:
        SubprocessASGIServer._instances[None] = _StoppedServer()
        return
    SubprocessASGIServer._instances.pop(None, None)
    shared = SubprocessASGIServer()
    shared.port, shared.server_process, shared.running = port, process, True


def _drain_prefect(timeout: float = 5) -> None:
    """Send the logs and events Prefect still holds while its server is up."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=timeout, at_exit=False)


def cmd_validate(args: argparse.Namespace) -> int:
    failures = 0
    for file in args.files:
        try:
            scenario = load_scenario(file, args.set)
        except ScenarioError as exc:
            print(exc.report(), file=sys.stderr)
            failures += 1
        else:
            print(f"{file}: ok ({scenario.name}: {len(scenario.silos)} silos, {scenario.model.kind} model)")
    return EXIT_INVALID if failures else 0


def _distributed_problem(scenario) -> str | None:
    """Why a distributed run cannot start from this environment, or None."""
    if not os.environ.get("PREFECT_API_URL"):
        return (
            "distributed mode needs a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) "
            "and start each silo's worker with `fedsilo worker --silo NAME --scenario FILE`"
        )
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not scenario.federation.exchange and not tracking.startswith(("http://", "https://")):
        return (
            "distributed mode: silos must reach the exchanged weights. Set MLFLOW_TRACKING_URI to a "
            "tracking server (http://...) or federation.exchange to a store every silo can reach"
        )
    return None


def _preload_silos(scenario) -> None:
    """Embedded: build every silo now, so data and model errors come before any training."""
    from fedsilo.silo import participant

    print(f"Preparing {len(scenario.silos)} silos of scenario {scenario.name!r}...", flush=True)
    for silo in scenario.silo_names():
        print(f"  {silo}: {participant(scenario, silo).num_examples} training examples", flush=True)


def _scenario_to_run(args: argparse.Namespace):
    """The scenario file with its overrides, or the one recorded on MLflow run `--from-run`; with
    `--resume JOB`, it must be the scenario that job ran with."""
    overrides = args.set + ([f"federation.mode={args.mode}"] if args.mode else [])
    if args.from_run:
        from fedsilo.tracking import recorded_scenario

        job, text = recorded_scenario(args.from_run)
        print(f"Rerunning job {job!r} (MLflow run {args.from_run}) from its recorded scenario", flush=True)
        scenario = load_scenario_text(text, f"run {args.from_run}", overrides, args.rounds)
    elif args.scenario:
        scenario = load_scenario(args.scenario, overrides, args.rounds)
    else:
        raise ScenarioError("fedsilo run", ["name a scenario file, or --from-run RUN_ID"])
    if args.resume:
        from fedsilo.tracking import job_scenario

        recorded = load_scenario_text(job_scenario(scenario.experiment_name, args.resume), args.resume)
        changed = changed_fields(recorded, scenario)
        if changed:
            raise ScenarioError(
                "--resume",
                [
                    f"{field}: job {args.resume!r} ran with {old!r}, this run has {new!r}"
                    for field, old, new in changed
                ]
                + ["resume with the scenario the job ran with (drop these --set overrides)"],
            )
    return scenario


def _job_name(args: argparse.Namespace, scenario) -> str:
    """The job's name: `--resume`, `--job-name`, or the scenario and the start time."""
    if args.resume:
        return args.resume
    return args.job_name or names.default_job_name(scenario.name, datetime.now())


def _check_job_names(args: argparse.Namespace) -> None:
    """Job names go into MLflow filters, Prefect names and folders: refuse any that does not fit."""
    for option, value in (("--resume", args.resume), ("--job-name", args.job_name)):
        if value:
            names.check_job_name(value, option)


def _interrupted(args: argparse.Namespace, job: str, started: bool) -> str:
    """What an interrupted run says: how to go on with its job, if it had started."""
    if not started:
        return f"fedsilo run: interrupted before job {job!r} started"
    words = ["fedsilo", "run", args.scenario or f"--from-run={args.from_run}"]
    words += [f"--set={value}" for value in args.set]
    words += [f"--rounds={args.rounds}"] if args.rounds else []
    words += [f"--mode={args.mode}"] if args.mode else []
    command = shlex.join([*words, f"--resume={job}"])
    return f"fedsilo run: interrupted; the rounds job {job!r} finished are in MLflow. Go on with: {command}"


def _run_flow(scenario, job: str, resume: str):
    """Run the coordinator flow; its result, or the error that failed it."""
    from pipelines.flows import federated_training

    state = federated_training(scenario, job_name=job, resume_job=resume, return_state=True)
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        # an exception, or the flow's own verdict, e.g. too few silos answered
        raise error if isinstance(error, BaseException) else FederationError(state.message)
    return state.result()


def _kept_round(result) -> str:
    if result.kept_round in (None, result.rounds):
        return ""
    return f" (round {result.kept_round}'s model, the best on the silos' validation rows)"


def _print_result(scenario, result) -> None:
    print(
        f"\nDone: global accuracy {result.initial_accuracy:.1%} (pretrained) -> {result.final_accuracy:.1%} "
        f"after {result.rounds} rounds{_kept_round(result)}.\nMLflow: {result.tracking_uri}, "
        f"experiment '{result.experiment}', run {result.parent_run_id} (see it with `make ui`)."
    )
    if result.personalized:
        how = scenario.evaluation.personalized_by
        scores = ", ".join(f"{silo} {accuracy:.1%}" for silo, accuracy in result.personalized.items())
        print(f"Personalized ({how} on each silo's own data, its own test split): {scores}.")
    if result.kept:
        print(
            "Each silo keeps its best model on its own validation rows "
            "(scores: its test split; alone: trained on its own rows only):"
        )
        for silo, choice in result.kept.items():
            alone = result.alone_accuracy.get(silo)
            versus = (
                f", alone {alone:.1%}, gain {result.kept_accuracy[silo] - alone:+.1%}"
                if alone is not None
                else ""
            )
            print(f"  {silo}: keeps {choice} {result.kept_accuracy[silo]:.1%}{versus}")
    if result.privacy:
        print(f"Privacy: {result.privacy}.")
    if result.registered_version:
        state = "now the champion" if result.champion else "champion unchanged"
        print(
            f"Registered model {result.registered_model} version {result.registered_version} ({state}: "
            f"{result.champion_reason})."
        )


def cmd_run(args: argparse.Namespace) -> int:
    """Run one federated job; embedded runs start (and always stop) their own Prefect server."""
    _check_job_names(args)
    scenario = _scenario_to_run(args)
    distributed = scenario.federation.mode == "distributed"
    if distributed and (problem := _distributed_problem(scenario)):
        print(f"fedsilo run: {problem}", file=sys.stderr)
        return EXIT_INVALID
    job = _job_name(args, scenario)
    server = None if distributed or os.environ.get("PREFECT_API_URL") else LocalPrefectServer()
    started = False
    try:
        if distributed:
            print(f"Coordinating {len(scenario.silos)} silos of {scenario.name!r} through their workers")
        else:
            _preload_silos(scenario)
        if server:
            server.wait_ready()
        started = True
        result = _run_flow(scenario, job, args.resume or "")
    except KeyboardInterrupt:
        print(_interrupted(args, job, started), file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if server:
            server.stop()
    _print_result(scenario, result)
    return 0


def _takes_part(scenario, args: argparse.Namespace, command: str) -> bool:
    """Whether `--silo` is one of the scenario's silos; if not, say so, naming those it has."""
    if args.silo in scenario.silo_names():
        return True
    known = ", ".join(scenario.silo_names())
    print(
        f"fedsilo {command}: silo {args.silo!r} is not in {args.scenario} (its silos: {known})",
        file=sys.stderr,
    )
    return False


def _check_trust(args: argparse.Namespace) -> None:
    """The silo's key (made on first start), roster and policy, checked before it serves anything;
    their paths go to its job runs through the environment."""
    from fedsilo.privacy.pending import state_folder
    from fedsilo.trust.credentials import POLICY_ENV
    from fedsilo.trust.identity import load_or_make
    from fedsilo.trust.policy import load_policy
    from fedsilo.trust.roster import ROSTER_ENV, load_roster, roster_path

    os.environ[ROSTER_ENV] = str(roster_path(args.roster).resolve())
    roster = load_roster()
    roster.coordinator_key()
    identity, made = load_or_make(state_folder(args.silo), args.silo)
    print(f"silo {args.silo} signs as {identity.public_key}{' (key made now)' if made else ''}")
    if roster.silos.get(args.silo, None) is None or roster.silo_key(args.silo) != identity.public_key:
        print(f"not enrolled with this key yet: fedsilo roster add {args.silo} {identity.public_key}")
    if args.policy:
        os.environ[POLICY_ENV] = str(Path(args.policy).resolve())
        for rule in load_policy(args.policy).describe() or ["(empty: runs what a signed request asks)"]:
            print(f"policy: {rule}")


def cmd_worker(args: argparse.Namespace) -> int:
    """Register the silo's pool and deployment, check its data here, then become its Prefect worker.

    `prefect worker start` replaces this process, so SIGTERM and SIGINT reach it directly; it stops
    on either (Prefect 3.9 turns SIGTERM into SIGINT) and ends the silo's job run it started."""
    from fedsilo.errors import DataError
    from fedsilo.silo import summarize

    scenario = load_scenario(args.scenario)
    if not _takes_part(scenario, args, "worker"):
        return EXIT_INVALID
    if not os.environ.get("PREFECT_API_URL"):
        print("fedsilo worker: set PREFECT_API_URL to the coordinator's Prefect server", file=sys.stderr)
        return EXIT_INVALID
    from pipelines.deploy import register_silo
    from pipelines.silo_flow import DATA_ENV, SILO_ENV, local_view

    os.environ[SILO_ENV] = args.silo  # its runs serve this silo only, whatever a run's parameters say
    if args.data:
        os.environ[DATA_ENV] = str(Path(args.data).resolve())
    if args.extension:  # imported now to fail early, and by each of the silo's job runs
        from fedsilo.extensions import EXTENSIONS_ENV, load_extensions

        os.environ[EXTENSIONS_ENV] = ",".join(load_extensions(",".join(args.extension)))
    from fedsilo.privacy.pending import STATE_ENV

    # secure aggregation keeps a silo's update between two of its flow runs, which the process
    # worker starts in fresh folders: pin the silo's private folder to where the worker started
    os.environ.setdefault(STATE_ENV, str(Path(args.state or ".fedsilo/silo-state").resolve()))
    if args.state:
        os.environ[STATE_ENV] = str(Path(args.state).resolve())
    _check_trust(args)
    try:
        summary = summarize(local_view(scenario, args.silo), args.silo)
    except DataError as exc:
        print(f"fedsilo worker: silo {args.silo}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    where = os.environ.get(DATA_ENV) or "the scenario's source"
    print(f"silo {args.silo}: {sum(summary.train_counts.values())} training examples from {where}")
    deployment = register_silo(args.silo)
    pool = names.work_pool_name(args.silo)
    print(f"deployment {deployment} on work pool {pool}; starting its worker", flush=True)
    os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", str(args.poll_seconds))
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    name = names.prefect_name(f"{args.silo}-{os.uname().nodename}")
    command += ["--limit", str(args.limit), "--name", name]
    _drain_prefect()  # what registering the silo logged, before this process becomes the worker
    os.execv(sys.executable, command)


def cmd_pool(args: argparse.Namespace) -> int:
    """Give a silo a Docker or Kubernetes work pool and register its deployment on it."""
    scenario = load_scenario(args.scenario)
    if not _takes_part(scenario, args, "pool"):
        return EXIT_INVALID
    mlflow_uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not os.environ.get("PREFECT_API_URL") or not mlflow_uri.startswith("http"):
        print(
            "fedsilo pool: set PREFECT_API_URL and an http(s) MLFLOW_TRACKING_URI (or --mlflow-uri): "
            "the servers every silo reaches",
            file=sys.stderr,
        )
        return EXIT_INVALID
    from pipelines.deploy import register_silo
    from pipelines.pools import ensure_container_pool, silo_template

    template = silo_template(args.type, args.image, args.data, args.data_file, mlflow_uri)
    try:
        pool = ensure_container_pool(args.silo, args.type, template)
    except ValueError as exc:
        print(f"fedsilo pool: {exc}", file=sys.stderr)
        return EXIT_INVALID
    deployment = register_silo(args.silo)
    print(f"{args.type} work pool {pool} with deployment {deployment}; on the silo's host run:")
    print(f"  pip install {'prefect-docker' if args.type == 'docker' else 'prefect-kubernetes'}")
    print(f"  prefect worker start --pool {pool} --type {args.type}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve one `federated-training/<scenario>` deployment per scenario file until Ctrl-C."""
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "fedsilo serve: set PREFECT_API_URL to a Prefect server (start one with "
            "`prefect server start`, then export PREFECT_API_URL=http://127.0.0.1:4200/api)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    files = args.scenarios or sorted(str(p) for p in Path("scenarios").glob("*.yaml"))
    overrides = args.set + ([f"federation.mode={args.mode}"] if args.mode else [])
    scenarios = [load_scenario(file, overrides) for file in files]  # every file is checked first
    for file, scenario in zip(files, scenarios):
        when = scenario.retraining.schedule or "on demand"
        print(f"serving federated-training/{scenario.name} from {file} ({when})", flush=True)
    from pipelines.deploy import serve_scenarios

    serve_scenarios(scenarios, files)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedsilo.tracking import compare, silo_matrices

    experiment = args.scenario
    if experiment.endswith((".yaml", ".yml")):
        experiment = load_scenario(experiment).experiment_name
    table = compare(experiment, args.jobs)
    if table.empty:
        print(f"no federated jobs in experiment {experiment!r} yet; run `fedsilo run` first")
        return EXIT_FAILED
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))
    for job, matrix in silo_matrices(experiment, args.jobs).items():
        print(f"\n{job}: each model (rows) on each silo's test split (columns)")
        print(matrix.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fedsilo.pretrain import pretrain_cnn

    print(f"Pretraining the CNN on scikit-learn digits at {args.image_size}x{args.image_size}...", flush=True)
    result = pretrain_cnn(Path(args.output), args.image_size, args.epochs)
    print(f"digits test accuracy {result.accuracy:.1%}; weights written to {result.path}")
    if not args.no_mlflow:
        from fedsilo.tracking import log_pretrained

        uri = log_pretrained(result.path, {"accuracy": result.accuracy}, {"image_size": args.image_size})
        print(f"logged to MLflow as {uri} (usable as model.source)")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="fedsilo", description="Cross-silo federated fine-tuning.")
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a scenario's federated job")
    run.add_argument("scenario", nargs="?", help="scenario YAML file, e.g. scenarios/medical.yaml")
    run.add_argument(
        "--resume",
        metavar="JOB",
        help="go on with interrupted job JOB from its last completed round, in the same MLflow runs",
    )
    run.add_argument(
        "--from-run",
        metavar="RUN_ID",
        help="rerun the job of this MLflow parent run from its recorded scenario",
    )
    run.add_argument("--rounds", type=int, help="override federation.rounds")
    run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field")
    run.add_argument("--job-name", help="MLflow run name of the job (default: scenario-timestamp)")
    run.add_argument(
        "--mode",
        choices=["embedded", "distributed"],
        help="override federation.mode; distributed needs PREFECT_API_URL and a worker per silo",
    )
    run.set_defaults(handler=cmd_run)

    worker = commands.add_parser("worker", help="run one silo's participant: a Prefect worker for its pool")
    worker.add_argument("--silo", required=True, help="the silo's name in the scenario")
    worker.add_argument("--scenario", required=True, help="scenario YAML file the silo takes part in")
    worker.add_argument(
        "--data", help="this silo's own data file (.csv, .parquet, .npz); default: the scenario's source"
    )
    worker.add_argument(
        "--state", help="the silo's private folder root: its key, replay store, audit trail, DP ledger"
    )
    worker.add_argument(
        "--roster", help="this silo's copy of the roster: pins the coordinator's key and its peers'"
    )
    worker.add_argument("--policy", help="YAML policy of what this silo runs (see README 'Security')")
    worker.add_argument("--poll-seconds", type=float, default=2.0, help="how often to ask for new steps")
    worker.add_argument("--limit", type=int, default=1, help="steps run at once by this worker")
    worker.add_argument(
        "--extension",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module of yours that registers more silo steps (repeatable)",
    )
    worker.set_defaults(handler=cmd_worker)

    add_trust_commands(commands)

    validate = commands.add_parser("validate", help="check scenario files; exit 2 on problems")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    validate.set_defaults(handler=cmd_validate)

    pool = commands.add_parser(
        "pool", help="give a silo a Docker or Kubernetes work pool: each job in its own container or pod"
    )
    pool.add_argument("--silo", required=True, help="the silo's name in the scenario")
    pool.add_argument("--scenario", required=True, help="scenario YAML file the silo takes part in")
    pool.add_argument("--type", required=True, choices=["docker", "kubernetes"])
    pool.add_argument("--image", required=True, help="the fedsilo image the silo's hosts can pull")
    pool.add_argument(
        "--data", required=True, help="docker: host folder of the silo's data; kubernetes: its PVC name"
    )
    pool.add_argument("--data-file", default="notes.csv", help="the silo's file in that folder or claim")
    pool.add_argument(
        "--mlflow-uri", help="tracking server the silo's runs reach (default: MLFLOW_TRACKING_URI)"
    )
    pool.set_defaults(handler=cmd_pool)

    serve = commands.add_parser(
        "serve", help="serve a deployment per scenario (run them from the Prefect UI)"
    )
    serve.add_argument("scenarios", nargs="*", help="scenario files (default: scenarios/*.yaml)")
    serve.add_argument(
        "--mode", choices=["embedded", "distributed"], help="override federation.mode of every scenario"
    )
    serve.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of every scenario"
    )
    serve.set_defaults(handler=cmd_serve)

    compare = commands.add_parser("compare", help="per-silo table of the latest jobs, from MLflow")
    compare.add_argument("scenario", help="scenario name (MLflow experiment) or YAML file")
    compare.add_argument("--jobs", type=int, default=1, help="how many recent jobs")
    compare.set_defaults(handler=cmd_compare)

    pretrain = commands.add_parser("pretrain", help="pretrain the CNN on scikit-learn digits")
    pretrain.add_argument("--output", default="pretrained/cnn-digits.safetensors")
    pretrain.add_argument("--image-size", type=int, default=28)
    pretrain.add_argument("--epochs", type=int, default=5)
    pretrain.add_argument("--no-mlflow", action="store_true", help="only write the file")
    pretrain.set_defaults(handler=cmd_pretrain)
    return root


def main(argv: list[str] | None = None) -> int:
    """Run one command; fedsilo's errors end in one line and errors.exit_code's status."""
    _quiet_defaults()
    args = parser().parse_args(argv)
    if args.command in {"run", "worker", "serve"}:
        _stop_on_sigterm()
    try:
        return args.handler(args)
    except ScenarioError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_INVALID
    except FedsiloError as exc:
        print(f"fedsilo {args.command}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"fedsilo {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
