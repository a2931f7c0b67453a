"""User mistakes end with exit 2 (the scenario) or 1 (the data), a message that names the field or
file and what to do, and never a traceback."""

import subprocess
import sys

import pytest

from fedsilo.errors import DataError, JobNotFound, RegistryUnavailable, UnknownKind
from tests.conftest import REPO

SMOKE = str(REPO / "scenarios" / "smoke.yaml")


def fedsilo(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsilo.cli", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("federation.learning_rate=.inf", "federation.learning_rate: Input should be a finite number"),
        ("federation.server_learning_rate=.nan", "federation.strategy.server_learning_rate"),
        ("federation.seed=-1", "federation.seed: Input should be greater than or equal to 0"),
        ("data.source.rows_per_silo=100000000000", "rows_per_silo: Input should be less than or equal"),
        ("silos=[{name: a}, {name: a}]", "silos: silo names must be unique; repeated: a"),
        ("federation.strategy=fedavg", None),  # the control: a valid override passes
        ("federation.proximal_mu=0.1", "proximal_mu is set but strategy 'fedavg' does not use it"),
        ("federation.local_steps=5", None),
        (
            "data.source={kind: csv, path: x.csv, encoding: klingon}",
            "data.source.csv.encoding: unknown encoding",
        ),
    ],
)
def test_validate_names_the_field(override, named, tmp_path):
    run = fedsilo("validate", SMOKE, "--set", override, cwd=tmp_path)
    assert "Traceback" not in run.stderr + run.stdout
    if named is None:
        assert run.returncode == 0, run.stderr
    else:
        assert run.returncode == 2 and named in run.stderr, run.stderr


def test_files_that_are_not_scenarios(tmp_path):
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    nest = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefg", "bcdefgh")
    )
    (tmp_path / "bomb.yaml").write_text(nest + "name: [" + ", ".join(["*h"] * 9) + "]\n")
    for name, named in (("binary.yaml", "not a UTF-8 text file"), ("bomb.yaml", "expands to over 100000")):
        run = fedsilo("validate", str(tmp_path / name), cwd=tmp_path)
        assert run.returncode == 2 and named in run.stderr and "Traceback" not in run.stderr
        assert len(run.stderr) < 2000  # never the expanded input echoed back


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"", "is empty"),
        (b"text,label\n", "has a header but no rows"),
        ("text,label\nfi\xe8vre et toux,pulmonology\n".encode("latin-1"), "set data.source.encoding"),
    ],
    ids=["empty", "header-only", "latin-1"],
)
def test_run_names_a_csv_it_cannot_read(content, named, tmp_path):
    (tmp_path / "notes.csv").write_bytes(content)
    source = "data.source={kind: csv, path: notes.csv}"
    run = fedsilo("run", SMOKE, "--set", source, "--set", "data.partition={kind: iid}", cwd=tmp_path)
    assert run.returncode == 1 and named in run.stderr and "notes.csv" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_a_declared_encoding_reads_the_file(tmp_path):
    rows = "".join(f"fi\xe8vre {i},{'pulmonology' if i % 2 else 'cardiology'}\n" for i in range(40))
    (tmp_path / "notes.csv").write_bytes(("text,label\n" + rows).encode("latin-1"))
    from fedsilo.data.sources import load_table
    from fedsilo.scenario import TableSource

    examples = load_table(TableSource(kind="csv", path=str(tmp_path / "notes.csv"), encoding="latin-1"))
    assert len(examples) == 40 and examples.inputs[0] == "fi\xe8vre 0"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnknownKind("strategy", "fedfoo", ["fedavg", "median"]), 2),
        (DataError("notes.csv is empty; give silo clinic-a rows"), 1),
        (JobNotFound("no job 'x' in experiment 'smoke'"), 1),
        (RegistryUnavailable("the registry did not answer"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_each_error_is_one_line_and_its_exit_code(error, code, monkeypatch, capsys):
    from fedsilo import cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_quiet_defaults", lambda: None)
    monkeypatch.setattr(cli, "cmd_compare", fail)
    assert cli.main(["compare", "smoke"]) == code
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fedsilo compare: ") and (str(error) in line or code == 130)


@pytest.mark.parametrize("job", ["it's", "a/b", "-x"])
def test_run_refuses_a_job_name_it_cannot_use(job, tmp_path):
    run = fedsilo("run", SMOKE, f"--job-name={job}", cwd=tmp_path)
    assert run.returncode == 2 and "--job-name" in run.stderr and "Traceback" not in run.stderr


def test_resuming_a_job_mlflow_does_not_hold(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    run = fedsilo("run", SMOKE, "--resume=no-such-job", cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("fedsilo")]
    assert line.startswith("fedsilo run: ") and "no-such-job" in line
