"""Protocol detection by content, with well-known ports only as a tie-breaker.

Each check looks at the first bytes of the two captured streams. The order
matters where two protocols could both match: binary framings with magic
values come first, then text protocols, then the server-greeting protocols
that only a port can tell apart.
"""

from __future__ import annotations

from engine.inspect import asn1, clinical, dns, smb, textproto, tls

IP_PROTO_TCP = 6
IP_PROTO_UDP = 17

PORT_HINTS = {
    21: "ftp", 23: "telnet", 25: "smtp", 53: "dns", 88: "kerberos", 104: "dicom",
    110: "pop3", 143: "imap", 389: "ldap", 445: "smb", 139: "smb", 587: "smtp",
    1883: "mqtt", 2575: "hl7", 3389: "rdp", 11112: "dicom", 22: "ssh", 80: "http",
    443: "tls", 8883: "tls", 636: "tls",
}
FTP_CLIENT_VERBS = (b"USER", b"PASS", b"AUTH", b"FEAT", b"SYST", b"ANON")
SMTP_CLIENT_VERBS = (b"EHLO", b"HELO", b"MAIL", b"STARTTLS")


def _first_datagram(stream: bytes) -> bytes:
    if len(stream) < 2:
        return b""
    length = int.from_bytes(stream[:2], "big")
    return stream[2 : 2 + length]


def _is_dns_message(message: bytes) -> bool:
    if len(message) < 17:
        return False
    flags = int.from_bytes(message[2:4], "big")
    question_count = int.from_bytes(message[4:6], "big")
    if question_count != 1 or (flags >> 11) & 0xF > 6:
        return False
    try:
        name, position = dns.read_name(message, 12)
    except (dns.Truncated, dns.Malformed):
        return False
    return position + 4 <= len(message)


def detect_protocol(initiator: bytes, responder: bytes, ip_proto: int,
                    initiator_port: int, responder_port: int) -> str:
    """Return the application protocol name of a flow, or "" when none matches."""
    hint = PORT_HINTS.get(responder_port) or PORT_HINTS.get(initiator_port, "")
    if ip_proto == IP_PROTO_UDP:
        first = _first_datagram(initiator) or _first_datagram(responder)
        if _is_dns_message(first):
            return "dns"
        if asn1.looks_like_kerberos(initiator, is_udp=True):
            return "kerberos"
        return ""
    if ip_proto != IP_PROTO_TCP or not (initiator or responder):
        return ""
    if tls.looks_like_tls(initiator) or tls.looks_like_tls(responder):
        return "tls"
    if clinical.looks_like_hl7(initiator) or clinical.looks_like_hl7(responder):
        return "hl7"
    if clinical.looks_like_dicom(initiator) or clinical.looks_like_dicom(responder):
        return "dicom"
    if clinical.looks_like_mqtt(initiator):
        return "mqtt"
    if smb.looks_like_smb(initiator) or smb.looks_like_smb(responder):
        return "smb"
    if smb.looks_like_rdp(initiator):
        return "rdp"
    if asn1.looks_like_kerberos(initiator, is_udp=False):
        return "kerberos"
    if asn1.looks_like_ldap(initiator) or asn1.looks_like_ldap(responder):
        return "ldap"
    if hint == "dns" and _is_dns_message(initiator[2:]):
        return "dns"
    if textproto.looks_like_http(initiator, responder):
        return "http"
    if initiator.startswith(b"SSH-") or responder.startswith(b"SSH-"):
        return "ssh"
    if textproto.looks_like_telnet(initiator, responder):
        return "telnet"
    if responder.startswith(b"220"):
        verb = initiator[:4].upper()
        if verb in SMTP_CLIENT_VERBS or hint == "smtp":
            return "smtp"
        if verb in FTP_CLIENT_VERBS or hint == "ftp":
            return "ftp"
        return hint if hint in ("ftp", "smtp") else "ftp"
    if responder.startswith(b"+OK"):
        return "pop3"
    if responder.startswith(b"* OK"):
        return "imap"
    if hint == "telnet":
        return "telnet"
    return ""
