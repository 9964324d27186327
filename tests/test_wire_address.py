"""NymNodeRoutingAddress encoding and "ip:port" host parsing."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopix.wire.address import (
    MAX_UNPADDED_LEN,
    NODE_ADDRESS_LENGTH,
    AddressError,
    decode_node_address,
    encode_node_address,
    encode_node_address_unpadded,
    format_host,
    parse_host,
    zero_pad,
)

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


def test_ipv4_layout():
    addr = encode_node_address("127.0.0.1", 1789)
    assert len(addr) == NODE_ADDRESS_LENGTH
    assert addr[:7] == bytes([4, 0x06, 0xFD, 127, 0, 0, 1])
    assert addr[7:] == bytes(25)
    assert encode_node_address_unpadded("127.0.0.1", 1789) == addr[:7]


def test_ipv6_layout():
    unpadded = encode_node_address_unpadded("::1", 443)
    assert len(unpadded) == MAX_UNPADDED_LEN
    assert unpadded == bytes([6, 0x01, 0xBB]) + bytes(15) + b"\x01"
    assert encode_node_address("::1", 443) == unpadded + bytes(13)


@settings(deadline=None)
@given(st.one_of(v4, v6), ports)
def test_round_trip(ip, port):
    assert decode_node_address(encode_node_address(ip, port)) == (ip, port)
    assert decode_node_address(encode_node_address_unpadded(ip, port)) == (ip, port)


@settings(deadline=None)
@given(v4, ports, st.binary(max_size=40))
def test_trailing_bytes_are_ignored(ip, port, tail):
    assert decode_node_address(encode_node_address_unpadded(ip, port) + tail) == (ip, port)


def test_surb_ack_padding():
    assert zero_pad(encode_node_address_unpadded("::1", 1), 19) == encode_node_address_unpadded(
        "::1", 1
    )
    assert len(zero_pad(encode_node_address_unpadded("1.2.3.4", 1), 19)) == 19
    with pytest.raises(AddressError):
        zero_pad(bytes(20), 19)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x04\x00\x01\x7f\x00\x00", "too short"),
        (b"\x06" + bytes(17), "too short"),
        (b"\x05" + bytes(31), "IP version"),
        (bytes(32), "IP version"),
    ],
)
def test_decode_errors(data, message):
    with pytest.raises(AddressError, match=message):
        decode_node_address(data)


@pytest.mark.parametrize(
    ("ip", "port"), [("1.2.3", 1), ("example.com", 1), ("1.2.3.4", -1), ("1.2.3.4", 65536)]
)
def test_encode_errors(ip, port):
    with pytest.raises(AddressError):
        encode_node_address(ip, port)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:1789", ("127.0.0.1", 1789)),
        ("[::1]:80", ("::1", 80)),
        ("[2a0a:e5c0:2:2:0:c8ff:fe68:bf6b]:1789", ("2a0a:e5c0:2:2:0:c8ff:fe68:bf6b", 1789)),
        ("[0:0:0:0:0:0:0:1]:65535", ("::1", 65535)),
    ],
)
def test_parse_host(host, expected):
    assert parse_host(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "",
        "127.0.0.1",
        ":1789",
        "localhost:1789",
        "::1:80",
        "[::1]80",
        "[::1:80",
        "[127.0.0.1]:80",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:-1",
        "1.2.3.4: 80",
        "1.2.3.4:８０",
        "[fe80::1%eth0]:80",
        "300.1.1.1:80",
    ],
)
def test_parse_host_rejects(host):
    with pytest.raises(AddressError, match="bad host"):
        parse_host(host)


def test_parse_host_rejects_non_string():
    with pytest.raises(AddressError):
        parse_host(1789)  # type: ignore[arg-type]


@settings(deadline=None)
@given(st.one_of(v4, v6), st.integers(1, 65535))
def test_format_parse_round_trip(ip, port):
    assert parse_host(format_host(ip, port)) == (str(ipaddress.ip_address(ip)), port)
