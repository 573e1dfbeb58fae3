"""Cleartext protocols: DNS and NTP (built with dpkt), HTTP/1.1, FTP and Telnet."""

from __future__ import annotations

import struct

import dpkt

DNS_PORT = 53
NTP_PORT = 123
HTTP_PORT = 80
HTTPS_PORT = 443
FTP_PORT = 21
TELNET_PORT = 23

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


def dns_query(query_id: int, name: str, qtype: int = dpkt.dns.DNS_A) -> bytes:
    message = dpkt.dns.DNS(id=query_id, op=dpkt.dns.DNS_RD)
    message.qd = [dpkt.dns.DNS.Q(name=name, type=qtype)]
    return bytes(message)


def dns_response(query_id: int, name: str, addresses: list[str], qtype: int = dpkt.dns.DNS_A,
                 ttl: int = 300, txt: list[bytes] | None = None, rcode: int = dpkt.dns.DNS_RCODE_NOERR) -> bytes:
    """Build the response to dns_query(): A records for `addresses`, or TXT records for `txt`."""
    message = dpkt.dns.DNS(id=query_id, op=dpkt.dns.DNS_RD | dpkt.dns.DNS_RA, rcode=rcode)
    message.qr = dpkt.dns.DNS_R
    message.qd = [dpkt.dns.DNS.Q(name=name, type=qtype)]
    answers = []
    for address in addresses:
        answers.append(dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_A, ttl=ttl,
                                       rdata=bytes(int(x) for x in address.split("."))))
    for text in txt or []:
        answers.append(dpkt.dns.DNS.RR(name=name, type=dpkt.dns.DNS_TXT, ttl=0,
                                       rdata=bytes([len(text)]) + text))
    message.an = answers
    return bytes(message)


def _ntp_timestamp(epoch: float) -> int:
    seconds = int(epoch) + NTP_EPOCH_OFFSET
    fraction = int((epoch % 1.0) * 2**32) & 0xFFFFFFFF
    return (seconds << 32) | fraction


def ntp_request(epoch: float) -> bytes:
    """NTPv4 client request (mode 3)."""
    return struct.pack(">BBbbII4sQQQQ", (0 << 6) | (4 << 3) | 3, 0, 6, -20, 0, 0, b"\0\0\0\0",
                       0, 0, 0, _ntp_timestamp(epoch))


def ntp_response(request_epoch: float, epoch: float) -> bytes:
    """NTPv4 server reply (mode 4, stratum 1, reference "GPS")."""
    return struct.pack(">BBbbII4sQQQQ", (0 << 6) | (4 << 3) | 4, 1, 6, -20, 0, 20, b"GPS\0",
                       _ntp_timestamp(epoch - 16), _ntp_timestamp(request_epoch),
                       _ntp_timestamp(epoch - 0.0001), _ntp_timestamp(epoch))


def http_request(method: str, host: str, path: str, body: bytes = b"", user_agent: str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
                 content_type: str = "application/json", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\n{extra}"
    if body:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("ascii") + body


def http_response(status: int, reason: str, body: bytes, content_type: str = "text/html") -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\nServer: nginx\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


def ftp_line(text: str) -> bytes:
    return (text + "\r\n").encode("ascii")


def telnet_line(text: str) -> bytes:
    return (text + "\r\n").encode("ascii")


# Telnet option negotiation at connection start (RFC 854/857/858/1091).
TELNET_SERVER_OPTIONS = bytes([255, 251, 1, 255, 251, 3, 255, 253, 24])  # WILL ECHO, WILL SGA, DO TTYPE
TELNET_CLIENT_OPTIONS = bytes([255, 253, 1, 255, 253, 3, 255, 252, 24])  # DO ECHO, DO SGA, WONT TTYPE
