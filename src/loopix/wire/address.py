"""Node addresses: "ip:port" host strings and Nym's 32-byte Sphinx node address.

Sphinx routing info carries the next hop as a fixed 32-byte field. Nym fills it with
`version(1) || port(2, big-endian) || ip octets` and zero padding (NymNodeRoutingAddress), so a
mixnode that unwraps a packet learns where to forward it without any lookup. We use the same layout,
so our packets route through Nym-compatible nodes and theirs through ours.
"""

from __future__ import annotations

import ipaddress

from loopix.sphinx.constants import NODE_ADDRESS_SIZE

__all__ = [
    "MAX_UNPADDED_LEN",
    "NODE_ADDRESS_LENGTH",
    "AddressError",
    "decode_node_address",
    "encode_node_address",
    "encode_node_address_unpadded",
    "format_host",
    "parse_host",
    "zero_pad",
]

NODE_ADDRESS_LENGTH = NODE_ADDRESS_SIZE
"""Size of the Sphinx node-address field (the packet format's NODE_ADDRESS_SIZE)."""
MAX_UNPADDED_LEN = 19
"""1 + 2 + 16: the unpadded form of an IPv6 address (IPv4 takes 7)."""

_V4 = 4
_V6 = 6


class AddressError(ValueError):
    """Raised for a host string or node address that cannot be parsed or encoded."""


def parse_host(host: str) -> tuple[str, int]:
    """Split "ip:port" or "[v6]:port" into a normalised IP string and a port in 1..65535.

    Only IP literals are accepted: a Sphinx node address has room for octets, not names.
    """
    if not isinstance(host, str):
        raise AddressError(f"host must be a string, got {type(host).__name__}")
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or host[end + 1 : end + 2] != ":":
            raise AddressError(f"bad host {host!r}: expected '[ipv6]:port'")
        ip_text, port_text = host[1:end], host[end + 2 :]
        want_v6 = True
    else:
        ip_text, sep, port_text = host.rpartition(":")
        if not sep or not ip_text:
            raise AddressError(f"bad host {host!r}: expected 'ip:port'")
        if ":" in ip_text:
            raise AddressError(f"bad host {host!r}: write IPv6 hosts as '[ipv6]:port'")
        want_v6 = False
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError:
        raise AddressError(f"bad host {host!r}: {ip_text!r} is not an IP address") from None
    if getattr(ip, "scope_id", None):
        raise AddressError(f"bad host {host!r}: IPv6 zone ids cannot be carried in a node address")
    if (ip.version == _V6) != want_v6:
        raise AddressError(f"bad host {host!r}: IPv4 addresses are not written in brackets")
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise AddressError(f"bad host {host!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise AddressError(f"bad host {host!r}: port {port} is out of range 1..65535")
    return str(ip), port


def format_host(ip: str, port: int) -> str:
    """The inverse of `parse_host`: "ip:port", or "[v6]:port" for IPv6."""
    addr = ipaddress.ip_address(ip)
    return f"[{addr}]:{port}" if addr.version == _V6 else f"{addr}:{port}"


def encode_node_address_unpadded(ip: str, port: int) -> bytes:
    """`version || port || octets`: 7 bytes for IPv4, 19 for IPv6 (Nym's `as_bytes`)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise AddressError(f"{ip!r} is not an IP address") from None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise AddressError(f"port {port!r} is out of range 0..65535")
    return bytes((addr.version,)) + port.to_bytes(2, "big") + addr.packed


def zero_pad(unpadded: bytes, length: int = NODE_ADDRESS_LENGTH) -> bytes:
    """Pad an address with zeros (32 for Sphinx headers, 19 inside SURB-acks)."""
    if len(unpadded) > length:
        raise AddressError(f"address of {len(unpadded)} bytes does not fit in {length}")
    return unpadded + bytes(length - len(unpadded))


def encode_node_address(ip: str, port: int) -> bytes:
    """The 32-byte Sphinx node address for `ip`, `port` (use `parse_host` for "ip:port")."""
    return zero_pad(encode_node_address_unpadded(ip, port))


def decode_node_address(data: bytes | bytearray | memoryview) -> tuple[str, int]:
    """Read `(ip, port)` from a padded or unpadded node address; trailing bytes are ignored."""
    data = bytes(data)
    if not data:
        raise AddressError("empty node address")
    version = data[0]
    if version == _V4:
        need = 7
    elif version == _V6:
        need = 19
    else:
        raise AddressError(f"invalid IP version byte {version} in node address (want 4 or 6)")
    if len(data) < need:
        raise AddressError(f"node address too short: {len(data)} bytes, IPv{version} needs {need}")
    port = int.from_bytes(data[1:3], "big")
    ip = ipaddress.ip_address(data[3:need])
    return str(ip), port
