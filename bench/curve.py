"""The engine's global loss and accuracy by round for a scenario, in process (no Prefect, no MLflow):
the figures a refactor must not change. Run it in two checkouts and compare the lines.

    .venv/bin/python -m bench.curve scenarios/medical.yaml --rounds 2
    git worktree add /tmp/before <rev>
    PYTHONPATH=/tmp/before .venv/bin/python bench/curve.py scenarios/medical.yaml --rounds 2

Checkouts from before the one-transport engine (issue 19) have no fedsilo.engine: the script
drives their Coordinator with in-process silos instead.
"""

import argparse
import json
import os
import tempfile

from fedsilo.scenario import load_scenario


def curve(scenario) -> dict[int, dict[str, float]]:
    """Each round's job metrics, through whichever engine this checkout has."""
    folder = tempfile.mkdtemp()
    try:
        from fedsilo.engine import NullTracker, run_job
        from fedsilo.transport import InProcess

        tracker = NullTracker()
        os.environ["FEDSILO_WORKDIR"] = folder  # weights cross through files, as before
        run_job(scenario, InProcess(), job="curve", tracker=tracker)
    except ImportError:  # the engine before issue 19
        from fedsilo.coordinator import Coordinator
        from fedsilo.federation import JobPaths
        from fedsilo.local import LocalSilos, NullTracker
        from fedsilo.silo import release_participants

        tracker, paths = NullTracker(), JobPaths.under(folder, "curve")
        Coordinator(scenario, "curve", LocalSilos(paths), tracker, paths).run()
        release_participants()
    return tracker.rounds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    scenario = load_scenario(args.scenario, ["tracking.log_models=false"], rounds=args.rounds)
    rounds = curve(scenario)
    figures = {key: [rounds[r][f"global_{key}"] for r in sorted(rounds)] for key in ("loss", "accuracy")}
    print(json.dumps({"scenario": args.scenario, **figures}))


if __name__ == "__main__":
    main()
