"""Start the local hospital datasites: `python launch.py [--hospitals N] ...`.

Each hospital gets its own datasite process on 127.0.0.1, its own data and logins; the
launcher prints a table and a `ready:` line, then serves until SIGINT/SIGTERM and stops
every datasite. With `--demo` it also plays the data scientist once and shuts down.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from datasites.local.federation import LaunchError, LaunchSettings, LocalFederation
from datasites.local.process import DatasiteStartError
from synthetic.errors import DataFormatError


def parse_args(argv: list[str] | None) -> tuple[LaunchSettings, bool, bool]:
    p = argparse.ArgumentParser(prog="python launch.py", description=__doc__.splitlines()[0])
    p.add_argument("--hospitals", type=int, default=5, help="number of hospitals (default 5)")
    p.add_argument("--base-port", type=int, default=8081, help="first port (default 8081)")
    p.add_argument("--data-dir", type=Path, default=Path(".datasites"), help="state folder")
    p.add_argument("--reset", action="store_true", help="delete previous state first")
    p.add_argument("--scale", help="small (default), medium (default with --demo) or full")
    p.add_argument("--ehr-csv", type=Path, help="real diabetic_data.csv to partition")
    p.add_argument("--pathmnist-npz", type=Path, help="real pathmnist.npz to partition")
    p.add_argument("--seed", type=int, default=0, help="seed for data and splits")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew for images")
    p.add_argument(
        "--population",
        default="default",
        help="synthetic EHR federation from synthetic.populations (default: default)",
    )
    p.add_argument("--demo", action="store_true", help="run the scientist demo, then stop")
    watch_help = "run a watcher per hospital approving what its policy.toml allows"
    p.add_argument("--auto-approve", action="store_true", help=watch_help)
    a = p.parse_args(argv)
    settings = LaunchSettings(
        hospitals=a.hospitals,
        base_port=a.base_port,
        data_dir=a.data_dir,
        reset=a.reset,
        scale=a.scale or ("medium" if a.demo else "small"),
        ehr_csv=a.ehr_csv,
        pathmnist_npz=a.pathmnist_npz,
        seed=a.seed,
        alpha=a.alpha,
        population=a.population,
    )
    return settings, a.demo, a.auto_approve


def print_table(federation: LocalFederation) -> None:
    rows = federation.summary_rows()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [
        [
            f"{row.get(c, ''):,}" if isinstance(row.get(c), int) else str(row.get(c, ""))
            for c in columns
        ]
        for row in rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# Times a datasite that dies on its own is started again before it ends the launch.
MAX_RESTARTS = 3


def serve(federation: LocalFederation) -> int:
    """Wait for SIGINT/SIGTERM, restarting a datasite that dies on its own.

    Its state is on disk (accounts, ledger, audit, pending requests, a secure study's
    answers), so it comes back as it was, and the others keep serving meanwhile: a secure
    study's round completes without it while its threshold holds, and it rejoins a later
    round. Past MAX_RESTARTS for one hospital, the launch ends.
    """
    restarts: dict[str, int] = {}
    while True:
        for process in federation.failed():
            name = process.config.name
            restarts[name] = restarts.get(name, 0) + 1
            if restarts[name] > MAX_RESTARTS:
                print(
                    f"error: {name} stopped unexpectedly {MAX_RESTARTS + 1} times; see "
                    f"{process.config.log_path}.",
                    file=sys.stderr,
                )
                return 1
            print(
                f"warning: {name} stopped unexpectedly; restarting it ({restarts[name]} of "
                f"{MAX_RESTARTS}); see {process.config.log_path}.",
                file=sys.stderr,
                flush=True,
            )
            process.start()
        time.sleep(0.5)


def start_watchers(federation: LocalFederation, stop: threading.Event) -> list[threading.Thread]:
    """One `datasites watch` loop per hospital, in this process, until `stop` is set."""
    from datasites.cli.report import watch
    from datasites.cli.terminal import printable
    from datasites.governance.operator import Operator

    threads = []
    for config in federation.configs:
        op = Operator.open(federation.settings.data_dir, config.name, name="watch")

        def run(op: Operator = op, name: str = config.name) -> None:
            from datasites.governance.watch import watch as loop

            watch(op, name, interval=2.0, once=True)  # prints the policy hint once
            loop(op, stop=stop, report=lambda d: print(printable(d.line(name)), flush=True))

        thread = threading.Thread(target=run, name=f"watch-{config.name}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def run_demo(federation: LocalFederation) -> None:
    """Play the scientist and, for each request, every hospital's operator."""
    from datasites.governance.operator import Operator
    from scientist.demo import explore, run_studies
    from scientist.federation import Federation

    data_dir = federation.settings.data_dir
    operators = {c.name: Operator.open(data_dir, c.name) for c in federation.configs}

    def approve(study: object) -> None:
        for hospital, request_id in study.requests.items():  # type: ignore[attr-defined]
            print("  " + operators[hospital].approve_line(request_id))

    fed = Federation.connect(data_dir)
    explore(fed, data_dir)
    run_studies(fed, data_dir, approve)


def main(argv: list[str] | None = None) -> int:
    # Both stop the launch, also when started in the background: a non-interactive shell
    # starts background jobs with SIGINT ignored, and Python then installs no handler.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    federation = None
    stop_watchers = threading.Event()
    try:
        settings, demo, auto_approve = parse_args(argv)
        federation = LocalFederation(settings)
        print(f"preparing {settings.hospitals} hospitals in {settings.data_dir} ...")
        federation.prepare()
        federation.start()
        print_table(federation)
        print(
            f"ready: {settings.hospitals} hospitals; federation file "
            f"{settings.data_dir / 'federation.json'}",
            flush=True,
        )
        if auto_approve:
            start_watchers(federation, stop_watchers)
        if demo:
            run_demo(federation)
            return 0
        return serve(federation)
    except (LaunchError, DataFormatError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DatasiteStartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_watchers.set()
        if federation is not None and federation.processes:
            print("stopping datasites ...", flush=True)
            federation.stop()
            print("stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
