"""Every size of the packet format, derived once (Nym's `sphinx-packet` 0.6.0, header version 259).

The crate's constants.rs is the model: each size is named once, and the ones built from others are
computed here, not restated. The symbols in the comments are the Sphinx paper's (α, β, γ, δ, κ).
csrc/sphinx.h restates the few the C core needs; tests/test_sphinx_layout.py holds the two together.
"""

from __future__ import annotations

from typing import Final

# --- primitives ----------------------------------------------------------------------------------

KEY_SIZE: Final = 32
"""An X25519 key (secret or public), and α, the group element at the front of the header."""
SECURITY_PARAMETER: Final = 16
"""κ in bytes: the MAC length and the zero prefix of the payload."""
MAC_SIZE: Final = SECURITY_PARAMETER
"""γ, the header MAC (HMAC-SHA256 truncated to κ)."""
AES_KEY_SIZE: Final = 16
"""AES-128-CTR key of one hop's routing-info stream."""

# --- addresses and per-hop routing info ----------------------------------------------------------

MAX_PATH_LENGTH: Final = 5
"""Hops a header has room for (the crate's MAX_PATH_LENGTH)."""
NODE_ADDRESS_SIZE: Final = 32
"""A mix's address inside β (loopix puts an encoded host:port there, see wire/address.py)."""
DESTINATION_SIZE: Final = 32
"""The final hop's destination address (a client's X25519 key in loopix)."""
IDENTIFIER_SIZE: Final = 16
"""The final hop's SURB identifier."""
DELAY_SIZE: Final = 8
"""A hop's delay: u64 big-endian nanoseconds."""
FLAG_SIZE: Final = 1
VERSION_SIZE: Final = 3
HOP_SLOT_SIZE: Final = FLAG_SIZE + VERSION_SIZE + NODE_ADDRESS_SIZE + DELAY_SIZE + MAC_SIZE
"""One hop's slot in β: flag ‖ version ‖ address ‖ delay ‖ next γ = 60."""
ROUTING_INFO_SIZE: Final = HOP_SLOT_SIZE * MAX_PATH_LENGTH
"""β = 300."""
KEYSTREAM_SIZE: Final = ROUTING_INFO_SIZE + HOP_SLOT_SIZE
"""AES keystream per hop: β plus the slot shifted in = 360."""
FINAL_META_SIZE: Final = FLAG_SIZE + VERSION_SIZE + DESTINATION_SIZE + IDENTIFIER_SIZE
"""The final hop's plaintext before its padding = 52."""

# --- header and payload --------------------------------------------------------------------------

HEADER_SIZE: Final = KEY_SIZE + MAC_SIZE + ROUTING_INFO_SIZE
"""α ‖ γ ‖ β = 348."""
PAYLOAD_OVERHEAD: Final = SECURITY_PARAMETER + 1
"""δ's padding: κ zero bytes in front of the message, the 0x01 end marker after it = 17."""

# --- key derivation ------------------------------------------------------------------------------

EXPANDED_SECRET_SIZE: Final = 288
"""HKDF output per hop: AES key [0,16), MAC key [16,32), payload-key seed [32,48) (the legacy
payload key [32,224)), blinding factor [224,256), replay tag [256,288)."""
PAYLOAD_KEY_SIZE: Final = 192
"""LIONESS key: k1 32 ‖ k2 64 ‖ k3 32 ‖ k4 64."""
REPLAY_TAG_SIZE: Final = 32
"""The last 32 bytes of the expanded secret, what a node remembers to refuse replays."""

# --- packet sizes (Nym's PacketSize tags) --------------------------------------------------------

PAYLOAD_SIZES: Final = (21, 2048, 8192, 16384, 32768)
"""Largest message of each packet size: Ack, Regular, Extended8, Extended16, Extended32."""
PACKET_SIZES: Final = {p: HEADER_SIZE + PAYLOAD_OVERHEAD + p for p in PAYLOAD_SIZES}
"""payload_size -> whole packet length."""
PAYLOAD_SIZE_FOR_PACKET: Final = {v: k for k, v in PACKET_SIZES.items()}
"""whole packet length -> payload_size."""
LARGEST_PACKET_SIZE: Final = max(PACKET_SIZES.values())
"""Extended32 = 33133."""

# --- routing flags and versions ------------------------------------------------------------------

FORWARD_HOP: Final = 1
FINAL_HOP: Final = 2
VERSION: Final = 259
VERSION_LEGACY_EXPLICIT_KEYS: Final = 258
VERSION_BYTES: Final = bytes([0, VERSION >> 8, VERSION & 0xFF])

# --- loopix conventions (not the crate's) --------------------------------------------------------

DROP_COVER_DESTINATION: Final = bytes(DESTINATION_SIZE)
"""The destination of drop cover: a provider discards a final message addressed to all zeros."""

assert sorted(PACKET_SIZES.values()) == [386, 2413, 8557, 16749, 33133]
assert HEADER_SIZE == 348 and HOP_SLOT_SIZE == 60 and FINAL_META_SIZE == 52
