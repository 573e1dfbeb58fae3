# Compiled protocol detection and the DNS, HTTP/1.x, TLS, MQTT, HL7, DICOM and
# Kerberos parsers.
#
# Each function here has the same contract and output as its pure-Python
# reference, which stays the readable definition and is what the tests
# compare against:
#   detect_protocol  engine.inspect.detect.detect_protocol
#   parse_dns        engine.inspect.dns.parse_dns
#   parse_http       engine.inspect.textproto.parse_http
#   parse_tls        engine.inspect.tls.parse_tls
#   parse_mqtt       engine.inspect.clinical.parse_mqtt
#   parse_hl7        engine.inspect.clinical.parse_hl7
#   parse_dicom      engine.inspect.clinical.parse_dicom
#   parse_kerberos   engine.inspect.asn1.parse_kerberos
#
# The byte-level work (framing, name decompression, line splitting, header
# matching, BER and PDU walking) runs in C over the captured bytes. The
# detection, DNS and HTTP kernels are nogil functions that return named
# outcomes. The TLS, MQTT, HL7, DICOM and Kerberos readers raise the
# reference's Truncated and Malformed at the same points, so they hold the
# GIL. Python objects are made only for the values that end up in a result,
# once per flow. Text that is not printable ASCII goes through the reference
# clean_text, so odd bytes are cleaned exactly as the reference does.

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memchr, memcmp, memcpy

import base64
import binascii

from engine.inspect.asn1 import LDAP_OPERATIONS
from engine.inspect.detect import PORT_HINTS
from engine.inspect.dns import QTYPE_NAMES, RCODE_NAMES
from engine.inspect.wire import HOST_WIDTH, MAX_ITEMS, NAME_WIDTH, PATH_WIDTH, Malformed, Truncated, clean_text

# Outcome of a C-level parse step. The Python edge maps each to one
# exception, the same one the reference parser raises at that point.
cdef enum: PARSE_OK = 0
cdef enum: PARSE_TRUNCATED = 1  # the captured bytes end inside a structure
cdef enum: PARSE_MALFORMED = 2  # a field holds a value the protocol does not allow

cdef enum: PROTO_TCP = 6
cdef enum: PROTO_UDP = 17

# One bit per LDAP protocolOp tag number that detection accepts (all < 32).
cdef uint32_t LDAP_OPERATION_BITS = 0
for _tag in LDAP_OPERATIONS:
    LDAP_OPERATION_BITS |= <uint32_t>1 << _tag

# Limits shared with the reference parsers, as C constants for nogil code.
# LIMITS exposes them so a test can check they equal the reference values.
cdef enum: MAX_NAME_LENGTH = 255    # dns.MAX_NAME_LENGTH, RFC 1035 section 2.3.4
cdef enum: MAX_POINTER_JUMPS = 32   # dns.MAX_POINTER_JUMPS
cdef enum: MAX_DNS_MESSAGES = 64    # dns.MAX_DNS_MESSAGES, per direction
cdef enum: MAX_LINES = 256          # textproto.MAX_LINES, request lines read
LIMITS = {
    "dns.MAX_NAME_LENGTH": MAX_NAME_LENGTH,
    "dns.MAX_POINTER_JUMPS": MAX_POINTER_JUMPS,
    "dns.MAX_DNS_MESSAGES": MAX_DNS_MESSAGES,
    "textproto.MAX_LINES": MAX_LINES,
}


# --- text -------------------------------------------------------------------

cdef bint _printable_ascii(const uint8_t* text, Py_ssize_t length) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(length):
        if text[i] < 0x20 or text[i] > 0x7E:
            return False
    return True


cdef str _clean_text(const uint8_t* text, Py_ssize_t length, Py_ssize_t width):
    """Return wire.clean_text(text[:length], width) without copying in the common case."""
    if length > width * 4:
        length = width * 4
    if _printable_ascii(text, length):
        if length > width:
            length = width
        return (<const char*>text)[:length].decode("ascii")
    return clean_text((<const char*>text)[:length], width)


cdef bint _is_space(uint8_t byte) noexcept nogil:
    # The set bytes.strip() removes: space, \t, \n, \v, \f, \r.
    return byte == 0x20 or 0x09 <= byte <= 0x0D


cdef void _strip(const uint8_t* text, Py_ssize_t* start, Py_ssize_t* end) noexcept nogil:
    while start[0] < end[0] and _is_space(text[start[0]]):
        start[0] += 1
    while end[0] > start[0] and _is_space(text[end[0] - 1]):
        end[0] -= 1


cdef bint _equal_lower(const uint8_t* text, Py_ssize_t length, const char* lower) noexcept nogil:
    """Return True when text equals `lower` (NUL-terminated, lower case) ignoring ASCII case."""
    cdef Py_ssize_t i
    cdef uint8_t byte
    for i in range(length):
        if lower[i] == 0:
            return False
        byte = text[i]
        if 0x41 <= byte <= 0x5A:
            byte += 0x20
        if byte != <uint8_t>lower[i]:
            return False
    return lower[length] == 0


cdef bint _starts_with(const uint8_t* text, Py_ssize_t length,
                      const char* prefix, Py_ssize_t prefix_length) noexcept nogil:
    return length >= prefix_length and memcmp(text, prefix, prefix_length) == 0


cdef inline uint16_t _u16(const uint8_t* data) noexcept nogil:
    return (data[0] << 8) | data[1]


# --- DNS (RFC 1035 section 4) -------------------------------------------------

cdef struct dns_message:
    uint16_t id               # transaction id
    uint16_t flags            # QR, opcode, AA, TC, RD, RA, Z, rcode
    uint16_t answer_count     # ANCOUNT
    uint16_t qtype            # type of the first question; valid when has_question
    uint8_t has_question      # QDCOUNT > 0
    Py_ssize_t name_length    # bytes used in name
    uint8_t name[256]         # first question name, labels joined by '.', not NUL-terminated


cdef int _dns_read_name(const uint8_t* message, Py_ssize_t length, Py_ssize_t position,
                        uint8_t* name, Py_ssize_t* name_length, Py_ssize_t* after) noexcept nogil:
    # Same checks, in the same order, as dns.read_name, so the outcome of a
    # bad name (truncated or malformed) is the same.
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t end = -1
    cdef int jumps = 0
    cdef uint8_t label_length
    name_length[0] = 0
    while True:
        if position >= length:
            return PARSE_TRUNCATED
        label_length = message[position]
        if label_length & 0xC0 == 0xC0:
            if position + 1 >= length:
                return PARSE_TRUNCATED
            if end < 0:
                end = position + 2
            jumps += 1
            if jumps > MAX_POINTER_JUMPS:
                return PARSE_MALFORMED
            position = ((label_length & 0x3F) << 8) | message[position + 1]
            continue
        if label_length & 0xC0:
            return PARSE_MALFORMED
        if label_length == 0:
            position += 1
            break
        if position + 1 + label_length > length:
            return PARSE_TRUNCATED
        total += label_length + 1
        if total > MAX_NAME_LENGTH:
            return PARSE_MALFORMED
        if name_length[0] > 0:
            name[name_length[0]] = 0x2E  # '.'
            name_length[0] += 1
        memcpy(&name[name_length[0]], &message[position + 1], label_length)
        name_length[0] += label_length
        position += 1 + label_length
    after[0] = end if end >= 0 else position
    return PARSE_OK


cdef int _dns_parse_message(const uint8_t* message, Py_ssize_t length, dns_message* out) noexcept nogil:
    cdef Py_ssize_t after = 0
    cdef int status
    if length < 12:
        return PARSE_TRUNCATED
    out.id = _u16(message)
    out.flags = _u16(message + 2)
    out.has_question = _u16(message + 4) != 0
    out.answer_count = _u16(message + 6)
    out.name_length = 0
    out.qtype = 0
    if out.has_question:
        status = _dns_read_name(message, length, 12, out.name, &out.name_length, &after)
        if status != PARSE_OK:
            return status
        if after + 4 > length:
            return PARSE_TRUNCATED
        out.qtype = _u16(message + after)
    return PARSE_OK


cdef bint _is_dns_message(const uint8_t* message, Py_ssize_t length) noexcept nogil:
    """Return True for a message with one question whose name and type fit (detect._is_dns_message)."""
    cdef uint8_t name[256]
    cdef Py_ssize_t name_length = 0, after = 0
    if length < 17:
        return False
    if _u16(message + 4) != 1 or (_u16(message + 2) >> 11) & 0xF > 6:
        return False
    if _dns_read_name(message, length, 12, name, &name_length, &after) != PARSE_OK:
        return False
    return after + 4 <= length


cdef dict _dns_record(dns_message* message, Py_ssize_t size, str name):
    cdef uint16_t rcode = message.flags & 0xF
    return {
        "id": message.id,
        "response": bool(message.flags & 0x8000),
        "opcode": (message.flags >> 11) & 0xF,
        "rcode": RCODE_NAMES.get(rcode) or str(rcode),
        "answers": message.answer_count,
        "size": size,
        "name": name,
        "qtype": (QTYPE_NAMES.get(message.qtype) or str(message.qtype)) if message.has_question else "",
    }


