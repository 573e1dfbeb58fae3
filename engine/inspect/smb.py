"""Parsers for SMB negotiation ([MS-SMB], [MS-SMB2]) and the RDP connection request ([MS-RDPBCGR]).

SMB runs over the direct-TCP transport (RFC 1001/1002 session header: one
zero byte and a 3-byte length) on port 445 or NetBIOS 139.
"""

from __future__ import annotations

import re

from engine.inspect.wire import MAX_ITEMS, NAME_WIDTH, Malformed, Reader, Truncated, clean_text

SMB1_MAGIC = b"\xffSMB"
SMB2_MAGIC = b"\xfeSMB"
SMB2_TRANSFORM_MAGIC = b"\xfdSMB"  # encrypted message
SMB2_COMPRESSION_MAGIC = b"\xfcSMB"  # compression transform (SMB 3.1.1)
SMB1_NEGOTIATE = 0x72
# [MS-CIFS] 2.2.4.52.2: the server found none of the offered dialects acceptable.
SMB1_NO_DIALECT = 0xFFFF
SMB2_NEGOTIATE = 0x0000
SMB2_DIALECT_311 = 0x0311
SMB2_COMPRESSION_CAPABILITIES = 0x0003  # negotiate context type
SMB2_COMPRESSION_ALGORITHMS = {0: "none", 1: "LZNT1", 2: "LZ77", 3: "LZ77+Huffman", 4: "Pattern_V1", 5: "LZ4"}
SMB2_DIALECTS = {0x0202: "2.0.2", 0x0210: "2.1", 0x0300: "3.0", 0x0302: "3.0.2", 0x0311: "3.1.1", 0x02FF: "2.x"}
MAX_SMB_MESSAGES = 32
# RFC 1002 4.3.1 packet types other than SESSION MESSAGE (0x00): session
# request, positive and negative response, retarget response, keep-alive.
# NetBIOS on port 139 sends them around the SMB messages.
NBSS_SESSION_REQUEST = 0x81
NBSS_POSITIVE_RESPONSE = 0x82
NBSS_CONTROL_TYPES = frozenset((NBSS_SESSION_REQUEST, NBSS_POSITIVE_RESPONSE, 0x83, 0x84, 0x85))


def looks_like_smb(stream: bytes) -> bool:
    """Return True when a stream starts with a session message containing an SMB header.

    On NetBIOS port 139 the first session message follows a session request
    (client) or a positive session response (server), which are skipped.
    """
    start = 0
    if len(stream) >= 4 and stream[0] in (NBSS_SESSION_REQUEST, NBSS_POSITIVE_RESPONSE):
        start = 4 + int.from_bytes(stream[1:4], "big")
    return len(stream) >= start + 8 and stream[start] == 0 and stream[start + 4 : start + 8] in (
        SMB1_MAGIC, SMB2_MAGIC, SMB2_TRANSFORM_MAGIC, SMB2_COMPRESSION_MAGIC
    )


def _dialect_name(code: int) -> str:
    return SMB2_DIALECTS.get(code, f"0x{code:04x}")


def _parse_smb1(message: Reader, is_request: bool, fields: dict) -> None:
    message.skip(4)
    command = message.u8()
    message.skip(27)
    if command != SMB1_NEGOTIATE:
        fields["smb1_other_commands"] += 1
        return
    word_count = message.u8()
    if is_request:
        fields["smb1_negotiate_request"] = True
        message.skip(2 * word_count)
        data = message.take(min(message.u16le(), message.remaining))
        dialects = [clean_text(d.lstrip(b"\x02"), NAME_WIDTH) for d in data.split(b"\x00") if d]
        fields["smb1_dialects"] = dialects[:MAX_ITEMS]
    elif word_count >= 1:
        # Every SMB1 Negotiate Response format (core, LAN Manager, NT LM 0.12)
        # starts its parameter words with DialectIndex.
        fields["smb1_dialect_index"] = message.u16le()


