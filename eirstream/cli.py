"""The command line: `eirstream` (and `python simulation_streamer.py`).

`build_parser` owns every default of the server; `parse_args` turns the
command line (and a few environment variables) into `Settings`; `main`
starts the server, or with `--check` checks the source and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from eirstream.check import check_source
from eirstream.loading import DATASET_SOURCE, load_configured_source
from eirstream.server import StreamServer, websockets_missing
from eirstream.settings import DEFAULT_SOURCE, Settings

logger = logging.getLogger("eirstream.cli")


def number_at_least(
    minimum: float, kind: Callable[[str], Any] = int, above: bool = False
) -> Callable[[str], Any]:
    """An argparse type: an int (or float) no smaller than `minimum` (or, with
    `above`, larger than it)."""
    noun = "an integer" if kind is int else "a number"
    bound = f"{'above' if above else 'at least'} {minimum:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if value < minimum or (above and value == minimum) or value != value:
            raise argparse.ArgumentTypeError(f"expected {noun} {bound}, got {text}")
        return value

    return parse


positive_int, nonnegative_int = number_at_least(1), number_at_least(0)
positive_float = number_at_least(0, float, above=True)

# Options whose default an environment variable may set. The value goes
# through the option's own type check; an error names the variable.
ENVIRONMENT = {
    "max_iterations": "MAX_ITERATIONS",
    "sequence_length": "SEQUENCE_LENGTH",
    "token": "EIR_STREAM_TOKEN",
    "cluster": "DASK_SCHEDULER_ADDRESS",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, unless that is None: the
    help of such an option says itself what leaving it out means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line; every default of the server is here and only here.
    `prog` names the command in messages (default: the script's name)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Stream simulated health data (or your own) to EIR's eirtrain "
        "over WebSocket.",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 serves others")
    add("--port", type=nonnegative_int, default=8000, help="TCP port (0: any free)")
    add("--path", default="/ws", help="WebSocket path (the URL's path in the configs)")
    add(
        "--max-iterations",
        type=nonnegative_int,
        default=None,
        help="samples per epoch: the source's first N (env MAX_ITERATIONS; "
        "default: all of them, and the simulated data has no end)",
    )
    add(
        "--sequence-length",
        type=positive_int,
        default=64,
        help="HR readings per trace (env SEQUENCE_LENGTH)",
    )
    add("--seed", type=int, default=0, help="sample k is a function of (seed, k)")
    add(
        "--source",
        default=None,
        help="module:factory or path/to/file.py:factory that builds the samples; "
        "a module is looked up in the current folder first (default: "
        "data_simulator:SimulatedHealthData, the tutorial's data)",
    )
    add(
        "--dataset",
        default=None,
        metavar="SPEC",
        help="serve the dataset this YAML file describes (Parquet, JSON Lines, "
        "CSV, Arrow, save_to_disk; local or fsspec URLs) instead of a --source; "
        "needs pip install 'eirstream[datasets]'",
    )
    add(
        "--shuffle",
        action="store_true",
        help="serve each epoch in its own order, a function of (--seed, epoch)",
    )
    add(
        "--epochs",
        type=positive_int,
        default=None,
        help="epochs in a pass, then 'terminate' (default: endless with "
        "--dataset, 1 otherwise); an epoch is every sample of the source once",
    )
    add(
        "--workers",
        type=nonnegative_int,
        default=None,
        help="local processes that make samples (default: one per core, or a "
        "thread of the server process for samples quicker to make than to "
        "receive from a process; 0: that thread)",
    )
    add(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="make samples on this Dask scheduler's workers, e.g. "
        "tcp://host:8786 (env DASK_SCHEDULER_ADDRESS; needs pip install "
        "'eirstream[cluster]')",
    )
    add(
        "--max-batch-size",
        type=positive_int,
        default=10_000,
        help="larger getData requests are served this many",
    )
    add(
        "--max-message-size",
        type=positive_int,
        default=16 * 2**20,
        help="largest incoming message in bytes; a larger one closes with 1009",
    )
    add(
        "--max-streams",
        type=positive_int,
        default=64,
        help="named streams the server keeps (the default one counted): "
        "ws://host:port/ws/<name> opens one; one more is refused",
    )
    add(
        "--state",
        default=None,
        metavar="PATH",
        help="keep each stream's progress and validation ids in this file, and "
        "resume from it when the server starts again (a restarted run then "
        "trains on what its stream has not sent yet)",
    )
    add(
        "--state-sync",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="flush the --state file to disk this often; after a machine crash "
        "at most this interval's samples are sent again (a killed server "
        "loses nothing)",
    )
    add(
        "--token",
        default=None,
        help="require ?token=TOKEN in the URL (env EIR_STREAM_TOKEN); /metrics "
        "takes it as a bearer Authorization header too",
    )
    add("--certfile", help="TLS certificate (PEM): serve wss://")
    add("--keyfile", help="TLS private key (PEM) for --certfile")
    add(
        "--ping-interval",
        type=positive_float,
        default=None,
        help="send keepalive pings this often, in seconds (default: off, since EIR "
        "answers pings only when it reads)",
    )
    add(
        "--handshake-timeout",
        type=positive_float,
        default=30.0,
        help="close (1008) a connection that sends no handshake within this many "
        "seconds",
    )
    add(
        "--progress-interval",
        type=number_at_least(0, float),
        default=30.0,
        help="seconds between progress lines in the log while samples flow (0: none)",
    )
    add(
        "--check",
        type=positive_int,
        nargs="?",
        const=20,
        default=None,
        metavar="N",
        help="serve nothing: check the source's getInfo payload and its first N "
        "samples (default N: 20) against EIR's layout, print one line, exit 0 "
        "if they fit, 1 if not",
    )
    add(
        "--log-level",
        default=None,
        type=str.lower,  # WARNING as well as warning, like logging's own names
        choices=["debug", "info", "warning", "error"],
        help="how much the log says (default: info; warning with --check, so "
        "that its result is one line)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> Settings:
    """Settings from the command line, with defaults from ENVIRONMENT."""
    parser = build_parser(prog)
    actions = {action.dest: action for action in parser._actions}
    for dest, name in ENVIRONMENT.items():
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        convert = actions[dest].type or str
        try:
            parser.set_defaults(**{dest: convert(value)})  # type: ignore[operator]
        except argparse.ArgumentTypeError as exc:
            parser.error(f"environment variable {name}={value!r}: {exc}")
    args = parser.parse_args(argv)
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if not args.path.startswith("/"):
        parser.error(f"--path must start with '/', got {args.path!r}")
    if args.token is not None and not args.token.strip():
        parser.error("--token must not be empty (leave it out to run without one)")
    if args.cluster is not None and args.workers is not None:
        parser.error(
            f"--workers {args.workers} and --cluster {args.cluster!r}: samples are "
            "made either by local processes or by the cluster; give one"
        )
    if args.dataset is not None and args.source is not None:
        parser.error(
            f"--dataset {args.dataset!r} and --source {args.source!r}: serve a "
            "dataset or a source; give one"
        )
    if args.dataset is not None:
        args.source = DATASET_SOURCE
    elif args.source is None:
        args.source = DEFAULT_SOURCE
    if args.log_level is None:
        args.log_level = "info" if args.check is None else "warning"
    if args.epochs is None and args.dataset is None:
        args.epochs = 1  # a source's pass is one epoch unless asked for more
    args.workers_auto = args.workers is None and args.cluster is None
    if args.workers is None:
        args.workers = os.cpu_count() or 1
    return Settings(**vars(args))


async def run(
    settings: Settings, ready: Callable[[StreamServer], None] | None = None
) -> int:
    """Serve until SIGINT/SIGTERM; return the process exit status."""
    server = await started_server(settings)
    if isinstance(server, int):
        return server
    stop = asyncio.Event()
    stop_on_signals(stop)  # before the "listening" line: a script may act on it
    announce(server)
    if ready is not None:
        ready(server)
    await stop.wait()
    open_now = len(server.connections)
    await server.stop()
    logger.info(
        "stopped: %d connections served (%d closed at shutdown), %d samples served",
        server.connections_total,
        open_now,
        server.health()["samples_served_total"],
    )
    return 0


async def started_server(settings: Settings) -> StreamServer | int:
    """A listening server, or the exit status after one line on what failed:
    2 for an unusable source, cluster or TLS file, 1 when it cannot listen."""
    try:
        server = StreamServer(settings)
    except ValueError as exc:
        logger.error("%s", exc)
        logger.debug("the cause of the error above:", exc_info=exc.__cause__)
        return 2
    try:
        await server.start()
    except ValueError as exc:  # unusable --certfile/--keyfile
        server.producer.close()
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        server.producer.close()
        logger.error(
            "cannot listen on %s:%s: %s",
            settings.host,
            settings.port,
            exc.strerror or exc,
        )
        return 1
    return server


def announce(server: StreamServer) -> None:
    """The "listening" line (with the URL for the configs), and a warning
    when anyone who can reach the port can read the data."""
    settings = server.settings
    if (
        settings.host not in ("127.0.0.1", "localhost", "::1")
        and settings.token is None
    ):
        logger.warning(
            "listening on %s without --token: anyone who can reach this port "
            "can read the data",
            settings.host,
        )
    if settings.cluster:
        makers = f"the Dask cluster at {settings.cluster}"
    elif settings.workers:
        makers = f"{settings.workers} local processes"
    else:
        makers = "a thread of the server process"
    logger.info(
        "listening; put this in input_source/output_source: %s "
        "(%s; seed %d; samples made by %s)",
        server.url,
        describe_stream(server),
        settings.seed,
        makers,
    )
    if server.keeper is not None:
        for line in server.keeper.resumed_lines():
            logger.info("%s", line)


def describe_stream(server: StreamServer) -> str:
    """What a pass of the stream is, for the "listening" line."""
    settings, per_epoch = server.settings, server.stream.num_samples
    if per_epoch is None:
        text = "unbounded stream"
    elif settings.epochs == 1:
        text = f"{per_epoch} samples per pass"
    else:
        epochs = "endless" if settings.epochs is None else f"{settings.epochs}"
        text = f"{per_epoch:,} samples per epoch, {epochs} epochs per pass"
    if settings.shuffle:
        text += ", shuffled"
    if settings.dataset is None:
        text += f", sequence length {settings.sequence_length}"
    return text


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGINT/SIGTERM (Ctrl-C). Left installed until the process
    exits: a second Ctrl-C during shutdown must not become a traceback."""
    loop = asyncio.get_running_loop()
    for name in ("SIGINT", "SIGTERM"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            # Windows' event loops have no add_signal_handler: a plain handler
            # runs in the main thread and hands the event to the loop.
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(stop.set))


def check(settings: Settings, samples: int) -> int:
    """`--check N`: load the configured source as the server would and check
    it and its first `samples` samples (check.py); one line, on stdout if it
    fits (exit status 0), on stderr if not (1)."""
    try:
        source = load_configured_source(settings)
        print(check_source(source, samples))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`eirstream`: serve until SIGINT/SIGTERM, or check the source with
    `--check`; the process exit status."""
    settings = parse_args(argv, prog)
    if settings.check is None and websockets_missing:
        print(
            "error: the server needs the websockets package: "
            "pip install 'websockets>=14' (installing eirstream brings it)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.log_level != "debug":
        logging.getLogger("websockets").setLevel(logging.WARNING)
    for quiet in ("distributed", "tornado"):  # the Dask client's own chatter
        if not logging.getLogger(quiet).isEnabledFor(logging.DEBUG):
            logging.getLogger(quiet).setLevel(logging.WARNING)
    if settings.check is not None:
        return check(settings, settings.check)
    return asyncio.run(run(settings))
