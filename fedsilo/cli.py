"""`fedsilo` command line: run, worker, validate, compare, pretrain. The composition root.

User mistakes (a bad scenario, missing data, an unloadable model) end with a message that names
the field, file or silo and exit code 2 or 1, never a traceback.
"""

import argparse
import os
import sys
import threading
from pathlib import Path

from fedsilo.scenario import ScenarioError, changed_fields, load_scenario, load_scenario_text

EXIT_INVALID, EXIT_FAILED = 2, 1


def _quiet_defaults() -> None:
    # No analytics insert on the ephemeral server's SQLite (the "database is locked" source)
    # and no transformers load reports about the new classifier head, which is expected.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _warm_prefect() -> threading.Thread | None:
    """Start the ephemeral Prefect server in the background while silos load their data."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    from prefect.server.api.server import SubprocessASGIServer

    thread = threading.Thread(target=SubprocessASGIServer().start, name="prefect-server", daemon=True)
    thread.start()
    return thread


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


def cmd_run(args: argparse.Namespace) -> int:
    from fedsilo.data import DataError
    from fedsilo.federation import FederationError
    from fedsilo.modeling import ModelSourceError

    try:
        scenario = _scenario_to_run(args)
    except LookupError as exc:
        print(f"fedsilo run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    distributed = scenario.federation.mode == "distributed"
    if distributed and (problem := _distributed_problem(scenario)):
        print(f"fedsilo run: {problem}", file=sys.stderr)
        return EXIT_INVALID
    warming = None if distributed else _warm_prefect()
    try:
        if distributed:
            print(f"Coordinating {len(scenario.silos)} silos of {scenario.name!r} through their workers")
        else:
            _preload_silos(scenario)
        if warming:
            warming.join()
        from pipelines.flows import federated_training

        state = federated_training(
            scenario, job_name=args.job_name or "", resume_job=args.resume or "", return_state=True
        )
        if state.is_failed() and not isinstance(state.result(raise_on_failure=False), Exception):
            raise FederationError(state.message)  # the flow's own verdict, e.g. too few silos answered
        result = state.result()
    except (DataError, ModelSourceError, FederationError) as exc:
        print(f"fedsilo run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if warming:  # exiting while the server starts aborts the interpreter
            warming.join()
    print(
        f"\nDone: global accuracy {result.initial_accuracy:.1%} (pretrained) -> {result.final_accuracy:.1%} "
        f"after {result.rounds} rounds.\nMLflow: {result.tracking_uri}, experiment '{result.experiment}', "
        f"run {result.parent_run_id} (see it with `make ui`)."
    )
    if result.personalized:
        steps = scenario.evaluation.personalize_steps
        scores = ", ".join(f"{silo} {accuracy:.1%}" for silo, accuracy in result.personalized.items())
        print(f"Personalized ({steps} steps on each silo's own data, its own test split): {scores}.")
    if result.privacy:
        print(f"Privacy: {result.privacy}.")
    if result.registered_version:
        state = "now the champion" if result.champion else "champion unchanged"
        print(
            f"Registered model {result.registered_model} version {result.registered_version} ({state}: "
            f"{result.champion_reason})."
        )
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


def cmd_worker(args: argparse.Namespace) -> int:
    """Register the silo's pool and deployment, check its data here, then become its Prefect worker."""
    from fedsilo.data import DataError
    from fedsilo.silo import summarize

    scenario = load_scenario(args.scenario)
    if not _takes_part(scenario, args, "worker"):
        return EXIT_INVALID
    if not os.environ.get("PREFECT_API_URL"):
        print("fedsilo worker: set PREFECT_API_URL to the coordinator's Prefect server", file=sys.stderr)
        return EXIT_INVALID
    from pipelines.deploy import register_silo
    from pipelines.silo_flow import DATA_ENV, local_view, pool_name

    if args.data:
        os.environ[DATA_ENV] = str(Path(args.data).resolve())
    from fedsilo.privacy.pending import STATE_ENV

    # secure aggregation keeps a silo's update between two of its flow runs, which the process
    # worker starts in fresh folders: pin the silo's private folder to where the worker started
    os.environ.setdefault(STATE_ENV, str(Path(".fedsilo/silo-state").resolve()))
    try:
        summary = summarize(local_view(scenario, args.silo), args.silo)
    except DataError as exc:
        print(f"fedsilo worker: silo {args.silo}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    where = os.environ.get(DATA_ENV) or "the scenario's source"
    print(f"silo {args.silo}: {sum(summary.train_counts.values())} training examples from {where}")
    deployment = register_silo(args.silo)
    print(f"deployment {deployment} on work pool {pool_name(args.silo)}; starting its worker", flush=True)
    os.environ.setdefault("PREFECT_WORKER_QUERY_SECONDS", str(args.poll_seconds))
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool_name(args.silo)]
    command += [
        "--type",
        "process",
        "--limit",
        str(args.limit),
        "--name",
        f"{args.silo}-{os.uname().nodename}",
    ]
    os.execv(sys.executable, command)  # the worker takes over this process, signals included


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
    try:
        table = compare(experiment, args.jobs)
    except LookupError as exc:
        print(f"fedsilo compare: {exc}", file=sys.stderr)
        return EXIT_FAILED
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
    worker.add_argument("--poll-seconds", type=float, default=2.0, help="how often to ask for new steps")
    worker.add_argument("--limit", type=int, default=1, help="steps run at once by this worker")
    worker.set_defaults(handler=cmd_worker)

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
    _quiet_defaults()
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except ScenarioError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted; rounds already finished are in MLflow", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