def parse_dns(bytes initiator not None, bytes responder not None, dict fields not None):
    """Fill `fields` with query names, types, response codes and response sizes.

    Same fields and exceptions as engine.inspect.dns.parse_dns.
    """
    cdef list queries = fields.setdefault("queries", [])
    cdef list responses = fields.setdefault("responses", [])
    cdef list names = fields.setdefault("names", [])
    cdef Py_ssize_t query_count = 0, response_count = 0, max_name_length = 0
    cdef bint truncated = False
    cdef int status = PARSE_OK
    cdef int messages
    cdef dns_message message
    cdef const uint8_t* data
    cdef Py_ssize_t length, position, message_length
    cdef bytes stream
    cdef str name
    cdef bint is_response
    fields["query_count"] = 0
    fields["response_count"] = 0
    fields["max_name_length"] = 0
    for stream in (initiator, responder):
        data = <const uint8_t*><const char*>stream
        length = len(stream)
        position = 0
        messages = 0
        while position < length and messages < MAX_DNS_MESSAGES:
            messages += 1
            if length - position < 2:
                # The reference's length read raises here and skips the rest.
                status = PARSE_TRUNCATED
                break
            message_length = _u16(data + position)
            position += 2
            if message_length > length - position:
                truncated = True
                break
            status = _dns_parse_message(data + position, message_length, &message)
            position += message_length
            if status == PARSE_TRUNCATED:
                truncated = True
                status = PARSE_OK
                continue
            if status == PARSE_MALFORMED:
                break
            name = _clean_text(message.name, message.name_length, HOST_WIDTH)
            is_response = message.flags & 0x8000
            if is_response:
                response_count += 1
                if len(responses) < MAX_ITEMS:
                    responses.append(_dns_record(&message, message_length, name))
            else:
                query_count += 1
                if len(queries) < MAX_ITEMS:
                    queries.append(_dns_record(&message, message_length, name))
            if len(name) > max_name_length:
                max_name_length = len(name)
            if name and len(names) < MAX_ITEMS and name not in names:
                names.append(name)
        if status != PARSE_OK:
            break
    fields["query_count"] = query_count
    fields["response_count"] = response_count
    fields["max_name_length"] = max_name_length
    if status == PARSE_MALFORMED:
        raise Malformed("DNS name is malformed")
    if status == PARSE_TRUNCATED:
        raise Truncated("DNS length prefix cut by the capture")
    if truncated:
        raise Truncated("DNS message cut by the capture")


# --- Log4Shell JNDI lookups (engine.inspect.jndi) ------------------------------

cdef enum: MAX_LOOKUP_DEPTH = 8     # jndi.MAX_LOOKUP_DEPTH
cdef enum: MAX_LOOKUP_BYTES = 512   # jndi.MAX_LOOKUP_BYTES
cdef enum: MAX_LOOKUPS = 16         # jndi.MAX_LOOKUPS, per line
cdef enum: MAX_DECODE_ROUNDS = 2    # jndi.MAX_DECODE_ROUNDS
cdef enum: MAX_SCHEME_BYTES = 16    # jndi.MAX_SCHEME_BYTES
LIMITS["jndi.MAX_SCHEME_BYTES"] = MAX_SCHEME_BYTES
LIMITS["jndi.MAX_LOOKUP_DEPTH"] = MAX_LOOKUP_DEPTH
LIMITS["jndi.MAX_LOOKUP_BYTES"] = MAX_LOOKUP_BYTES
LIMITS["jndi.MAX_LOOKUPS"] = MAX_LOOKUPS
LIMITS["jndi.MAX_DECODE_ROUNDS"] = MAX_DECODE_ROUNDS


cdef struct lookup_text:
    # A resolved lookup body, cut at MAX_LOOKUP_BYTES; length -1 means none.
    uint8_t data[MAX_LOOKUP_BYTES]
    Py_ssize_t length


cdef inline uint8_t _ascii_lower(uint8_t byte) noexcept nogil:
    return byte + 0x20 if 0x41 <= byte <= 0x5A else byte


cdef inline uint8_t _ascii_upper(uint8_t byte) noexcept nogil:
    return byte - 0x20 if 0x61 <= byte <= 0x7A else byte


cdef void _lookup_value(const uint8_t* body, Py_ssize_t length, lookup_text* out) noexcept nogil:
    """Write what Log4j substitutes for a nested lookup with this body (jndi.lookup_value)."""
    cdef Py_ssize_t i
    out.length = 0
    for i in range(length - 1):
        if body[i] == 0x3A and body[i + 1] == 0x2D:  # ":-" starts the default value
            out.length = length - i - 2
            memcpy(out.data, body + i + 2, out.length)
            return
    if length >= 6 and _equal_lower(body, 6, b"lower:"):
        for i in range(6, length):
            out.data[i - 6] = _ascii_lower(body[i])
        out.length = length - 6
    elif length >= 6 and _equal_lower(body, 6, b"upper:"):
        for i in range(6, length):
            out.data[i - 6] = _ascii_upper(body[i])
        out.length = length - 6
    elif length >= 5 and _equal_lower(body, 5, b"date:"):
        for i in range(5, length):
            if body[i] != 0x27:  # quotes around a date-format literal
                out.data[out.length] = body[i]
                out.length += 1


cdef Py_ssize_t _resolve_lookup(const uint8_t* text, Py_ssize_t length, Py_ssize_t position, int depth,
                                lookup_text* body, Py_ssize_t* nested, lookup_text* jndi) noexcept nogil:
    """Resolve the lookup whose body starts at `position` (jndi._resolve); return the end position.

    `jndi` keeps the first body in this lookup or its nested ones that
    starts with `jndi:`, so callers set its length to -1 before the call.
    Recursion is bounded by MAX_LOOKUP_DEPTH, about 1 KiB of stack a level.
    """
    cdef lookup_text inner, value
    cdef Py_ssize_t inner_nested, count
    cdef uint8_t byte
    body.length = 0
    while position < length:
        byte = text[position]
        if byte == 0x24 and depth < MAX_LOOKUP_DEPTH and position + 1 < length and text[position + 1] == 0x7B:
            inner_nested = 0
            position = _resolve_lookup(text, length, position + 2, depth + 1, &inner, &inner_nested, jndi)
            nested[0] += 1 + inner_nested
            _lookup_value(inner.data, inner.length, &value)
            count = value.length
            if count > MAX_LOOKUP_BYTES - body.length:
                count = MAX_LOOKUP_BYTES - body.length
            memcpy(body.data + body.length, value.data, count)
            body.length += count
            continue
        position += 1
        if byte == 0x7D:  # '}'
            break
        if body.length < MAX_LOOKUP_BYTES:
            body.data[body.length] = byte
            body.length += 1
    if (jndi.length < 0 and body.length >= 5 and _equal_lower(body.data, 5, b"jndi:")
            and _starts_with_scheme(body.data + 5, body.length - 5)):
        memcpy(jndi.data, body.data, body.length)
        jndi.length = body.length
    return position


cdef bint _starts_with_scheme(const uint8_t* name, Py_ssize_t length) noexcept nogil:
    """Return True when name starts with a URL scheme and its colon (jndi.starts_with_scheme)."""
    cdef Py_ssize_t index
    cdef uint8_t byte
    cdef bint letter
    for index in range(min(length, MAX_SCHEME_BYTES + 1)):
        byte = name[index]
        if byte == 0x3A:  # ':'
            return index > 0
        letter = (0x41 <= byte <= 0x5A) or (0x61 <= byte <= 0x7A)
        if index == 0 and not letter:
            return False
        if not (letter or 0x30 <= byte <= 0x39 or byte == 0x2B or byte == 0x2D or byte == 0x2E):
            return False
    return False


cdef Py_ssize_t _find_lookup_start(const uint8_t* text, Py_ssize_t position, Py_ssize_t length) noexcept nogil:
    """Return the position of the next "${" at or after `position`, or -1."""
    cdef const uint8_t* found
    while position < length:
        found = <const uint8_t*>memchr(text + position, 0x24, length - position)
        if found == NULL:
            return -1
        position = found - text
        if position + 1 < length and text[position + 1] == 0x7B:
            return position
        position += 1
    return -1


cdef list _find_lookups(const uint8_t* text, Py_ssize_t length, bint url_encoded):
    """Return (lookup, obfuscated, url_encoded) for each JNDI lookup in text (jndi.find_lookups)."""
    cdef list found = []
    cdef Py_ssize_t position = 0, start, nested
    cdef lookup_text body, jndi
    while len(found) < MAX_LOOKUPS:
        start = _find_lookup_start(text, position, length)
        if start < 0:
            break
        nested = 0
        jndi.length = -1
        position = _resolve_lookup(text, length, start + 2, 1, &body, &nested, &jndi)
        if jndi.length >= 0:
            found.append(((<const char*>jndi.data)[:jndi.length], nested > 0, url_encoded))
    return found


cdef inline int _hex_digit(uint8_t byte) noexcept nogil:
    if 0x30 <= byte <= 0x39:
        return byte - 0x30
    if 0x41 <= byte <= 0x46:
        return byte - 0x37
    if 0x61 <= byte <= 0x66:
        return byte - 0x57
    return -1


cdef bytes _percent_decode(const uint8_t* text, Py_ssize_t length):
    """Replace each %XX escape and each JSON escape of an ASCII character with its byte (jndi.percent_decode)."""
    cdef bytearray out = bytearray(length)
    cdef uint8_t* target = out
    cdef Py_ssize_t i = 0, count = 0
    cdef int high, low
    while i < length:
        if text[i] == 0x25 and i + 2 < length:
            high = _hex_digit(text[i + 1])
            low = _hex_digit(text[i + 2])
            if high >= 0 and low >= 0:
                target[count] = <uint8_t>(high * 16 + low)
                count += 1
                i += 3
                continue
        # \u00XX with XX below 0x80: a JSON escape of an ASCII character.
        if (text[i] == 0x5C and i + 5 < length and text[i + 1] == 0x75 and text[i + 2] == 0x30
                and text[i + 3] == 0x30):
            high = _hex_digit(text[i + 4])
            low = _hex_digit(text[i + 5])
            if 0 <= high <= 7 and low >= 0:
                target[count] = <uint8_t>(high * 16 + low)
                count += 1
                i += 6
                continue
        target[count] = text[i]
        count += 1
        i += 1
    return bytes(out[:count])


cdef bint _has_encoded_marker(const uint8_t* text, Py_ssize_t length) noexcept nogil:
    """Return True when text contains %24, %25, %7B or %7b (an encoded '$', '%' or '{') or a JSON escape \\u00."""
    cdef const uint8_t* found
    cdef Py_ssize_t position = 0
    if _has_json_escape(text, length):
        return True
    while position + 2 < length:
        found = <const uint8_t*>memchr(text + position, 0x25, length - position - 2)
        if found == NULL:
            return False
        position = found - text
        if text[position + 1] == 0x32 and (text[position + 2] == 0x34 or text[position + 2] == 0x35):
            return True
        if text[position + 1] == 0x37 and (text[position + 2] == 0x42 or text[position + 2] == 0x62):
            return True
        position += 1
    return False


cdef bint _has_json_escape(const uint8_t* text, Py_ssize_t length) noexcept nogil:
    """Return True when text contains \\u00, the start of a JSON escape of an ASCII character."""
    cdef const uint8_t* found
    cdef Py_ssize_t position = 0
    while position + 3 < length:
        found = <const uint8_t*>memchr(text + position, 0x5C, length - position - 3)
        if found == NULL:
            return False
        position = found - text
        if text[position + 1] == 0x75 and text[position + 2] == 0x30 and text[position + 3] == 0x30:
            return True
        position += 1
    return False


