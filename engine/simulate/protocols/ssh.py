"""SSH-2 transport (RFC 4253): version banners, KEXINIT, curve25519 key exchange, NEWKEYS.

After NEWKEYS every packet is encrypted, so the builder sends random bytes
of typical sizes for authentication and the session.
"""

from __future__ import annotations

import struct

import numpy as np

SSH_PORT = 22
KEX_ALGORITHMS = "curve25519-sha256,ecdh-sha2-nistp256,diffie-hellman-group14-sha256"
HOST_KEY_ALGORITHMS = "ssh-ed25519,rsa-sha2-512,rsa-sha2-256"
CIPHERS = "chacha20-poly1305@openssh.com,aes128-ctr,aes256-gcm@openssh.com"
MACS = "umac-64-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-256"
COMPRESSION = "none,zlib@openssh.com"


def _string(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(raw)) + raw


def binary_packet(rng: np.random.Generator, payload: bytes) -> bytes:
    """Unencrypted binary packet: length, padding length, payload, random padding (RFC 4253 section 6)."""
    padding = 8 - (len(payload) + 5) % 8
    if padding < 4:
        padding += 8
    return struct.pack(">IB", len(payload) + padding + 1, padding) + payload + rng.bytes(padding)


def kexinit(rng: np.random.Generator) -> bytes:
    payload = bytes([20]) + rng.bytes(16)
    for names in (KEX_ALGORITHMS, HOST_KEY_ALGORITHMS, CIPHERS, CIPHERS, MACS, MACS,
                  COMPRESSION, COMPRESSION, "", ""):
        payload += _string(names)
    payload += b"\x00" + bytes(4)  # first_kex_packet_follows, reserved
    return binary_packet(rng, payload)


def ecdh_init(rng: np.random.Generator) -> bytes:
    return binary_packet(rng, bytes([30]) + _string(rng.bytes(32)))


def ecdh_reply(rng: np.random.Generator) -> bytes:
    host_key = _string("ssh-ed25519") + _string(rng.bytes(32))
    signature = _string("ssh-ed25519") + _string(rng.bytes(64))
    return binary_packet(rng, bytes([31]) + _string(host_key) + _string(rng.bytes(32)) + _string(signature))


def newkeys(rng: np.random.Generator) -> bytes:
    return binary_packet(rng, bytes([21]))


def encrypted(rng: np.random.Generator, length: int) -> bytes:
    # chacha20-poly1305: 4-byte encrypted length, payload, 16-byte tag; sizes are multiples of 8.
    body = max(8, (length + 7) // 8 * 8)
    return rng.bytes(4 + body + 16)
