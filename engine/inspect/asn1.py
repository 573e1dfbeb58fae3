"""BER/DER reading for LDAP (RFC 4511) and Kerberos 5 (RFC 4120).

Only definite lengths are accepted: LDAP and Kerberos both require them
(RFC 4511 section 5.1, RFC 4120 section 5.1 uses DER), so an indefinite
length is reported as malformed.
"""

from __future__ import annotations

from engine.inspect.wire import HOST_WIDTH, MAX_ITEMS, NAME_WIDTH, Malformed, Reader, Truncated, clean_text


def read_tlv(reader: Reader) -> tuple[int, Reader]:
    """Read one element; return (tag byte, reader over its value).

    High tag numbers (first byte & 0x1F == 0x1F) are skipped over and
    returned as the first byte only, which no field below needs.
    """
    tag = reader.u8()
    if tag & 0x1F == 0x1F:
        for _ in range(4):
            if not reader.u8() & 0x80:
                break
        else:
            raise Malformed("BER tag number longer than 4 bytes")
    first = reader.u8()
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise Malformed("indefinite BER length")
    else:
        count = first & 0x7F
        if count > 4:
            raise Malformed(f"BER length of {count} bytes")
        length = int.from_bytes(reader.take(count), "big")
    if length > reader.remaining:
        # Return what was captured so callers can read the start of it.
        value = Reader(reader.take(reader.remaining))
        value.cut = True
        return tag, value
    return tag, reader.sub(length)


def read_integer(reader: Reader) -> int:
    """Read the value bytes of an INTEGER or ENUMERATED (two's complement)."""
    raw = reader.take(reader.remaining)
    if not raw or len(raw) > 8:
        raise Malformed(f"BER integer of {len(raw)} bytes")
    return int.from_bytes(raw, "big", signed=True)


def context_fields(reader: Reader) -> dict[int, Reader]:
    """Return {n: value reader} for the [n] context-tagged elements of a SEQUENCE body."""
    found = {}
    while reader.remaining:
        tag, value = read_tlv(reader)
        if tag & 0xC0 == 0x80:
            found[tag & 0x1F] = value
        if value.cut:
            break
    return found


def _inner(reader: Reader) -> Reader:
    """Return the value of the one element a context tag wraps."""
    return read_tlv(reader)[1]


# --- LDAP ----------------------------------------------------------------------

LDAP_RESULT_NAMES = {
    0: "success", 7: "authMethodNotSupported", 8: "strongerAuthRequired",
    14: "saslBindInProgress", 32: "noSuchObject", 48: "inappropriateAuthentication",
    49: "invalidCredentials", 50: "insufficientAccessRights", 53: "unwillingToPerform",
}
LDAP_OPERATIONS = {
    0: "bindRequest", 1: "bindResponse", 2: "unbindRequest", 3: "searchRequest",
    4: "searchResEntry", 5: "searchResDone", 6: "modifyRequest", 7: "modifyResponse",
    8: "addRequest", 9: "addResponse", 10: "delRequest", 11: "delResponse",
    19: "searchResRef", 23: "extendedReq", 24: "extendedResp",
}
MAX_LDAP_MESSAGES = 64


def looks_like_ldap(stream: bytes) -> bool:
    """Return True when a stream starts with an LDAPMessage holding a known operation."""
    if len(stream) < 7 or stream[0] != 0x30:
        return False
    try:
        _, message = read_tlv(Reader(stream))
        tag, _ = read_tlv(message)
        if tag != 0x02:
            return False
        op_tag = message.u8()
    except (Truncated, Malformed):
        return False
    return op_tag & 0xE0 in (0x60, 0x40) and (op_tag & 0x1F) in LDAP_OPERATIONS


