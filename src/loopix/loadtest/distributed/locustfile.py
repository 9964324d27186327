"""The locustfile shipped with loopix: `locust -f $(python -m loopix.loadtest.distributed
locustfile) --master ...` / `--worker ...`, or through `python -m loopix.loadtest.distributed`.

Locust users are not the load: run with `-u 0`. The load is the identities of each worker's share,
driven open loop by the loopix runtime in a child process. The master hands out the shares when
the test starts, merges what the workers' children ship, writes the loopix report, applies the
thresholds to the exit code and then stops Locust. Its web UI gains a "loopix" tab (merged exact
percentiles, per-worker rates and lateness) and /loopix.json.
"""

from __future__ import annotations

import sys

from locust import User, constant, events, task
from locust.runners import MasterRunner, WorkerRunner

from loopix.loadtest.distributed.master_side import MasterSide
from loopix.loadtest.distributed.runtime import EXIT_NOT_STARTED
from loopix.loadtest.distributed.worker_side import WorkerSide


class LoopixIdentities(User):
    """A placeholder Locust requires; spawn none (-u 0): the identities are the load."""

    wait_time = constant(3600)

    @task
    def idle(self) -> None:
        """Nothing: a Locust user has no part in the load."""


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    g = parser.add_argument_group("loopix", "the distributed loopix load (master side)")
    g.add_argument("--loopix-identities", type=int, default=100, help="identities over all workers")
    g.add_argument("--loopix-duration", type=float, default=60.0, help="seconds of load")
    g.add_argument("--loopix-directory", default="", help="the network's topology URL")
    g.add_argument("--loopix-payload-rate", type=float, default=2.0)
    g.add_argument("--loopix-loop-rate", type=float, default=1.0)
    g.add_argument("--loopix-drop-rate", type=float, default=1.0)
    g.add_argument("--loopix-mean-hop-delay-ms", type=float, default=20.0)
    g.add_argument("--loopix-packet-workers", type=int, default=0, help="per machine (0: cores)")
    g.add_argument("--loopix-grace", type=float, default=None)
    g.add_argument("--loopix-threshold", action="append", default=[])
    g.add_argument("--loopix-out", default="", help="write the loopix report here")
    g.add_argument("--loopix-event-budget", type=float, default=100.0,
                   help="Locust request events per second per worker, at most (sampled)")
    g.add_argument("--loopix-expect-timeout", type=float, default=60.0,
                   help="seconds to wait for --expect-workers workers")


@events.init.add_listener
def _on_init(environment, **_) -> None:
    if isinstance(environment.runner, WorkerRunner):
        environment.loopix = WorkerSide(environment)
    elif isinstance(environment.runner, MasterRunner):
        environment.loopix = MasterSide(environment)
    else:
        print("loopix: this locustfile runs distributed only (--master, or --worker)", file=sys.stderr)
        sys.exit(EXIT_NOT_STARTED)

