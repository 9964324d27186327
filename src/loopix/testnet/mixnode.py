"""A mixnode of the local testnet: unwrap, reject replays, hold for the header's delay, forward.

    python -m loopix.testnet.mixnode --port 9001 --layer 1 --key-file mix1.pem \
        --directory http://127.0.0.1:9000

Its Sphinx address is `encode_node_address` of the --host/--port it listens on, so packets need no
lookup to reach it. A packet that ends at a mixnode (a `Final`) is dropped and counted: only
providers are last hops.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from loopix.testnet.node import (
    Node,
    NodeConfig,
    add_node_arguments,
    load_or_create_secret,
    node_config_from_args,
    run_node,
)

__all__ = ["MixNode", "main"]


class MixNode(Node):
    kind = "mixnode"

    def __init__(self, config: NodeConfig, secret: bytes, layer: int) -> None:
        super().__init__(config, secret)
        self.layer = layer

    def presence(self) -> tuple[str, dict[str, Any]]:
        return "/api/presence/mixnodes", {
            "host": self.host,
            "pubKey": self.public_b64,
            "layer": self.layer,
        }

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "layer": self.layer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopix.testnet.mixnode", description=__doc__)
    add_node_arguments(parser)
    parser.add_argument("--layer", type=int, required=True, help="mix layer, 1..")
    args = parser.parse_args(argv)
    if args.layer < 1:
        parser.error("--layer must be 1 or more")
    config = node_config_from_args(args)
    return run_node(
        lambda: MixNode(config, load_or_create_secret(args.key_file), args.layer), args.log_level
    )


if __name__ == "__main__":
    sys.exit(main())