cdef inline bint _may_hold_lookup(const uint8_t* text, Py_ssize_t length) noexcept nogil:
    """Return False when text has neither a '$' nor an encoded '$', '%' or '{', so it holds no lookup."""
    return memchr(text, 0x24, length) != NULL or _has_encoded_marker(text, length)


cdef list _scan_line(const uint8_t* line, Py_ssize_t length):
    """Return the JNDI lookups of one line, percent-decoding when needed (jndi.scan_line)."""
    cdef list hits = _find_lookups(line, length, False)
    cdef bytes text
    cdef const uint8_t* current = line
    cdef Py_ssize_t current_length = length
    cdef int rounds = 0
    while not hits and rounds < MAX_DECODE_ROUNDS and _has_encoded_marker(current, current_length):
        text = _percent_decode(current, current_length)
        current = <const uint8_t*><const char*>text
        current_length = len(text)
        rounds += 1
        hits = _find_lookups(current, current_length, True)
    return hits


cdef void _add_jndi_lookups(list lookups, const uint8_t* line, Py_ssize_t length, Py_ssize_t request_index,
                            str location, const uint8_t* header, Py_ssize_t header_length) except *:
    """Append the JNDI lookups of one request line, header or body line (textproto._add_jndi_lookups).

    Callers skip lines where _may_hold_lookup() is False, which cannot yield one.
    """
    if len(lookups) >= MAX_ITEMS:
        return
    for lookup, obfuscated, url_encoded in _scan_line(line, length)[:MAX_ITEMS - len(lookups)]:
        lookups.append({
            "request": request_index,
            "location": location,
            "header": _clean_text(header, header_length, NAME_WIDTH),
            "lookup": clean_text(lookup, PATH_WIDTH),
            "obfuscated": obfuscated,
            "url_encoded": url_encoded,
        })


# --- HTTP/1.x (RFC 9112) ------------------------------------------------------

cdef bint _is_http_method(const uint8_t* text, Py_ssize_t length) noexcept nogil:
    # The methods of textproto.HTTP_METHODS; a test keeps the two sets equal.
    if length == 3:
        return memcmp(text, b"GET", 3) == 0 or memcmp(text, b"PUT", 3) == 0
    if length == 4:
        return memcmp(text, b"POST", 4) == 0 or memcmp(text, b"HEAD", 4) == 0
    if length == 5:
        return memcmp(text, b"PATCH", 5) == 0 or memcmp(text, b"TRACE", 5) == 0
    if length == 6:
        return memcmp(text, b"DELETE", 6) == 0
    if length == 7:
        return memcmp(text, b"OPTIONS", 7) == 0 or memcmp(text, b"CONNECT", 7) == 0
    return False


cdef bint _request_line(const uint8_t* line, Py_ssize_t length, Py_ssize_t* first_space,
                        Py_ssize_t* second_space) noexcept nogil:
    """Return True for METHOD SP target SP HTTP/..., with exactly two spaces."""
    cdef Py_ssize_t i, spaces = 0
    for i in range(length):
        if line[i] == 0x20:
            spaces += 1
            if spaces == 1:
                first_space[0] = i
            elif spaces == 2:
                second_space[0] = i
            else:
                return False
    if spaces != 2:
        return False
    if not _is_http_method(line, first_space[0]):
        return False
    return _starts_with(line + second_space[0] + 1, length - second_space[0] - 1, b"HTTP/", 5)


cdef int _status_code(const uint8_t* line, Py_ssize_t length) noexcept nogil:
    """Return the code of a line starting HTTP/1.0 or HTTP/1.1, a space and three digits; else -1."""
    if length < 12 or memcmp(line, b"HTTP/1.", 7) != 0:
        return -1
    if line[7] != 0x30 and line[7] != 0x31:
        return -1
    if line[8] != 0x20:
        return -1
    for i in range(9, 12):
        if not 0x30 <= line[i] <= 0x39:
            return -1
    return (line[9] - 0x30) * 100 + (line[10] - 0x30) * 10 + (line[11] - 0x30)


