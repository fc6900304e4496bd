"""Settings: one parser owns every default; the environment goes through it.

An environment variable that sets a default (MAX_ITERATIONS, SEQUENCE_LENGTH,
EIR_STREAM_TOKEN, DASK_SCHEDULER_ADDRESS) is checked exactly as its flag is,
and a bad value stops the server with a message naming the variable, before
anything else happens.
"""

import os
import subprocess

import pytest
from support.commands import run_streamer

from eirstream.cli import ENVIRONMENT, build_parser, parse_args


def run_server(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The command line run to its end with none of the environment's
    defaults but `env`: every test here gives settings it refuses."""
    return run_streamer(*args, env=env, without=ENVIRONMENT.values())


@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process without any of the environment variables that set a
    default (ENVIRONMENT), for the test's own."""
    for variable in ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("MAX_ITERATIONS", "-5", "expected an integer at least 0, got -5"),
        ("MAX_ITERATIONS", "lots", "expected an integer, got 'lots'"),
        ("SEQUENCE_LENGTH", "0", "expected an integer at least 1, got 0"),
        ("SEQUENCE_LENGTH", "6.5", "expected an integer, got '6.5'"),
    ],
)
def test_a_bad_environment_value_names_the_variable(
    variable: str, value: str, complaint: str
) -> None:
    done = run_server("--port", "0", env={variable: value})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"simulation_streamer.py: error: environment variable "
        f"{variable}={value!r}: {complaint}"
    )
    assert "failed" not in done.stderr  # not mistaken for a --source problem


@pytest.mark.usefixtures("no_environment")
def test_environment_values_become_defaults_and_flags_override_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_ITERATIONS", "1200")
    monkeypatch.setenv("SEQUENCE_LENGTH", " 32 ")
    monkeypatch.setenv("EIR_STREAM_TOKEN", "s3cret")
    settings = parse_args([])
    assert (settings.max_iterations, settings.sequence_length) == (1200, 32)
    assert settings.token == "s3cret"
    settings = parse_args(["--max-iterations", "7", "--sequence-length", "8"])
    assert (settings.max_iterations, settings.sequence_length) == (7, 8)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:8786")
    assert parse_args([]).cluster == "tcp://127.0.0.1:8786"


@pytest.mark.usefixtures("no_environment")
def test_settings_are_the_parsed_arguments() -> None:
    """Every option lands in Settings under its own name, with the parser's
    default; only --workers (None: one process per core, which may hand over
    to a thread: `workers_auto`), --source (None: the simulator, or the
    dataset's source with --dataset), --epochs (None: 1, or endless with
    --dataset) and --log-level (None: info, or warning with --check) are
    resolved."""
    defaults = vars(build_parser().parse_args([]))
    settings = vars(parse_args([]))
    assert settings.pop("workers_auto") is True
    assert settings.keys() == defaults.keys()
    assert defaults.pop("workers") is None
    assert settings.pop("workers") == (os.cpu_count() or 1)
    assert (defaults.pop("source"), defaults.pop("epochs")) == (None, None)
    assert settings.pop("source") == "data_simulator:SimulatedHealthData"
    assert settings.pop("epochs") == 1
    assert (defaults.pop("log_level"), settings.pop("log_level")) == (None, "info")
    assert settings == defaults


@pytest.mark.usefixtures("no_environment")
def test_a_dataset_streams_endless_epochs_unless_told_and_excludes_a_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    served = parse_args(["--dataset", "corpus.yaml"])
    assert (served.source, served.epochs) == (
        "eirstream.datasets.source:make_source",
        None,
    )
    assert parse_args(["--dataset", "corpus.yaml", "--epochs", "2"]).epochs == 2
    assert parse_args(["--epochs", "3", "--shuffle"]).epochs == 3
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--dataset", "corpus.yaml", "--source", "mine:make"])
    assert exit_.value.code == 2
    assert "--dataset 'corpus.yaml' and --source 'mine:make'" in capsys.readouterr().err


@pytest.mark.usefixtures("no_environment")
def test_only_the_default_workers_may_hand_over_to_a_thread() -> None:
    """--workers N is N processes whatever the source costs; so is a cluster."""
    assert parse_args(["--workers", "2"]).workers_auto is False
    assert parse_args(["--workers", "0"]).workers_auto is False
    assert parse_args(["--cluster", "tcp://127.0.0.1:1"]).workers_auto is False


def test_workers_and_cluster_exclude_each_other() -> None:
    done = run_server("--workers", "2", "--cluster", "tcp://127.0.0.1:1", env={})
    assert done.returncode == 2
    assert "--workers 2 and --cluster 'tcp://127.0.0.1:1'" in done.stderr
    done = run_server(
        "--workers", "2", env={"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:1"}
    )
    assert done.returncode == 2
    assert "give one" in done.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--handshake-timeout", "0"], "--handshake-timeout"),
        (["--ping-interval", "-1"], "--ping-interval"),
        (["--progress-interval", "soon"], "--progress-interval"),
        (["--workers", "-1"], "--workers"),
    ],
)
def test_bad_numbers_are_rejected_by_the_parser(args: list[str], flag: str) -> None:
    done = run_server(*args, env={})
    assert done.returncode == 2
    assert flag in done.stderr and "Traceback" not in done.stderr


def test_check_takes_an_optional_count_and_logs_only_warnings_by_default() -> None:
    """`--check` alone checks 20 samples, `--check N` N; its log shows only
    warnings and errors unless --log-level says otherwise, so that its result
    is the one line it prints."""
    assert parse_args([]).check is None
    assert parse_args(["--check"]).check == 20
    assert parse_args(["--check", "5"]).check == 5
    assert parse_args(["--check"]).log_level == "warning"
    assert parse_args(["--check", "--log-level", "debug"]).log_level == "debug"
    done = run_server("--check", "0", env={})
    assert done.returncode == 2
    assert "--check: expected an integer at least 1, got 0" in done.stderr


def test_log_level_is_read_in_either_case() -> None:
    assert parse_args(["--log-level", "WARNING"]).log_level == "warning"
    assert parse_args(["--log-level", "Debug"]).log_level == "debug"
    with pytest.raises(SystemExit):
        parse_args(["--log-level", "loud"])
