"""LDAPv3 messages (RFC 4511 section 4) over TCP port 389."""

from __future__ import annotations

from engine.simulate.protocols import ber

LDAP_PORT = 389
SUCCESS = 0
INVALID_CREDENTIALS = 49


def _message(message_id: int, operation: bytes) -> bytes:
    return ber.sequence(ber.integer(message_id), operation)


def simple_bind(message_id: int, dn: str, password: str) -> bytes:
    """BindRequest with simple authentication: the password travels in cleartext."""
    return _message(message_id, ber.application(0, ber.integer(3) + ber.octets(dn)
                                                + ber.tlv(0x80, password.encode())))


def bind_response(message_id: int, result: int = SUCCESS) -> bytes:
    return _message(message_id, ber.application(1, ber.enumerated(result) + ber.octets("") + ber.octets("")))


def search_request(message_id: int, base: str, attribute: str, value: str, attributes: list[str]) -> bytes:
    equality = ber.tlv(0xA3, ber.octets(attribute) + ber.octets(value))
    return _message(message_id, ber.application(3, (
        ber.octets(base) + ber.enumerated(2) + ber.enumerated(0) + ber.integer(0) + ber.integer(0)
        + ber.boolean(False) + equality + ber.sequence(*(ber.octets(a) for a in attributes)))))


def search_entry(message_id: int, dn: str, attributes: dict[str, list[str]]) -> bytes:
    partials = [ber.sequence(ber.octets(name), ber.set_of(*(ber.octets(v) for v in values)))
                for name, values in attributes.items()]
    return _message(message_id, ber.application(4, ber.octets(dn) + ber.sequence(*partials)))


def search_done(message_id: int) -> bytes:
    return _message(message_id, ber.application(5, ber.enumerated(SUCCESS) + ber.octets("") + ber.octets("")))


def unbind(message_id: int) -> bytes:
    return _message(message_id, ber.application(2, b"", constructed=False))