cdef str _basic_user(bytes credential):
    try:
        decoded = base64.b64decode(credential.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    return clean_text(decoded.partition(b":")[0], NAME_WIDTH)


def parse_http(bytes initiator not None, bytes responder not None, dict fields not None):
    """Fill `fields` with request lines, selected headers and response status codes.

    Same fields and exceptions as engine.inspect.textproto.parse_http.
    """
    cdef list requests = fields.setdefault("requests", [])
    cdef list responses = fields.setdefault("responses", [])
    cdef list users = []
    cdef list status_codes = []
    cdef dict current = None
    cdef const uint8_t* data = <const uint8_t*><const char*>initiator
    cdef Py_ssize_t length = len(initiator)
    cdef Py_ssize_t start = 0, end, next_start, line_count = 0
    cdef Py_ssize_t first_space = 0, second_space = 0, colon, name_start, name_end, value_start, value_end
    cdef const uint8_t* newline
    cdef const uint8_t* found
    cdef const uint8_t* line
    cdef Py_ssize_t line_length
    cdef bint request_cut = length > 0 and data[length - 1] != 0x0A
    cdef int code
    cdef str server = None
    cdef list lookups = []
    cdef Py_ssize_t request_index = -1
    cdef bint in_body = False
    # One pass over the whole stream spares the per-line checks in the
    # common case of a request without any lookup.
    cdef bint lookups_possible = _may_hold_lookup(data, length)
    fields["basic_auth"] = False

    while start < length and line_count < MAX_LINES:
        line_count += 1
        newline = <const uint8_t*>memchr(data + start, 0x0A, length - start)
        end = newline - data if newline != NULL else length
        next_start = end + 1
        while end > start and data[end - 1] == 0x0D:
            end -= 1
        line = data + start
        line_length = end - start
        start = next_start
        if _request_line(line, line_length, &first_space, &second_space):
            current = {
                "method": (<const char*>line)[:first_space].decode("ascii"),
                "path": _clean_text(line + first_space + 1, second_space - first_space - 1, PATH_WIDTH),
                "version": _clean_text(line + second_space + 1, line_length - second_space - 1, 16),
                "host": "",
                "user_agent": "",
                "basic_auth": False,
            }
            if len(requests) < MAX_ITEMS:
                requests.append(current)
            request_index += 1
            in_body = False
            if lookups_possible and _may_hold_lookup(line, line_length):
                _add_jndi_lookups(lookups, line, line_length, request_index, "target", line, 0)
            continue
        if current is None:
            continue
        found = <const uint8_t*>memchr(line, 0x3A, line_length)  # ':'
        if line_length == 0:
            in_body = True
        elif lookups_possible and _may_hold_lookup(line, line_length):
            if in_body:
                _add_jndi_lookups(lookups, line, line_length, request_index, "body", line, 0)
            else:
                name_start, name_end = 0, (found - line if found != NULL else 0)
                _strip(line, &name_start, &name_end)
                _add_jndi_lookups(lookups, line, line_length, request_index, "header",
                                  line + name_start, name_end - name_start)
        if found == NULL:
            continue
        colon = found - line
        name_start, name_end = 0, colon
        _strip(line, &name_start, &name_end)
        value_start, value_end = colon + 1, line_length
        _strip(line, &value_start, &value_end)
        if _equal_lower(line + name_start, name_end - name_start, b"host"):
            current["host"] = _clean_text(line + value_start, value_end - value_start, HOST_WIDTH)
        elif _equal_lower(line + name_start, name_end - name_start, b"user-agent"):
            current["user_agent"] = _clean_text(line + value_start, value_end - value_start, PATH_WIDTH)
        elif (_equal_lower(line + name_start, name_end - name_start, b"authorization")
                and value_end - value_start >= 6 and _equal_lower(line + value_start, 6, b"basic ")):
            current["basic_auth"] = True
            fields["basic_auth"] = True
            users.append(_basic_user((<const char*>line)[value_start + 6:value_end]))

    # Status lines and the first Server header start a line; response
    # bodies are skipped a line at a time with memchr.
    data = <const uint8_t*><const char*>responder
    length = len(responder)
    start = 0
    while start < length:
        newline = <const uint8_t*>memchr(data + start, 0x0A, length - start)
        end = newline - data if newline != NULL else length
        code = _status_code(data + start, length - start)
        if code >= 0:
            status_codes.append(code)
        if server is None and start > 0 and end - start >= 7 and _equal_lower(data + start, 7, b"server:"):
            value_start = start + 7
            while value_start < end and (data[value_start] == 0x20 or data[value_start] == 0x09):
                value_start += 1
            value_end = value_start
            while value_end < length and data[value_end] != 0x0D and data[value_end] != 0x0A:
                value_end += 1
            _strip(data, &value_start, &value_end)
            server = _clean_text(data + value_start, value_end - value_start, PATH_WIDTH)
        start = end + 1
    for code in status_codes[:MAX_ITEMS]:
        responses.append({"status": code})
    if server is not None:
        fields["server"] = server

    logins = []
    for index, user in enumerate(users):
        status = status_codes[index] if index < len(status_codes) else None
        if status is None:
            outcome = "unknown"
        elif status in (401, 403):
            outcome = "failure"
        else:
            outcome = "success"
        logins.append((user, outcome))
    fields["_logins"] = logins
    if lookups:
        fields["jndi_lookups"] = lookups
    # wraparound is off in this build, so the last request is indexed explicitly.
    if request_cut and requests and not requests[len(requests) - 1]["host"]:
        raise Truncated("HTTP request header cut by the capture")


# --- protocol detection -------------------------------------------------------

cdef bint _looks_like_tls(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    # SSLv2-format ClientHello, or a handshake record with a Client/ServerHello.
    if n >= 5 and s[0] & 0x80 and s[2] == 1 and s[3] == 3:
        return True
    return n >= 6 and s[0] == 22 and s[1] == 3 and s[2] <= 4 and (s[5] == 1 or s[5] == 2)


cdef bint _looks_like_hl7(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    if n >= 1 and s[0] == 0x0B:
        return n >= 5 and memcmp(s + 1, b"MSH|", 4) == 0
    return n >= 4 and memcmp(s, b"MSH|", 4) == 0


cdef bint _looks_like_dicom(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    cdef uint32_t length
    if n < 10 or (s[0] != 1 and s[0] != 2) or s[1] != 0:
        return False
    length = (<uint32_t>s[2] << 24) | (<uint32_t>s[3] << 16) | (<uint32_t>s[4] << 8) | s[5]
    return 68 <= length < (1 << 28) and s[6] == 0 and s[7] == 1


cdef bint _looks_like_mqtt(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t position = 1, name_length
    cdef int i
    if n < 9 or s[0] != 0x10:
        return False
    # Remaining length: a variable byte integer of at most 4 bytes.
    for i in range(4):
        if position >= n:
            return False
        position += 1
        if not s[position - 1] & 0x80:
            break
    else:
        return False
    if position + 2 > n:
        return False
    name_length = _u16(s + position)
    position += 2
    if position + name_length > n:
        return False
    return ((name_length == 4 and memcmp(s + position, b"MQTT", 4) == 0)
            or (name_length == 6 and memcmp(s + position, b"MQIsdp", 6) == 0))


cdef bint _looks_like_smb(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    # smb.looks_like_smb: a NetBIOS session request (0x81) or positive
    # response (0x82) before the first session message is skipped.
    cdef Py_ssize_t start = 0
    if n >= 4 and (s[0] == 0x81 or s[0] == 0x82):
        start = 4 + ((<Py_ssize_t>s[1] << 16) | (<Py_ssize_t>s[2] << 8) | <Py_ssize_t>s[3])
    return (n >= start + 8 and s[start] == 0 and 0xFC <= s[start + 4] <= 0xFF
            and memcmp(s + start + 5, b"SMB", 3) == 0)


cdef int _ber_header(const uint8_t* s, Py_ssize_t end, Py_ssize_t* position, uint8_t* tag,
                     Py_ssize_t* value_end) noexcept nogil:
    # asn1.read_tlv without the value: a declared length past `end` is cut to it.
    cdef Py_ssize_t p = position[0], length = 0, count
    cdef uint8_t first
    cdef int i
    if p >= end:
        return PARSE_TRUNCATED
    tag[0] = s[p]
    p += 1
    if tag[0] & 0x1F == 0x1F:
        for i in range(4):
            if p >= end:
                return PARSE_TRUNCATED
            p += 1
            if not s[p - 1] & 0x80:
                break
        else:
            return PARSE_MALFORMED
    if p >= end:
        return PARSE_TRUNCATED
    first = s[p]
    p += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        return PARSE_MALFORMED
    else:
        count = first & 0x7F
        if count > 4:
            return PARSE_MALFORMED
        if p + count > end:
            return PARSE_TRUNCATED
        for i in range(count):
            length = (length << 8) | s[p + i]
        p += count
    position[0] = p
    value_end[0] = end if length > end - p else p + length
    return PARSE_OK


cdef bint _looks_like_ldap(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t position = 0, message_end = 0, id_end = 0
    cdef uint8_t tag, operation
    if n < 7 or s[0] != 0x30:
        return False
    if _ber_header(s, n, &position, &tag, &message_end) != PARSE_OK:
        return False
    if _ber_header(s, message_end, &position, &tag, &id_end) != PARSE_OK or tag != 0x02:
        return False
    if id_end >= message_end:
        return False
    operation = s[id_end]
    return ((operation & 0xE0 == 0x60 or operation & 0xE0 == 0x40)
            and (LDAP_OPERATION_BITS >> (operation & 0x1F)) & 1)


cdef bint _looks_like_http(const uint8_t* initiator, Py_ssize_t initiator_length,
                           const uint8_t* responder, Py_ssize_t responder_length) noexcept nogil:
    cdef const uint8_t* space = <const uint8_t*>memchr(initiator, 0x20, initiator_length)
    cdef Py_ssize_t word = space - initiator if space != NULL else initiator_length
    if _is_http_method(initiator, word):
        return True
    return _starts_with(responder, responder_length, b"HTTP/1.", 7)


cdef bint _looks_like_telnet(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    return n >= 3 and s[0] == 0xFF and 0xFB <= s[1] <= 0xFE


cdef bint _verb_is(const uint8_t* s, Py_ssize_t n, const char* verb) noexcept nogil:
    # initiator[:4].upper() == verb, for a four-letter verb.
    return n >= 4 and _equal_lower(s, 4, verb)


def detect_protocol(bytes initiator not None, bytes responder not None, int ip_proto,
                    int initiator_port, int responder_port):
    """Return the application protocol name of a flow, or "" when none matches.

    Same result as engine.inspect.detect.detect_protocol.
    """
    cdef const uint8_t* a = <const uint8_t*><const char*>initiator
    cdef const uint8_t* b = <const uint8_t*><const char*>responder
    cdef Py_ssize_t na = len(initiator), nb = len(responder)
    cdef const uint8_t* first
    cdef Py_ssize_t first_length
    hint = PORT_HINTS.get(responder_port) or PORT_HINTS.get(initiator_port, "")
    if ip_proto == PROTO_UDP:
        # The first stored datagram of the initiator, else of the responder.
        first, first_length = a + 2, (_u16(a) if na >= 2 else 0)
        if first_length > na - 2:
            first_length = na - 2
        if first_length <= 0:
            first, first_length = b + 2, (_u16(b) if nb >= 2 else 0)
            if first_length > nb - 2:
                first_length = nb - 2
        if first_length > 0 and _is_dns_message(first, first_length):
            return "dns"
        if na > 4 and (a[2] == 0x6A or a[2] == 0x6C):
            return "kerberos"
        return ""
    if ip_proto != PROTO_TCP or (na == 0 and nb == 0):
        return ""
    if _looks_like_tls(a, na) or _looks_like_tls(b, nb):
        return "tls"
    if _looks_like_hl7(a, na) or _looks_like_hl7(b, nb):
        return "hl7"
    if _looks_like_dicom(a, na) or _looks_like_dicom(b, nb):
        return "dicom"
    if _looks_like_mqtt(a, na):
        return "mqtt"
    if _looks_like_smb(a, na) or _looks_like_smb(b, nb):
        return "smb"
    if na >= 11 and a[0] == 3 and a[1] == 0 and a[5] == 0xE0:
        return "rdp"  # TPKT with an X.224 connection request
    if na > 6 and (a[4] == 0x6A or a[4] == 0x6C):
        return "kerberos"  # AS-REQ or TGS-REQ after the 4-byte record mark
    if _looks_like_ldap(a, na) or _looks_like_ldap(b, nb):
        return "ldap"
    if hint == "dns" and na > 2 and _is_dns_message(a + 2, na - 2):
        return "dns"
    if _looks_like_http(a, na, b, nb):
        return "http"
    if _starts_with(a, na, b"SSH-", 4) or _starts_with(b, nb, b"SSH-", 4):
        return "ssh"
    if _looks_like_telnet(a, na) or _looks_like_telnet(b, nb):
        return "telnet"
    if _starts_with(b, nb, b"220", 3):
        if (_verb_is(a, na, b"ehlo") or _verb_is(a, na, b"helo") or _verb_is(a, na, b"mail")
                or hint == "smtp"):
            return "smtp"
        if (_verb_is(a, na, b"user") or _verb_is(a, na, b"pass") or _verb_is(a, na, b"auth")
                or _verb_is(a, na, b"feat") or _verb_is(a, na, b"syst") or _verb_is(a, na, b"anon")
                or hint == "ftp"):
            return "ftp"
        return "ftp"
    if _starts_with(b, nb, b"+OK", 3):
        return "pop3"
    if _starts_with(b, nb, b"* OK", 4):
        return "imap"
    if hint == "telnet":
        return "telnet"
    return ""


# --- TLS ClientHello and ServerHello (RFC 8446 section 4.1, RFC 5246 section 7.4.1)

import hashlib

from engine.inspect.tls import TLS_VERSION_NAMES, WEAK_CIPHER_SUITES

cdef enum: CONTENT_CHANGE_CIPHER_SPEC = 20
cdef enum: CONTENT_HANDSHAKE = 22
cdef enum: CONTENT_HEARTBEAT = 24
cdef enum: MAX_TLS_RECORDS = 64  # tls.MAX_TLS_RECORDS
cdef enum: HANDSHAKE_CLIENT_HELLO = 1
cdef enum: HANDSHAKE_SERVER_HELLO = 2
cdef enum: MAX_HANDSHAKE_BYTES = 16384  # tls.MAX_HANDSHAKE_BYTES
LIMITS["tls.MAX_HANDSHAKE_BYTES"] = MAX_HANDSHAKE_BYTES
LIMITS["tls.MAX_TLS_RECORDS"] = MAX_TLS_RECORDS

# One bit per cipher suite code point of tls.WEAK_CIPHER_SUITES.
cdef uint8_t WEAK_SUITE_BITS[8192]
WEAK_SUITE_BITS[:] = [0] * 8192
for _suite in WEAK_CIPHER_SUITES:
    WEAK_SUITE_BITS[_suite >> 3] |= 1 << (_suite & 7)


cdef inline bint _is_weak_suite(uint16_t suite) noexcept nogil:
    return (WEAK_SUITE_BITS[suite >> 3] >> (suite & 7)) & 1


cdef inline bint _is_grease(uint32_t value) noexcept nogil:
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


cdef str _version_name(uint32_t version):
    name = TLS_VERSION_NAMES.get(version)
    return name if name is not None else f"0x{version:04x}"


cdef struct cursor:
    # Bounded reader over captured bytes, the C form of wire.Reader.
    const uint8_t* data
    Py_ssize_t position
    Py_ssize_t end


cdef inline Py_ssize_t _advance(cursor* c, Py_ssize_t count) except -1:
    cdef Py_ssize_t start = c.position
    if count > c.end - start:
        raise Truncated(f"need {count} bytes, {c.end - start} captured")
    c.position = start + count
    return start


cdef inline uint32_t _c_u8(cursor* c) except? 0xFFFFFFFF:
    return c.data[_advance(c, 1)]


cdef inline uint32_t _c_u16(cursor* c) except? 0xFFFFFFFF:
    cdef Py_ssize_t start = _advance(c, 2)
    return (c.data[start] << 8) | c.data[start + 1]


cdef inline uint32_t _c_u24(cursor* c) except? 0xFFFFFFFF:
    cdef Py_ssize_t start = _advance(c, 3)
    return (c.data[start] << 16) | (c.data[start + 1] << 8) | c.data[start + 2]


cdef inline cursor _c_sub(cursor* c, Py_ssize_t count) except *:
    cdef cursor child
    child.data = c.data
    child.position = _advance(c, count)
    child.end = child.position + count
    return child


cdef list _tls_extensions(cursor* reader, bint is_client, dict fields):
    cdef list types = []
    cdef cursor extensions, body, names, groups, formats, protocols, versions
    cdef uint32_t ext_type, name_type, count
    cdef Py_ssize_t start
    cdef list values
    if reader.position >= reader.end:
        return types
    extensions = _c_sub(reader, _c_u16(reader))
    while extensions.position < extensions.end:
        ext_type = _c_u16(&extensions)
        body = _c_sub(&extensions, _c_u16(&extensions))
        types.append(ext_type)
        if ext_type == 0 and is_client and body.position < body.end:
            names = _c_sub(&body, _c_u16(&body))
            while names.position < names.end:
                name_type = _c_u8(&names)
                count = _c_u16(&names)
                start = _advance(&names, count)
                if name_type == 0:
                    fields["sni"] = _clean_text(names.data + start, count, HOST_WIDTH)
        elif ext_type == 10 and is_client:
            groups = _c_sub(&body, _c_u16(&body))
            fields["_groups"] = [_c_u16(&groups) for _ in range((groups.end - groups.position) // 2)]
        elif ext_type == 11 and is_client:
            formats = _c_sub(&body, _c_u8(&body))
            fields["_point_formats"] = [formats.data[i] for i in range(formats.position, formats.end)]
        elif ext_type == 16 and body.position < body.end:
            protocols = _c_sub(&body, _c_u16(&body))
            values = []
            while protocols.position < protocols.end and len(values) < MAX_ITEMS:
                count = _c_u8(&protocols)
                start = _advance(&protocols, count)
                values.append(_clean_text(protocols.data + start, count, NAME_WIDTH))
            fields["client_alpn" if is_client else "server_alpn"] = values
        elif ext_type == 43:
            if is_client:
                versions = _c_sub(&body, _c_u8(&body))
                values = []
                for _ in range((versions.end - versions.position) // 2):
                    count = _c_u16(&versions)
                    if not _is_grease(count):
                        values.append(_version_name(count))
                fields["client_versions"] = values
            else:
                fields["_selected_version"] = _c_u16(&body)
    return types


cdef str _dash_join(list values, bint skip_grease):
    return "-".join([str(v) for v in values if not (skip_grease and _is_grease(v))])


cdef void _tls_client_hello(cursor* body, dict fields) except *:
    cdef uint32_t legacy_version = _c_u16(body)
    cdef cursor suites_reader
    cdef list suites, extension_types
    fields["client_hello_version"] = _version_name(legacy_version)
    _advance(body, 32)
    _advance(body, _c_u8(body))
    suites_reader = _c_sub(body, _c_u16(body))
    suites = [_c_u16(&suites_reader) for _ in range((suites_reader.end - suites_reader.position) // 2)]
    fields["client_cipher_suites"] = [s for s in suites if not _is_grease(s)][:4 * MAX_ITEMS]
    fields["client_weak_suites"] = sorted({s for s in suites if _is_weak_suite(s)})
    _advance(body, _c_u8(body))
    extension_types = _tls_extensions(body, True, fields)
    fields.setdefault("client_versions", [_version_name(legacy_version)])
    ja3 = ",".join([
        str(legacy_version),
        _dash_join(suites, True),
        _dash_join(extension_types, True),
        _dash_join(fields.pop("_groups", []), True),
        _dash_join(fields.pop("_point_formats", []), False),
    ])
    fields["ja3"] = ja3
    fields["ja3_md5"] = hashlib.md5(ja3.encode(), usedforsecurity=False).hexdigest()


cdef void _tls_server_hello(cursor* body, dict fields) except *:
    cdef uint32_t legacy_version = _c_u16(body)
    cdef uint32_t suite
    cdef list extension_types
    _advance(body, 32)
    _advance(body, _c_u8(body))
    suite = _c_u16(body)
    _advance(body, 1)
    fields["cipher_suite"] = suite
    fields["weak_cipher_suite"] = _is_weak_suite(suite)
    extension_types = _tls_extensions(body, False, fields)
    chosen = fields.pop("_selected_version", legacy_version)
    fields["version"] = _version_name(chosen)
    fields["version_code"] = chosen
    ja3s = f"{legacy_version},{suite}," + _dash_join(extension_types, False)
    fields["ja3s_md5"] = hashlib.md5(ja3s.encode(), usedforsecurity=False).hexdigest()


cdef bint _is_sslv2_client_hello(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    return n >= 5 and s[0] & 0x80 and s[2] == 1 and s[3] == 3


cdef bint _tls_sslv2_client_hello(bytes stream, dict fields) except -1:
    """Parse an SSLv2-format ClientHello; return True if the capture cut it."""
    cdef cursor reader, body
    cdef uint32_t length, version, cipher_length
    cdef Py_ssize_t specs_start, specs_length, i
    cdef bint cut
    reader.data = <const uint8_t*><const char*>stream
    reader.position = 0
    reader.end = len(stream)
    length = _c_u16(&reader) & 0x7FFF
    cut = length > reader.end - reader.position
    body = _c_sub(&reader, min(<Py_ssize_t>length, reader.end - reader.position))
    _advance(&body, 1)
    version = _c_u16(&body)
    cipher_length = _c_u16(&body)
    _advance(&body, 4)
    specs_length = min(<Py_ssize_t>cipher_length, body.end - body.position)
    specs_start = _advance(&body, specs_length)
    # Three-byte cipher specs whose first byte is 0 carry a TLS suite code.
    suites = [
        (body.data[specs_start + i + 1] << 8) | body.data[specs_start + i + 2]
        for i in range(0, specs_length - 2, 3) if body.data[specs_start + i] == 0
    ]
    fields["client_hello_format"] = "sslv2"
    fields["client_hello_version"] = _version_name(version)
    fields["client_versions"] = [_version_name(version)]
    fields["client_cipher_suites"] = suites[:4 * MAX_ITEMS]
    fields["client_weak_suites"] = sorted({s for s in suites if _is_weak_suite(s)})
    return cut or specs_length < cipher_length


cdef bytes _handshake_bytes(bytes stream, bint* cut):
    """Join the handshake record payloads at the start of a stream (tls._handshake_bytes)."""
    cdef const uint8_t* data = <const uint8_t*><const char*>stream
    cdef Py_ssize_t length = len(stream), position = 0, record_length
    cdef Py_ssize_t first_start = -1, first_length = 0
    cdef bytearray joined = None
    cut[0] = False
    while length - position >= 5:
        joined_length = first_length if joined is None else len(joined)
        if joined_length >= MAX_HANDSHAKE_BYTES:
            break
        record_length = _u16(data + position + 3)
        if data[position] != CONTENT_HANDSHAKE:
            break
        position += 5
        if record_length > length - position:
            record_length = length - position
            cut[0] = True
        # One record, the common case, is sliced without a bytearray.
        if first_start < 0:
            first_start, first_length = position, record_length
        else:
            if joined is None:
                joined = bytearray(stream[first_start:first_start + first_length])
            joined += stream[position:position + record_length]
        position += record_length
        if cut[0]:
            break
    if joined is not None:
        return bytes(joined)
    if first_start < 0:
        return b""
    return stream[first_start:first_start + first_length]


cdef list _heartbeat_records(bytes stream, int direction):
    """Return the heartbeat records among the first records of one direction (tls.heartbeat_records)."""
    cdef const uint8_t* data = <const uint8_t*><const char*>stream
    cdef Py_ssize_t length = len(stream), position = 0, record_length
    cdef bint encrypted = False, readable
    cdef uint8_t content_type
    cdef int count
    cdef list records = []
    for count in range(MAX_TLS_RECORDS):
        if position + 5 > length or len(records) >= MAX_ITEMS:
            break
        content_type = data[position]
        if content_type < CONTENT_CHANGE_CIPHER_SPEC or content_type > CONTENT_HEARTBEAT or data[position + 1] != 3:
            break
        record_length = _u16(data + position + 3)
        if content_type == CONTENT_CHANGE_CIPHER_SPEC:
            encrypted = True
        elif content_type == CONTENT_HEARTBEAT:
            readable = not encrypted and position + 8 <= length
            records.append({
                "direction": direction,
                "record_length": record_length,
                "message_type": data[position + 5] if readable else None,
                "payload_length": _u16(data + position + 6) if readable else None,
            })
        position += 5 + record_length
    return records


def parse_tls(bytes initiator not None, bytes responder not None, dict fields not None):
    """Fill `fields` from the ClientHello and ServerHello of one connection.

    Same fields and exceptions as engine.inspect.tls.parse_tls.
    """
    cdef bint truncated = False, cut
    cdef bytes joined, stream
    cdef cursor reader, body
    cdef uint32_t handshake_type, length, wanted
    cdef list heartbeats = _heartbeat_records(initiator, 0) + _heartbeat_records(responder, 1)
    if heartbeats:
        fields["heartbeats"] = heartbeats
    if _is_sslv2_client_hello(<const uint8_t*><const char*>initiator, len(initiator)):
        truncated = _tls_sslv2_client_hello(initiator, fields)
        initiator = b""
    for stream, wanted in ((initiator, HANDSHAKE_CLIENT_HELLO), (responder, HANDSHAKE_SERVER_HELLO)):
        if not stream:
            continue
        joined = _handshake_bytes(stream, &cut)
        reader.data = <const uint8_t*><const char*>joined
        reader.position = 0
        reader.end = len(joined)
        if reader.end < 4:
            truncated = True
            continue
        handshake_type = _c_u8(&reader)
        length = _c_u24(&reader)
        if handshake_type != wanted:
            raise Malformed(f"TLS handshake type {handshake_type}, expected {wanted}")
        if length > reader.end - reader.position:
            cut = True
            length = reader.end - reader.position
        truncated = truncated or cut
        body = _c_sub(&reader, length)
        try:
            if wanted == HANDSHAKE_CLIENT_HELLO:
                _tls_client_hello(&body, fields)
            else:
                _tls_server_hello(&body, fields)
        except Truncated:
            truncated = True
    if truncated:
        raise Truncated("TLS hello cut by the capture or the stream cap")


# --- MQTT 3.1, 3.1.1 and 5.0 (OASIS MQTT 3.1.1 section 2-3, MQTT 5.0 section 2-3)

from engine.inspect.clinical import MQTT_PACKET_TYPES

cdef enum: MAX_MQTT_PACKETS = 64  # clinical.MAX_MQTT_PACKETS, per direction
LIMITS["clinical.MAX_MQTT_PACKETS"] = MAX_MQTT_PACKETS


cdef uint32_t _mqtt_varint(cursor* c) except? 0xFFFFFFFF:
    cdef uint32_t value = 0, byte
    cdef int shift
    for shift in range(0, 28, 7):
        byte = _c_u8(c)
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    raise Malformed("MQTT variable byte integer longer than 4 bytes")


cdef Py_ssize_t _mqtt_string(cursor* c, Py_ssize_t* length) except -1:
    """Move past a length-prefixed string; return its start and set its length."""
    length[0] = _c_u16(c)
    return _advance(c, length[0])


cdef int _mqtt_skip_properties(cursor* c, object version) except -1:
    if version == 5:
        _advance(c, _mqtt_varint(c))
    return 0


cdef int _mqtt_connect(cursor* body, dict fields) except -1:
    cdef Py_ssize_t start, length
    cdef uint32_t version, flags
    start = _mqtt_string(body, &length)
    if not ((length == 4 and memcmp(body.data + start, b"MQTT", 4) == 0)
            or (length == 6 and memcmp(body.data + start, b"MQIsdp", 6) == 0)):
        raise Malformed(f"invalid MQTT protocol name {(<const char*>body.data)[start:start + min(length, 8)]!r}")
    version = _c_u8(body)
    flags = _c_u8(body)
    fields["protocol_version"] = version
    fields["keepalive_s"] = _c_u16(body)
    fields["clean_session"] = bool(flags & 0x02)
    fields["username_present"] = bool(flags & 0x80)
    fields["password_present"] = bool(flags & 0x40)
    _mqtt_skip_properties(body, version)
    start = _mqtt_string(body, &length)
    fields["client_id"] = _clean_text(body.data + start, length, NAME_WIDTH)
    if flags & 0x04:
        _mqtt_skip_properties(body, version)
        start = _mqtt_string(body, &length)
        fields["will_topic"] = _clean_text(body.data + start, length, PATH_WIDTH)
        _mqtt_string(body, &length)
    if flags & 0x80:
        # Kept for the login record only; the password is skipped unread.
        start = _mqtt_string(body, &length)
        fields["_username"] = _clean_text(body.data + start, length, NAME_WIDTH)
    return 0


cdef int _mqtt_direction(bytes stream, dict fields) except -1:
    cdef cursor reader, body
    cdef int count = 0
    cdef uint32_t first, packet_type, length
    cdef Py_ssize_t start, topic_length, available
    cdef bint cut
    cdef dict packets = fields["packets"]
    cdef list published = fields["published_topics"]
    cdef list subscribed = fields["subscribed_topics"]
    cdef str topic
    reader.data = <const uint8_t*><const char*>stream
    reader.position = 0
    reader.end = len(stream)
    while reader.position < reader.end and count < MAX_MQTT_PACKETS:
        count += 1
        first = _c_u8(&reader)
        packet_type = first >> 4
        if packet_type == 0:
            raise Malformed("MQTT packet type 0 is reserved")
        name = MQTT_PACKET_TYPES[packet_type]
        length = _mqtt_varint(&reader)
        packets[name] = packets.get(name, 0) + 1
        # A PUBLISH may be far larger than the stream cap, so parse the part
        # that was captured (it contains the topic), then report the cut.
        available = reader.end - reader.position
        cut = length > available
        body = _c_sub(&reader, min(<Py_ssize_t>length, available))
        version = fields.get("protocol_version", 4)
        if packet_type == 1:
            _mqtt_connect(&body, fields)
        elif packet_type == 2:
            _advance(&body, 1)
            fields["connack_code"] = _c_u8(&body)
        elif packet_type == 3:
            start = _mqtt_string(&body, &topic_length)
            topic = _clean_text(body.data + start, topic_length, PATH_WIDTH)
            if len(published) < MAX_ITEMS and topic not in published:
                published.append(topic)
        elif packet_type == 8:
            _advance(&body, 2)
            _mqtt_skip_properties(&body, version)
            while body.position < body.end:
                start = _mqtt_string(&body, &topic_length)
                topic = _clean_text(body.data + start, topic_length, PATH_WIDTH)
                _advance(&body, 1)
                if "#" in topic or "+" in topic:
                    fields["wildcard_subscription"] = True
                if len(subscribed) < MAX_ITEMS and topic not in subscribed:
                    subscribed.append(topic)
        if cut:
            raise Truncated(f"MQTT {name} of {length} bytes cut by the capture")
    return 0


def parse_mqtt(bytes initiator not None, bytes responder not None, dict fields not None):
    """Fill `fields` with CONNECT details, CONNACK code, topics and packet counts.

    Same fields and exceptions as engine.inspect.clinical.parse_mqtt.
    """
    cut_directions = []
    fields.setdefault("packets", {})
    fields.setdefault("published_topics", [])
    fields.setdefault("subscribed_topics", [])
    fields["wildcard_subscription"] = False
    for direction, stream in ((0, initiator), (1, responder)):
        try:
            _mqtt_direction(stream, fields)
        except Truncated:
            cut_directions.append(direction)
    if cut_directions:
        raise Truncated(f"MQTT packet cut by the capture in directions {cut_directions}")


# --- HL7 v2 over MLLP (HL7 v2.5 chapter 2 and Appendix C) --------------------

from engine.inspect.clinical import HL7_ACK_CODES, HL7_PATIENT_SEGMENTS

cdef enum: MAX_HL7_MESSAGES = 16    # clinical.MAX_HL7_MESSAGES, per direction
cdef enum: MAX_HL7_SEGMENTS = 64    # 4 * MAX_ITEMS: segments read per message
cdef enum: MSH_FIELDS = 12          # MSH-1 to MSH-12 are read
LIMITS["clinical.MAX_HL7_MESSAGES"] = MAX_HL7_MESSAGES


cdef Py_ssize_t _find_byte(const uint8_t* data, Py_ssize_t start, Py_ssize_t end, uint8_t value) noexcept nogil:
    cdef const uint8_t* found
    if start >= end:
        return -1
    found = <const uint8_t*>memchr(data + start, value, end - start)
    return found - data if found != NULL else -1


cdef Py_ssize_t _segment_end(const uint8_t* data, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    # Segments end at CR; LF is accepted too, as the reference does.
    cdef Py_ssize_t i
    for i in range(start, end):
        if data[i] == 0x0D or data[i] == 0x0A:
            return i
    return end


cdef Py_ssize_t _next_segment(const uint8_t* data, Py_ssize_t* position, Py_ssize_t end) noexcept nogil:
    """Skip empty segments; return the start of the next one (its end in position), or -1."""
    cdef Py_ssize_t start = position[0]
    while start < end and (data[start] == 0x0D or data[start] == 0x0A):
        start += 1
    if start >= end:
        return -1
    position[0] = _segment_end(data, start, end)
    return start


cdef dict _hl7_message(const uint8_t* data, Py_ssize_t start, Py_ssize_t end):
    """Return the routing fields of one message (clinical.parse_hl7_message)."""
    cdef Py_ssize_t position = start, header_start, header_end, segment_start, segment_end
    cdef Py_ssize_t field_starts[MSH_FIELDS]
    cdef Py_ssize_t field_ends[MSH_FIELDS]
    cdef Py_ssize_t i, field, cursor_position, value_end
    cdef uint8_t separator
    cdef int segment_count = 0
    cdef list segments = []
    cdef str name, code
    header_start = _next_segment(data, &position, end)
    if header_start < 0 or not _starts_with(data + header_start, position - header_start, b"MSH", 3):
        raise Malformed("HL7 message does not start with an MSH segment")
    header_end = position
    if header_end - header_start < 8:
        raise Truncated("MSH segment shorter than its encoding characters")
    separator = data[header_start + 3]
    # MSH-1 is the field separator itself, so after splitting, MSH-n is at n-1.
    field = 0
    cursor_position = header_start
    while field < MSH_FIELDS:
        field_starts[field] = cursor_position
        value_end = _find_byte(data, cursor_position, header_end, separator)
        if value_end < 0:
            field_ends[field] = header_end
            field += 1
            break
        field_ends[field] = value_end
        cursor_position = value_end + 1
        field += 1
    while field < MSH_FIELDS:
        field_starts[field] = field_ends[field] = header_end
        field += 1

    record = {
        "sending_application": _clean_text(data + field_starts[2], field_ends[2] - field_starts[2], NAME_WIDTH),
        "sending_facility": _clean_text(data + field_starts[3], field_ends[3] - field_starts[3], NAME_WIDTH),
        "receiving_application": _clean_text(data + field_starts[4], field_ends[4] - field_starts[4], NAME_WIDTH),
        "receiving_facility": _clean_text(data + field_starts[5], field_ends[5] - field_starts[5], NAME_WIDTH),
        "message_type": _clean_text(data + field_starts[8], field_ends[8] - field_starts[8], NAME_WIDTH),
        "control_id": _clean_text(data + field_starts[9], field_ends[9] - field_starts[9], NAME_WIDTH),
        "processing_id": _clean_text(data + field_starts[10], field_ends[10] - field_starts[10], 8),
        "version": _clean_text(data + field_starts[11], field_ends[11] - field_starts[11], 16),
        "ack_code": "",
        "segments": segments,
        "patient_segments": False,
    }

    position = header_start
    while segment_count < MAX_HL7_SEGMENTS:
        segment_start = _next_segment(data, &position, end)
        if segment_start < 0:
            break
        segment_count += 1
        segment_end = position
        # A segment id of one to three ASCII letters or digits; others are skipped.
        for i in range(segment_start, min(segment_start + 3, segment_end)):
            if not (0x30 <= data[i] <= 0x39 or 0x41 <= (data[i] & 0xDF) <= 0x5A):
                break
        else:
            name = (<const char*>data)[segment_start:min(segment_start + 3, segment_end)].decode("ascii")
            segments.append(name)
            if name in HL7_PATIENT_SEGMENTS:
                record["patient_segments"] = True
            if name == "MSA":
                value_end = _find_byte(data, segment_start, segment_end, separator)
                code = ""
                if value_end >= 0:
                    i = _find_byte(data, value_end + 1, segment_end, separator)
                    code = _clean_text(data + value_end + 1, (i if i >= 0 else segment_end) - value_end - 1, 8)
                if code and code not in HL7_ACK_CODES:
                    raise Malformed(f"invalid MSA-1 acknowledgment code {code!r}")
                record["ack_code"] = code
    return record


def parse_hl7(bytes initiator not None, bytes responder not None, dict fields not None):
    """Fill `fields` with the MSH routing of each message in both directions.

    Same fields and exceptions as engine.inspect.clinical.parse_hl7.
    """
    cdef list messages = fields.setdefault("messages", [])
    cdef bint truncated = False
    cdef const uint8_t* data
    cdef Py_ssize_t length, position, start, end
    cdef int count
    cdef bytes stream
    cdef list ranges
    for direction, stream in ((0, initiator), (1, responder)):
        data = <const uint8_t*><const char*>stream
        length = len(stream)
        ranges = []
        if length == 0 or data[0] != 0x0B:
            # A bare message without MLLP framing.
            if _starts_with(data, length, b"MSH", 3):
                ranges.append((0, length))
                fields["framing"] = "none"
        else:
            # MLLP blocks: 0x0B, the message, 0x1C 0x0D.
            position = 0
            count = 0
            while position < length and count < MAX_HL7_MESSAGES:
                start = _find_byte(data, position, length, 0x0B)
                if start < 0:
                    break
                end = start + 1
                while True:
                    end = _find_byte(data, end, length, 0x1C)
                    if end < 0 or (end + 1 < length and data[end + 1] == 0x0D):
                        break
                    end += 1
                count += 1
                if end < 0:
                    ranges.append((start + 1, length))
                    truncated = True
                    break
                ranges.append((start + 1, end))
                position = end + 2
            if ranges:
                fields["framing"] = "mllp"
        for start, end in ranges:
            try:
                record = _hl7_message(data, start, end)
            except Truncated:
                truncated = True
                continue
            record["direction"] = direction
            messages.append(record)
    fields["patient_data"] = any(m["patient_segments"] for m in messages)
    if truncated:
        raise Truncated("HL7 message cut by the capture or the stream cap")


# --- DICOM upper layer (PS3.8 section 9.3) and DIMSE command sets (PS3.7 section 9.3)

from engine.inspect.clinical import DICOM_PDU_TYPES, DIMSE_COMMANDS, SOP_CLASS_NAMES

cdef enum: AE_TITLE_LENGTH = 16             # clinical.AE_TITLE_LENGTH, PS3.8 9.3.2
cdef enum: MAX_PDU_LENGTH = 1 << 28         # clinical.MAX_PDU_LENGTH
cdef enum: MAX_DICOM_PDUS = 64              # 4 * MAX_ITEMS: PDU names kept
cdef enum: MAX_DICOM_COMMANDS = 32          # 2 * MAX_ITEMS: DIMSE commands kept
cdef enum: MAX_COMMAND_BUFFER = 65536       # bytes of a command set kept across fragments
LIMITS["clinical.AE_TITLE_LENGTH"] = AE_TITLE_LENGTH
LIMITS["clinical.MAX_PDU_LENGTH"] = MAX_PDU_LENGTH


cdef str _dicom_text(const uint8_t* data, Py_ssize_t start, Py_ssize_t end, Py_ssize_t width, bint left):
    """Return clean_text of data[start:end] with spaces and NULs stripped (rstrip only unless left)."""
    if left:
        while start < end and (data[start] == 0x20 or data[start] == 0):
            start += 1
    while end > start and (data[end - 1] == 0x20 or data[end - 1] == 0):
        end -= 1
    return _clean_text(data + start, end - start, width)


cdef inline str _uid(const uint8_t* data, Py_ssize_t start, Py_ssize_t end):
    return _dicom_text(data, start, end, NAME_WIDTH, False)


cdef inline uint32_t _c_u32(cursor* c) except? 0xFFFFFFFF:
    cdef Py_ssize_t start = _advance(c, 4)
    return ((<uint32_t>c.data[start] << 24) | (<uint32_t>c.data[start + 1] << 16)
            | (<uint32_t>c.data[start + 2] << 8) | c.data[start + 3])


cdef inline uint32_t _c_u16le(cursor* c) except? 0xFFFFFFFF:
    cdef Py_ssize_t start = _advance(c, 2)
    return c.data[start] | (c.data[start + 1] << 8)


cdef inline uint32_t _c_u32le(cursor* c) except? 0xFFFFFFFF:
    cdef Py_ssize_t start = _advance(c, 4)
    return (c.data[start] | (c.data[start + 1] << 8) | (c.data[start + 2] << 16)
            | (<uint32_t>c.data[start + 3] << 24))


cdef int _dicom_associate(cursor* body, bint is_request, dict fields) except -1:
    cdef Py_ssize_t start, value_length
    cdef uint32_t item_type, sub_type, context_id, result
    cdef cursor item
    cdef str called, calling, value
    cdef dict context
    _advance(body, 4)  # protocol version, reserved
    start = _advance(body, AE_TITLE_LENGTH)
    called = _dicom_text(body.data, start, start + AE_TITLE_LENGTH, AE_TITLE_LENGTH, True)
    start = _advance(body, AE_TITLE_LENGTH)
    calling = _dicom_text(body.data, start, start + AE_TITLE_LENGTH, AE_TITLE_LENGTH, True)
    _advance(body, 32)
    if is_request:
        fields["called_ae"] = called
        fields["calling_ae"] = calling
    contexts = fields.setdefault("presentation_contexts", [])
    by_id = {c["id"]: c for c in contexts}
    while body.position < body.end:
        item_type = _c_u8(body)
        _advance(body, 1)
        item = _c_sub(body, _c_u16(body))
        if item_type == 0x10:
            start = _advance(&item, item.end - item.position)
            fields["application_context"] = _uid(item.data, start, item.end)
        elif item_type == 0x20 or item_type == 0x21:
            context_id = _c_u8(&item)
            _advance(&item, 1)
            result = _c_u8(&item)
            _advance(&item, 1)
            context = by_id.get(context_id)
            if context is None:
                if len(contexts) >= MAX_ITEMS:
                    continue
                context = {"id": context_id, "abstract_syntax": "", "sop_class": "",
                           "transfer_syntaxes": [], "result": None,
                           "accepted_transfer_syntax": ""}
                contexts.append(context)
                by_id[context_id] = context
            if item_type == 0x21:
                context["result"] = result
            while item.position < item.end:
                sub_type = _c_u8(&item)
                _advance(&item, 1)
                value_length = _c_u16(&item)
                start = _advance(&item, value_length)
                value = _uid(item.data, start, start + value_length)
                if sub_type == 0x30:
                    context["abstract_syntax"] = value
                    context["sop_class"] = SOP_CLASS_NAMES.get(value, "")
                elif sub_type == 0x40 and item_type == 0x21:
                    context["accepted_transfer_syntax"] = value
                elif sub_type == 0x40 and len(context["transfer_syntaxes"]) < MAX_ITEMS:
                    context["transfer_syntaxes"].append(value)
        elif item_type == 0x50:
            side = "requestor" if is_request else "acceptor"
            while item.position < item.end:
                sub_type = _c_u8(&item)
                _advance(&item, 1)
                value_length = _c_u16(&item)
                start = _advance(&item, value_length)
                if sub_type == 0x52:
                    fields[f"{side}_implementation_class_uid"] = _uid(item.data, start, start + value_length)
                elif sub_type == 0x55:
                    fields[f"{side}_implementation_version"] = _dicom_text(
                        item.data, start, start + value_length, 16, True)
    return 0


cdef dict _dimse_command_set(bytes command):
    """Read a DIMSE command set (implicit VR little endian, group 0000 only)."""
    cdef cursor reader
    cdef uint32_t group, element, length, code
    cdef Py_ssize_t start
    record = {"command": "", "sop_class": "", "status": None, "move_destination": ""}
    reader.data = <const uint8_t*><const char*>command
    reader.position = 0
    reader.end = len(command)
    while reader.position < reader.end:
        group = _c_u16le(&reader)
        element = _c_u16le(&reader)
        length = _c_u32le(&reader)
        start = _advance(&reader, length)
        if group != 0x0000:
            raise Malformed(f"command set element in group {group:#06x}, expected 0x0000")
        if element == 0x0100 and length >= 2:
            code = reader.data[start] | (reader.data[start + 1] << 8)
            name = DIMSE_COMMANDS.get(code)
            record["command"] = name if name is not None else f"0x{code:04x}"
        elif element == 0x0002 or element == 0x0003:
            record["sop_class"] = _uid(reader.data, start, start + length)
        elif element == 0x0900 and length >= 2:
            record["status"] = reader.data[start] | (reader.data[start + 1] << 8)
        elif element == 0x0600:
            record["move_destination"] = _dicom_text(reader.data, start, start + length, AE_TITLE_LENGTH, True)
    return record


cdef int _dicom_pdata(cursor* body, int direction, dict fields, dict pending) except -1:
    cdef cursor pdv
    cdef uint32_t control
    cdef Py_ssize_t start
    cdef bytes fragment, buffered
    commands = fields.setdefault("commands", [])
    while body.position < body.end:
        pdv = _c_sub(body, _c_u32(body))
        _advance(&pdv, 1)  # presentation context id
        control = _c_u8(&pdv)
        start = _advance(&pdv, pdv.end - pdv.position)
        if not control & 0x01:
            # A data set fragment: patient tags live here, so only count it.
            fields["dataset_bytes"] = fields.get("dataset_bytes", 0) + (pdv.end - start)
            continue
        fragment = (<const char*>pdv.data)[start:pdv.end]
        buffered = pending.get(direction, b"") + fragment
        if not control & 0x02:
            pending[direction] = buffered[:MAX_COMMAND_BUFFER]
            continue
        pending[direction] = b""
        if len(commands) < MAX_DICOM_COMMANDS:
            record = _dimse_command_set(buffered)
            record["direction"] = direction
            commands.append(record)
    return 0


cdef int _dicom_direction(bytes stream, int direction, dict fields, dict pending) except -1:
    cdef cursor reader, body
    cdef uint32_t pdu_type, length
    cdef Py_ssize_t available
    cdef bint cut
    cdef list pdus = fields["pdus"]
    reader.data = <const uint8_t*><const char*>stream
    reader.position = 0
    reader.end = len(stream)
    while reader.position < reader.end:
        pdu_type = _c_u8(&reader)
        _advance(&reader, 1)
        length = _c_u32(&reader)
        if pdu_type < 0x01 or pdu_type > 0x07 or length >= MAX_PDU_LENGTH:
            raise Malformed(f"invalid DICOM PDU type {pdu_type:#04x} or length {length}")
        name = DICOM_PDU_TYPES[pdu_type]
        if len(pdus) < MAX_DICOM_PDUS:
            pdus.append(name)
        # A P-DATA-TF may be longer than the stream cap: parse what was captured.
        available = reader.end - reader.position
        cut = length > available
        body = _c_sub(&reader, min(<Py_ssize_t>length, available))
        if pdu_type == 0x01 or pdu_type == 0x02:
            _dicom_associate(&body, pdu_type == 0x01, fields)
            if pdu_type == 0x02:
                fields["association"] = "accepted"
        elif pdu_type == 0x03:
            _advance(&body, 1)
            fields["association"] = "rejected"
            # PS3.8 9.3.4: result 1 permanent / 2 transient, source, reason.
            fields["reject"] = {"result": _c_u8(&body), "source": _c_u8(&body), "reason": _c_u8(&body)}
        elif pdu_type == 0x04:
            _dicom_pdata(&body, direction, fields, pending)
        elif pdu_type == 0x07:
            _advance(&body, 2)
            fields["abort"] = {"direction": direction, "source": _c_u8(&body), "reason": _c_u8(&body)}
        elif pdu_type == 0x06:
            fields["released"] = True
        if cut:
            raise Truncated(f"{name} PDU of {length} bytes cut by the capture")
    return 0


def parse_dicom(bytes initiator not None, bytes responder not None, dict fields not None):
    """Fill `fields` with association, DIMSE command and abort details.

    Same fields and exceptions as engine.inspect.clinical.parse_dicom.
    """
    cdef dict pending = {}
    cut_directions = []
    fields.setdefault("pdus", [])
    for direction, stream in ((0, initiator), (1, responder)):
        try:
            _dicom_direction(stream, direction, fields, pending)
        except Truncated:
            cut_directions.append(direction)
    if cut_directions:
        raise Truncated(f"DICOM PDU cut by the capture in directions {cut_directions}")


# --- Kerberos 5 KDC messages (RFC 4120 section 5.4 and 5.9.1) ----------------

from engine.inspect.asn1 import KERBEROS_ERRORS, KERBEROS_LOGIN_FAILURES, KERBEROS_MESSAGES

cdef enum: MAX_KERBEROS_NAME_PARTS = 4  # name-string components joined into a principal


cdef struct context_parts:
    # The [n] context-tagged elements of a SEQUENCE body (asn1.context_fields).
    uint32_t present    # bit n is set when [n] was found
    cursor values[32]   # value of [n]; a later [n] replaces an earlier one


cdef int _ber_tlv(cursor* reader, uint32_t* tag, cursor* value, bint* cut) except -1:
    # asn1.read_tlv: a declared length past the captured bytes gives the
    # captured part and sets cut.
    cdef uint32_t first, count, length = 0
    cdef Py_ssize_t start, remaining
    cdef int i
    tag[0] = _c_u8(reader)
    if tag[0] & 0x1F == 0x1F:
        for i in range(4):
            if not _c_u8(reader) & 0x80:
                break
        else:
            raise Malformed("BER tag number longer than 4 bytes")
    first = _c_u8(reader)
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise Malformed("indefinite BER length")
    else:
        count = first & 0x7F
        if count > 4:
            raise Malformed(f"BER length of {count} bytes")
        start = _advance(reader, count)
        for i in range(count):
            length = (length << 8) | reader.data[start + i]
    remaining = reader.end - reader.position
    value.data = reader.data
    cut[0] = length > remaining
    if cut[0]:
        length = remaining
    value.position = _advance(reader, length)
    value.end = value.position + length
    return 0


cdef int _context_fields(cursor* reader, context_parts* parts) except -1:
    cdef uint32_t tag
    cdef cursor value
    cdef bint cut
    parts.present = 0
    while reader.position < reader.end:
        _ber_tlv(reader, &tag, &value, &cut)
        if tag & 0xC0 == 0x80:
            parts.values[tag & 0x1F] = value
            parts.present |= <uint32_t>1 << (tag & 0x1F)
        if cut:
            break
    return 0


cdef inline bint _has_part(context_parts* parts, int number) noexcept nogil:
    return (parts.present >> number) & 1


cdef str _krb_principal(cursor* reader):
    cdef uint32_t tag
    cdef cursor sequence, strings, value
    cdef context_parts parts
    cdef bint cut
    cdef list names = []
    _ber_tlv(reader, &tag, &sequence, &cut)
    _context_fields(&sequence, &parts)
    if _has_part(&parts, 1):
        _ber_tlv(&parts.values[1], &tag, &strings, &cut)
        while strings.position < strings.end and len(names) < MAX_KERBEROS_NAME_PARTS:
            _ber_tlv(&strings, &tag, &value, &cut)
            names.append((<const char*>value.data)[value.position:value.end])
    joined = b"/".join(names)
    return _clean_text(<const uint8_t*><const char*>joined, len(joined), NAME_WIDTH)


cdef str _krb_string(cursor* reader):
    cdef uint32_t tag
    cdef cursor value
    cdef bint cut
    _ber_tlv(reader, &tag, &value, &cut)
    return _clean_text(value.data + value.position, value.end - value.position, HOST_WIDTH)


cdef int _krb_message(const uint8_t* data, Py_ssize_t start, Py_ssize_t end,
                      list requests, list errors, list replies) except -1:
    cdef cursor reader, application, sequence, body_sequence, code_value
    cdef context_parts parts, body
    cdef uint32_t tag, ignored_tag
    cdef bint cut
    reader.data = data
    reader.position = start
    reader.end = end
    _ber_tlv(&reader, &tag, &application, &cut)
    kind = KERBEROS_MESSAGES.get(tag)
    if kind is None:
        raise Malformed(f"Kerberos application tag {tag:#04x} is not a KDC message")
    _ber_tlv(&application, &ignored_tag, &sequence, &cut)
    _context_fields(&sequence, &parts)
    if kind == "AS-REQ" or kind == "TGS-REQ":
        if not _has_part(&parts, 4):
            raise Truncated("KDC-REQ without req-body")
        _ber_tlv(&parts.values[4], &ignored_tag, &body_sequence, &cut)
        _context_fields(&body_sequence, &body)
        client = _krb_principal(&body.values[1]) if _has_part(&body, 1) else ""
        realm = _krb_string(&body.values[2]) if _has_part(&body, 2) else ""
        service = _krb_principal(&body.values[3]) if _has_part(&body, 3) else ""
        if len(requests) < MAX_ITEMS:
            requests.append({"type": kind, "client": client, "realm": realm, "service": service})
    elif kind == "AS-REP" or kind == "TGS-REP":
        realm = _krb_string(&parts.values[3]) if _has_part(&parts, 3) else ""
        client = _krb_principal(&parts.values[4]) if _has_part(&parts, 4) else ""
        if len(replies) < MAX_ITEMS:
            replies.append({"type": kind, "realm": realm, "client": client})
    else:
        code = -1
        if _has_part(&parts, 6):
            _ber_tlv(&parts.values[6], &ignored_tag, &code_value, &cut)
            # INTEGER value bytes, two's complement (asn1.read_integer).
            if code_value.end == code_value.position or code_value.end - code_value.position > 8:
                raise Malformed(f"BER integer of {code_value.end - code_value.position} bytes")
            code = int.from_bytes((<const char*>code_value.data)[code_value.position:code_value.end],
                                  "big", signed=True)
        error_name = KERBEROS_ERRORS.get(code)
        client = _krb_principal(&parts.values[8]) if _has_part(&parts, 8) else ""
        realm = _krb_string(&parts.values[9]) if _has_part(&parts, 9) else ""
        if len(errors) < MAX_ITEMS:
            errors.append({
                "error_code": code,
                "error": error_name if error_name is not None else str(code),
                "client": client,
                "realm": realm,
            })
    return 0


cdef list _krb_split(bytes stream, bint is_udp):
    """Return (start, end) of each message (asn1.kerberos_messages): 4-byte record mark on TCP, 2-byte prefix on UDP."""
    cdef cursor reader
    cdef uint32_t length
    cdef Py_ssize_t start, available
    cdef list ranges = []
    reader.data = <const uint8_t*><const char*>stream
    reader.position = 0
    reader.end = len(stream)
    while reader.position < reader.end and len(ranges) < MAX_ITEMS:
        length = _c_u16(&reader) if is_udp else _c_u32(&reader) & 0x7FFFFFFF
        available = reader.end - reader.position
        start = _advance(&reader, min(<Py_ssize_t>length, available))
        ranges.append((start, reader.position))
    return ranges


def parse_kerberos(bytes initiator not None, bytes responder not None, dict fields not None, bint is_udp=False):
    """Fill `fields` with request principals, replies and error codes.

    Same fields and exceptions as engine.inspect.asn1.parse_kerberos.
    """
    cdef list requests = fields.setdefault("requests", [])
    cdef list errors = fields.setdefault("errors", [])
    cdef list replies = fields.setdefault("replies", [])
    cdef bint truncated = False
    cdef bytes stream
    for stream in (initiator, responder):
        # The reference splits a whole stream before parsing any of it, so a
        # cut length prefix ends the parse before that stream's messages.
        ranges = _krb_split(stream, is_udp)
        for start, end in ranges:
            try:
                _krb_message(<const uint8_t*><const char*>stream, start, end, requests, errors, replies)
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
