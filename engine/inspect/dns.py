"""DNS message parser (RFC 1035 section 4) for UDP datagrams and TCP streams.

Both stream kinds arrive as 2-byte big-endian length-prefixed messages: TCP
carries that prefix on the wire (RFC 1035 section 4.2.2), and the stream
table adds it in front of each stored UDP datagram.
"""

from __future__ import annotations

from engine.inspect.wire import HOST_WIDTH, MAX_ITEMS, Malformed, Reader, Truncated, clean_text

MAX_NAME_LENGTH = 255  # RFC 1035 section 2.3.4
MAX_POINTER_JUMPS = 32
MAX_DNS_MESSAGES = 64
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
QTYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 35: "NAPTR", 43: "DS", 46: "RRSIG", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS",
    255: "ANY",
}


def read_name(message: bytes, position: int) -> tuple[str, int]:
    """Read a possibly compressed name; return (name, position after it)."""
    labels = []
    total = 0
    jumps = 0
    end = None
    while True:
        if position >= len(message):
            raise Truncated("DNS name runs past the message")
        length = message[position]
        if length & 0xC0 == 0xC0:
            if position + 1 >= len(message):
                raise Truncated("DNS compression pointer cut")
            if end is None:
                end = position + 2
            jumps += 1
            if jumps > MAX_POINTER_JUMPS:
                raise Malformed("DNS compression pointer loop")
            position = ((length & 0x3F) << 8) | message[position + 1]
            continue
        if length & 0xC0:
            raise Malformed(f"DNS label type {length >> 6} is not supported")
        if length == 0:
            position += 1
            break
        label = message[position + 1 : position + 1 + length]
        if len(label) < length:
            raise Truncated("DNS label cut")
        total += length + 1
        if total > MAX_NAME_LENGTH:
            raise Malformed("DNS name longer than 255 bytes")
        labels.append(label)
        position += 1 + length
    name = b".".join(labels)
    return clean_text(name, HOST_WIDTH), end if end is not None else position


def parse_dns_message(message: bytes) -> dict:
    """Return the header, first question and answer count of one message."""
    reader = Reader(message)
    transaction_id = reader.u16()
    flags = reader.u16()
    question_count = reader.u16()
    answer_count = reader.u16()
    reader.skip(4)
    record = {
        "id": transaction_id,
        "response": bool(flags & 0x8000),
        "opcode": (flags >> 11) & 0xF,
        "rcode": RCODE_NAMES.get(flags & 0xF, str(flags & 0xF)),
        "answers": answer_count,
        "size": len(message),
        "name": "",
        "qtype": "",
    }
    if question_count:
        name, position = read_name(message, reader.position)
        reader.position = position
        qtype = reader.u16()
        reader.skip(2)
        record["name"] = name
        record["qtype"] = QTYPE_NAMES.get(qtype, str(qtype))
    return record


def parse_dns(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with query names, types, response codes and response sizes."""
    fields.setdefault("queries", [])
    fields.setdefault("responses", [])
    fields.setdefault("names", [])
    fields["query_count"] = 0
    fields["response_count"] = 0
    fields["max_name_length"] = 0
    truncated = False
    for stream in (initiator, responder):
        reader = Reader(stream)
        messages = 0
        while reader.remaining and messages < MAX_DNS_MESSAGES:
            messages += 1
            length = reader.u16()
            if length > reader.remaining:
                truncated = True
                break
            try:
                record = parse_dns_message(reader.take(length))
            except Truncated:
                truncated = True
                continue
            target = "responses" if record["response"] else "queries"
            fields["response_count" if record["response"] else "query_count"] += 1
            fields["max_name_length"] = max(fields["max_name_length"], len(record["name"]))
            if len(fields[target]) < MAX_ITEMS:
                fields[target].append(record)
            if record["name"] and record["name"] not in fields["names"] and len(fields["names"]) < MAX_ITEMS:
                fields["names"].append(record["name"])
    if truncated:
        raise Truncated("DNS message cut by the capture")