def parse_ldap(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with bind requests, bind results and operation counts."""
    binds = fields.setdefault("binds", [])
    results = fields.setdefault("bind_results", [])
    operations = fields.setdefault("operations", {})
    truncated = False
    for stream in (initiator, responder):
        reader = Reader(stream)
        count = 0
        try:
            while reader.remaining and count < MAX_LDAP_MESSAGES:
                count += 1
                tag, message = read_tlv(reader)
                if tag != 0x30:
                    raise Malformed(f"LDAPMessage tag {tag:#04x}, expected SEQUENCE")
                _, id_reader = read_tlv(message)
                message_id = read_integer(id_reader)
                op_tag, op = read_tlv(message)
                name = LDAP_OPERATIONS.get(op_tag & 0x1F, f"op{op_tag & 0x1F}")
                operations[name] = operations.get(name, 0) + 1
                if op_tag == 0x60 and len(binds) < MAX_ITEMS:
                    read_tlv(op)  # version
                    _, dn = read_tlv(op)
                    auth_tag, auth = read_tlv(op)
                    bind = {"message_id": message_id, "bind_dn": clean_text(dn.take(dn.remaining), HOST_WIDTH)}
                    if auth_tag == 0x80:
                        # Simple bind: the value is the password, which is never read.
                        bind["auth"] = "simple"
                        bind["anonymous"] = auth.remaining == 0
                    elif auth_tag == 0xA3:
                        _, mechanism = read_tlv(auth)
                        bind["auth"] = "sasl:" + clean_text(mechanism.take(mechanism.remaining), NAME_WIDTH)
                        bind["anonymous"] = False
                    binds.append(bind)
                elif op_tag == 0x61 and len(results) < MAX_ITEMS:
                    _, code_reader = read_tlv(op)
                    code = read_integer(code_reader)
                    results.append({
                        "message_id": message_id,
                        "result_code": code,
                        "result": LDAP_RESULT_NAMES.get(code, str(code)),
                    })
                if message.cut:
                    raise Truncated("LDAP message cut by the capture")
        except Truncated:
            truncated = True
    outcome_by_id = {r["message_id"]: r["result_code"] for r in results}
    logins = []
    for bind in binds:
        if bind.get("anonymous"):
            continue
        code = outcome_by_id.get(bind["message_id"])
        if code is None or code == 14:
            # No response captured, or saslBindInProgress: the bind is not over.
            outcome = "unknown"
        elif code == 0:
            outcome = "success"
        else:
            outcome = "failure"
        logins.append((bind["bind_dn"], outcome))
    fields["_logins"] = logins
    if truncated:
        raise Truncated("LDAP message cut by the capture")


# --- Kerberos 5 ------------------------------------------------------------------

KERBEROS_MESSAGES = {0x6A: "AS-REQ", 0x6B: "AS-REP", 0x6C: "TGS-REQ", 0x6D: "TGS-REP", 0x7E: "KRB-ERROR"}
KERBEROS_ERRORS = {
    6: "KDC_ERR_C_PRINCIPAL_UNKNOWN", 7: "KDC_ERR_S_PRINCIPAL_UNKNOWN",
    12: "KDC_ERR_POLICY", 14: "KDC_ERR_ETYPE_NOSUPP", 18: "KDC_ERR_CLIENT_REVOKED",
    23: "KDC_ERR_KEY_EXPIRED", 24: "KDC_ERR_PREAUTH_FAILED", 25: "KDC_ERR_PREAUTH_REQUIRED",
    37: "KRB_AP_ERR_SKEW", 41: "KRB_AP_ERR_MODIFIED", 68: "KDC_ERR_WRONG_REALM",
}
# Errors that mean the KDC rejected the client's credentials or account.
KERBEROS_LOGIN_FAILURES = frozenset({6, 18, 23, 24})


def _principal(reader: Reader) -> str:
    _, sequence = read_tlv(reader)
    parts = context_fields(sequence)
    names = []
    if 1 in parts:
        _, strings = read_tlv(parts[1])
        while strings.remaining and len(names) < 4:
            _, value = read_tlv(strings)
            names.append(value.take(value.remaining))
    return clean_text(b"/".join(names), NAME_WIDTH)


def _string(reader: Reader) -> str:
    _, value = read_tlv(reader)
    return clean_text(value.take(value.remaining), HOST_WIDTH)


def kerberos_messages(stream: bytes, is_udp: bool) -> list[bytes]:
    """Split a stream into Kerberos messages (4-byte prefix on TCP, RFC 4120 7.2.2)."""
    reader = Reader(stream)
    messages = []
    while reader.remaining and len(messages) < MAX_ITEMS:
        length = reader.u16() if is_udp else reader.u32() & 0x7FFFFFFF
        messages.append(reader.take(min(length, reader.remaining)))
    return messages


def looks_like_kerberos(stream: bytes, is_udp: bool) -> bool:
    """Return True when a stream starts with an AS-REQ or TGS-REQ."""
    start = 2 if is_udp else 4
    return len(stream) > start + 2 and stream[start] in (0x6A, 0x6C) and stream[start + 1] & 0x80 in (0, 0x80)


def parse_kerberos(initiator: bytes, responder: bytes, fields: dict, is_udp: bool = False) -> None:
    """Fill `fields` with request principals, replies and error codes."""
    requests = fields.setdefault("requests", [])
    errors = fields.setdefault("errors", [])
    replies = fields.setdefault("replies", [])
    truncated = False
    for stream in (initiator, responder):
        for message in kerberos_messages(stream, is_udp):
            try:
                _parse_kerberos_message(message, requests, errors, replies)
            except Truncated:
                truncated = True
    logins = []
    for request in requests:
        if request["type"] != "AS-REQ" or not request["client"]:
            continue
        failed = [e for e in errors if e["error_code"] in KERBEROS_LOGIN_FAILURES]
        if failed:
            logins.append((request["client"], "failure"))
        elif any(r["type"] == "AS-REP" for r in replies):
            logins.append((request["client"], "success"))
        else:
            logins.append((request["client"], "unknown"))
    # One flow normally carries one AS exchange: report one login per client.
    fields["_logins"] = list(dict.fromkeys(logins))
    if truncated:
        raise Truncated("Kerberos message cut by the capture")


def _parse_kerberos_message(message: bytes, requests: list, errors: list, replies: list) -> None:
    reader = Reader(message)
    tag, application = read_tlv(reader)
    kind = KERBEROS_MESSAGES.get(tag)
    if kind is None:
        raise Malformed(f"Kerberos application tag {tag:#04x} is not a KDC message")
    _, sequence = read_tlv(application)
    parts = context_fields(sequence)
    if kind in ("AS-REQ", "TGS-REQ"):
        if 4 not in parts:
            raise Truncated("KDC-REQ without req-body")
        _, body_sequence = read_tlv(parts[4])
        body = context_fields(body_sequence)
        request = {
            "type": kind,
            "client": _principal(body[1]) if 1 in body else "",
            "realm": _string(body[2]) if 2 in body else "",
            "service": _principal(body[3]) if 3 in body else "",
        }
        if len(requests) < MAX_ITEMS:
            requests.append(request)
    elif kind in ("AS-REP", "TGS-REP"):
        reply = {
            "type": kind,
            "realm": _string(parts[3]) if 3 in parts else "",
            "client": _principal(parts[4]) if 4 in parts else "",
        }
        if len(replies) < MAX_ITEMS:
            replies.append(reply)
    else:
        code = read_integer(_inner(parts[6])) if 6 in parts else -1
        error = {
            "error_code": code,
            "error": KERBEROS_ERRORS.get(code, str(code)),
            "client": _principal(parts[8]) if 8 in parts else "",
            "realm": _string(parts[9]) if 9 in parts else "",
        }
        if len(errors) < MAX_ITEMS:
            errors.append(error)