def _compression_algorithms(message: bytes, offset: int, count: int) -> list[str] | None:
    """Return the algorithm names of the SMB2_COMPRESSION_CAPABILITIES negotiate context, or None without one.

    Negotiate contexts ([MS-SMB2] 2.2.3.1) start at `offset` from the SMB2
    header, each 8-byte aligned: ContextType, DataLength, 4 reserved bytes,
    then the data. Contexts the capture cut are not read.
    """
    for _ in range(min(count, MAX_ITEMS)):
        if offset + 8 > len(message):
            return None
        context_type = int.from_bytes(message[offset : offset + 2], "little")
        data_length = int.from_bytes(message[offset + 2 : offset + 4], "little")
        data = message[offset + 8 : offset + 8 + data_length]
        if context_type == SMB2_COMPRESSION_CAPABILITIES and len(data) >= 8:
            # CompressionAlgorithmCount, Padding, Flags, then the algorithm ids.
            algorithm_count = int.from_bytes(data[:2], "little")
            ids = [int.from_bytes(data[8 + 2 * i : 10 + 2 * i], "little")
                   for i in range(min(algorithm_count, MAX_ITEMS, (len(data) - 8) // 2))]
            return [SMB2_COMPRESSION_ALGORITHMS.get(i, f"0x{i:04x}") for i in ids]
        offset += (8 + data_length + 7) & ~7
    return None


def _parse_smb2(message: Reader, is_request: bool, fields: dict) -> None:
    message.skip(4)
    if message.u16le() != 64:
        raise Malformed("SMB2 header structure size is not 64")
    message.skip(6)
    command = message.u16le()
    message.skip(50)
    if command != SMB2_NEGOTIATE:
        return
    if is_request:
        message.skip(2)
        count = message.u16le()
        message.skip(24)
        context_offset = message.u32le()
        context_count = message.u16le()
        message.skip(2)
        codes = [message.u16le() for _ in range(min(count, MAX_ITEMS))]
        fields["client_dialects"] = [_dialect_name(c) for c in codes]
        if SMB2_DIALECT_311 in codes:
            algorithms = _compression_algorithms(message.buffer, context_offset, context_count)
            if algorithms is not None:
                fields["client_compression"] = algorithms
    else:
        message.skip(4)
        dialect = message.u16le()
        fields["dialect"] = _dialect_name(dialect)
        if dialect == SMB2_DIALECT_311:
            context_count = message.u16le()
            message.skip(52)
            algorithms = _compression_algorithms(message.buffer, message.u32le(), context_count)
            if algorithms is not None:
                fields["server_compression"] = algorithms


def _compression_header(message: Reader, direction: int, message_length: int, fields: dict) -> None:
    """Record the fields of an SMB2 COMPRESSION_TRANSFORM_HEADER ([MS-SMB2] 2.2.42).

    ProtocolId, OriginalCompressedSegmentSize, CompressionAlgorithm, Flags,
    then Offset (unchained) or Length (chained), all little-endian. The
    bounds check is left to the finding, so this only reads.
    """
    message.skip(4)
    header = {
        "direction": direction,
        "original_size": message.u32le(),
        "algorithm": message.u16le(),
        "flags": message.u16le(),
        "offset": message.u32le(),
        "message_length": message_length,
    }
    headers = fields.setdefault("compression_headers", [])
    if len(headers) < MAX_ITEMS:
        headers.append(header)


def _smb1_negotiated(fields: dict) -> bool:
    """Store the dialect that the server's SMB1 Negotiate Response selected, and return True for an SMB1 dialect.

    Windows clients that speak SMB2 open with an SMB1 Negotiate Request offering
    "SMB 2.002" and "SMB 2.???" next to "NT LM 0.12". A server that picks
    SMB2 responds with an SMB2 Negotiate Response ([MS-SMB2] 3.3.5.3.1), so
    that opening alone does not mean SMB1 is in use.
    """
    index = fields.get("smb1_dialect_index")
    if index is None or index == SMB1_NO_DIALECT:
        return False
    dialects = fields.get("smb1_dialects")
    if dialects is None or index >= len(dialects):
        # The request was not captured, or listed more than MAX_ITEMS
        # dialects. Only an SMB1 server responds in SMB1 format, so the
        # flow counts as SMB1.
        return True
    fields["smb1_dialect"] = dialects[index]
    return not dialects[index].startswith("SMB 2.")


def _parse_session_messages(reader: Reader, is_request: bool, fields: dict) -> None:
    """Parse the SMB messages of one direction, up to MAX_SMB_MESSAGES NetBIOS session packets."""
    for _ in range(MAX_SMB_MESSAGES):
        if not reader.remaining:
            return
        packet_type = reader.u8()
        length = reader.u24()
        if packet_type in NBSS_CONTROL_TYPES:
            if length > reader.remaining:
                raise Truncated("NetBIOS session packet cut by the capture")
            reader.skip(length)
            continue
        if packet_type != 0:
            raise Malformed(f"invalid NetBIOS session packet type 0x{packet_type:02x}")
        message = Reader(reader.take(min(length, reader.remaining)))
        magic = message.buffer[:4]
        if magic == SMB1_MAGIC:
            _parse_smb1(message, is_request, fields)
        elif magic == SMB2_MAGIC:
            _parse_smb2(message, is_request, fields)
        elif magic == SMB2_COMPRESSION_MAGIC:
            fields["compression_transform"] = True
            _compression_header(message, 0 if is_request else 1, length, fields)
        elif magic == SMB2_TRANSFORM_MAGIC:
            fields["encrypted"] = True
        else:
            raise Malformed(f"unknown SMB protocol id {magic!r}")
        if length > len(message.buffer):
            raise Truncated("SMB message cut by the capture")


def parse_smb(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with SMB versions seen, offered dialects, the chosen one, and whether SMB1 is in use.

    `smb1` is True when the server selected an SMB1 dialect (NT LM 0.12 or
    older) or an SMB1 message other than Negotiate was seen. SMB 3.1.1
    negotiation adds `client_compression` and `server_compression`, and
    each compression transform header adds an entry to `compression_headers`.
    """
    fields["smb1"] = False
    fields["smb1_negotiate_request"] = False
    fields["smb1_other_commands"] = 0
    fields["compression_transform"] = False
    fields["encrypted"] = False
    truncated = False
    try:
        for is_request, stream in ((True, initiator), (False, responder)):
            try:
                _parse_session_messages(Reader(stream), is_request, fields)
            except Truncated:
                truncated = True
    finally:
        # Messages parsed before a malformed one still show whether SMB1 is in use.
        fields["smb1"] = _smb1_negotiated(fields) or fields["smb1_other_commands"] > 0
    if truncated:
        raise Truncated("SMB message cut by the capture")


# --- RDP: X.224 connection request and MCS client data ------------------------

RDP_PROTOCOLS = {0: "rdp", 1: "ssl", 2: "hybrid", 4: "rdstls", 8: "hybrid_ex"}
X224_CONNECTION_REQUEST = 0xE0
X224_CONNECTION_CONFIRM = 0xD0
# TS_UD_HEADER type 0xC001 (CS_CORE), any length, then an RDP version
# 0x000800nn. Matching the version avoids the same two bytes elsewhere in GCC.
CS_CORE = re.compile(rb"\x01\xc0..[\x01-\x0f]\x00\x08\x00", re.DOTALL)
CS_NET = re.compile(rb"\x03\xc0..[\x00-\x1f]\x00\x00\x00", re.DOTALL)
# Public build numbers of Windows releases, as sent in clientBuild.
WINDOWS_BUILDS = {2600: "Windows XP", 3790: "Windows Server 2003", 6000: "Windows Vista",
                  7600: "Windows 7", 7601: "Windows 7 SP1", 9200: "Windows 8", 9600: "Windows 8.1"}


def looks_like_rdp(stream: bytes) -> bool:
    """Return True when a stream starts with a TPKT-framed X.224 connection request."""
    return len(stream) >= 11 and stream[0] == 3 and stream[1] == 0 and stream[5] == X224_CONNECTION_REQUEST


def _protocol_names(mask: int) -> list[str]:
    if mask == 0:
        return ["rdp"]
    return [name for bit, name in RDP_PROTOCOLS.items() if bit and mask & bit]


def parse_rdp(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with the cookie, requested and selected security protocols and client data."""
    reader = Reader(initiator)
    reader.skip(2)
    tpkt_length = reader.u16()
    request = Reader(reader.take(min(tpkt_length, len(initiator)) - 4))
    request.skip(1)
    if request.u8() != X224_CONNECTION_REQUEST:
        raise Malformed("X.224 TPDU is not a connection request")
    request.skip(5)

    rest = request.take(request.remaining)
    line_end = rest.find(b"\r\n")
    if rest.startswith(b"Cookie: mstshash="):
        fields["cookie"] = clean_text(rest[len(b"Cookie: mstshash="): line_end if line_end >= 0 else None], NAME_WIDTH)
    negotiation = rest[line_end + 2:] if line_end >= 0 else rest
    if len(negotiation) >= 8 and negotiation[0] == 0x01:
        fields["requested_protocols"] = _protocol_names(int.from_bytes(negotiation[4:8], "little"))
    if len(responder) >= 19 and responder[5] == X224_CONNECTION_CONFIRM and responder[11] == 0x02:
        fields["selected_protocol"] = RDP_PROTOCOLS.get(int.from_bytes(responder[15:19], "little"), "unknown")

    match = CS_CORE.search(initiator)
    core = match.start() if match else -1
    if core >= 0 and len(initiator) >= core + 56:
        # TS_UD_CS_CORE: header 4, version 4, desktop size 4, colour depth and
        # SAS sequence 4, keyboard layout 4, then clientBuild and clientName.
        build = int.from_bytes(initiator[core + 20 : core + 24], "little")
        fields["client_build"] = WINDOWS_BUILDS.get(build, str(build))
        name = initiator[core + 24 : core + 56].decode("utf-16-le", errors="replace").split("\x00")[0]
        fields["client_name"] = clean_text(name.encode(), NAME_WIDTH)
    match = CS_NET.search(initiator, core if core >= 0 else 0)
    network = match.start() if match else -1
    if network >= 0 and len(initiator) >= network + 8:
        count = min(int.from_bytes(initiator[network + 4 : network + 8], "little"), MAX_ITEMS)
        channels = []
        for index in range(count):
            start = network + 8 + 12 * index
            if start + 8 > len(initiator):
                break
            channels.append(clean_text(initiator[start : start + 8].rstrip(b"\x00"), 8))
        fields["channels"] = channels

    user = fields.get("cookie")
    fields["_logins"] = [(user, "unknown")] if user else []
    if tpkt_length > len(initiator):
        raise Truncated("X.224 connection request cut by the capture")
