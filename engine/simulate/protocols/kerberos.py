"""Kerberos 5 messages (RFC 4120 section 5) over UDP port 88.

Ciphertexts are random bytes of typical lengths: a sensor cannot decrypt
them anyway, and the cleartext fields (principal names, realm, error code)
are what detection looks at.
"""

from __future__ import annotations

import time

import numpy as np

from engine.simulate.protocols import ber

KERBEROS_PORT = 88
ETYPE_AES256 = 18
ETYPE_AES128 = 17
ETYPE_RC4 = 23
NT_PRINCIPAL = 1
NT_SRV_INST = 2
KDC_ERR_C_PRINCIPAL_UNKNOWN = 6
KDC_ERR_PREAUTH_FAILED = 24
KDC_ERR_PREAUTH_REQUIRED = 25


def kerberos_time(epoch: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(epoch))


def principal(name_type: int, *components: str) -> bytes:
    return ber.sequence(ber.context(0, ber.integer(name_type)),
                        ber.context(1, ber.sequence(*(ber.general_string(c) for c in components))))


def encrypted_data(rng: np.random.Generator, etype: int, size: int, kvno: int | None = None) -> bytes:
    parts = [ber.context(0, ber.integer(etype))]
    if kvno is not None:
        parts.append(ber.context(1, ber.integer(kvno)))
    parts.append(ber.context(2, ber.octets(rng.bytes(size))))
    return ber.sequence(*parts)


def _req_body(rng, realm: str, cname: bytes | None, sname: bytes, epoch: float) -> bytes:
    parts = [ber.context(0, ber.bit_string(b"\x40\x81\x00\x10"))]  # forwardable, renewable, canonicalize, renewable-ok
    if cname is not None:
        parts.append(ber.context(1, cname))
    parts += [
        ber.context(2, ber.general_string(realm)),
        ber.context(3, sname),
        ber.context(5, ber.generalized_time(kerberos_time(epoch + 36000))),
        ber.context(7, ber.integer(int(rng.integers(1, 2**31)))),
        ber.context(8, ber.sequence(ber.integer(ETYPE_AES256), ber.integer(ETYPE_AES128), ber.integer(ETYPE_RC4))),
    ]
    return ber.sequence(*parts)


def as_req(rng: np.random.Generator, realm: str, user: str, epoch: float, with_preauth: bool) -> bytes:
    """AS-REQ for krbtgt/REALM; with_preauth adds an encrypted-timestamp PA-DATA."""
    parts = [ber.context(1, ber.integer(5)), ber.context(2, ber.integer(10))]
    if with_preauth:
        timestamp = encrypted_data(rng, ETYPE_AES256, 56)
        parts.append(ber.context(3, ber.sequence(ber.sequence(
            ber.context(1, ber.integer(2)), ber.context(2, ber.octets(timestamp))))))
    parts.append(ber.context(4, _req_body(rng, realm, principal(NT_PRINCIPAL, user),
                                          principal(NT_SRV_INST, "krbtgt", realm), epoch)))
    return ber.application(10, ber.sequence(*parts))


def _ticket(rng, realm: str, sname: bytes) -> bytes:
    return ber.application(1, ber.sequence(
        ber.context(0, ber.integer(5)), ber.context(1, ber.general_string(realm)),
        ber.context(2, sname), ber.context(3, encrypted_data(rng, ETYPE_AES256, 960, kvno=2))))


def as_rep(rng: np.random.Generator, realm: str, user: str) -> bytes:
    return ber.application(11, ber.sequence(
        ber.context(0, ber.integer(5)), ber.context(1, ber.integer(11)),
        ber.context(3, ber.general_string(realm)), ber.context(4, principal(NT_PRINCIPAL, user)),
        ber.context(5, _ticket(rng, realm, principal(NT_SRV_INST, "krbtgt", realm))),
        ber.context(6, encrypted_data(rng, ETYPE_AES256, 300, kvno=3))))


def tgs_req(rng: np.random.Generator, realm: str, service: str, host: str, epoch: float) -> bytes:
    """TGS-REQ for service/host with the TGT in a PA-TGS-REQ AP-REQ."""
    ap_req = ber.application(14, ber.sequence(
        ber.context(0, ber.integer(5)), ber.context(1, ber.integer(14)),
        ber.context(2, ber.bit_string(b"\x00\x00\x00\x00")),
        ber.context(3, _ticket(rng, realm, principal(NT_SRV_INST, "krbtgt", realm))),
        ber.context(4, encrypted_data(rng, ETYPE_AES256, 180))))
    padata = ber.sequence(ber.sequence(ber.context(1, ber.integer(1)), ber.context(2, ber.octets(ap_req))))
    body = _req_body(rng, realm, None, principal(NT_SRV_INST, service, host), epoch)
    return ber.application(12, ber.sequence(
        ber.context(1, ber.integer(5)), ber.context(2, ber.integer(12)),
        ber.context(3, padata), ber.context(4, body)))


def tgs_rep(rng: np.random.Generator, realm: str, user: str, service: str, host: str) -> bytes:
    return ber.application(13, ber.sequence(
        ber.context(0, ber.integer(5)), ber.context(1, ber.integer(13)),
        ber.context(3, ber.general_string(realm)), ber.context(4, principal(NT_PRINCIPAL, user)),
        ber.context(5, _ticket(rng, realm, principal(NT_SRV_INST, service, host))),
        ber.context(6, encrypted_data(rng, ETYPE_AES256, 280, kvno=3))))


def krb_error(realm: str, error_code: int, epoch: float, user: str | None = None) -> bytes:
    parts = [
        ber.context(0, ber.integer(5)), ber.context(1, ber.integer(30)),
        ber.context(4, ber.generalized_time(kerberos_time(epoch))),
        ber.context(5, ber.integer(int(epoch * 1e6) % 1_000_000)),
        ber.context(6, ber.integer(error_code)),
    ]
    if user is not None:
        parts += [ber.context(7, ber.general_string(realm)), ber.context(8, principal(NT_PRINCIPAL, user))]
    parts += [ber.context(9, ber.general_string(realm)),
              ber.context(10, principal(NT_SRV_INST, "krbtgt", realm))]
    return ber.application(30, ber.sequence(*parts))
