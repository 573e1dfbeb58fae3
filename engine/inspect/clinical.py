"""Parsers for the clinical protocols: HL7 v2 over MLLP, DICOM upper layer, MQTT.

Each parse_* function takes the captured initiator and responder streams
of one flow and fills `fields` (a dict documented in docs/inspect.md). It
returns normally or raises Truncated / Malformed, keeping what it parsed.

Patient data stays out of results. HL7 parsing reads only the MSH and MSA
segments: other segments contribute their three-letter id, never their
fields. DICOM parsing reads only association items and command sets (group
0000), never data sets, which is where patient tags live.
"""

from __future__ import annotations

from engine.inspect.wire import (
    MAX_ITEMS,
    NAME_WIDTH,
    PATH_WIDTH,
    Malformed,
    Reader,
    Truncated,
    clean_text,
)

# --- HL7 v2 over MLLP (HL7 v2.5 Appendix C: MLLP) -------------------------

MLLP_START_BLOCK = 0x0B
MLLP_END_BLOCK = b"\x1c\x0d"
HL7_ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
# Segments that carry patient identity or care details. Their presence is
# reported (so cleartext patient data can be flagged), their fields are not.
HL7_PATIENT_SEGMENTS = frozenset({"PID", "PD1", "NK1", "PV1", "PV2", "OBX", "GT1", "IN1", "DG1", "AL1"})
MAX_HL7_MESSAGES = 16


def looks_like_hl7(stream: bytes) -> bool:
    """Return True when a stream starts with an MLLP block or a bare MSH segment."""
    if stream[:1] == bytes([MLLP_START_BLOCK]):
        return stream[1:5] == b"MSH|"
    return stream[:4] == b"MSH|"


def split_mllp(stream: bytes) -> tuple[list[bytes], str, bool]:
    """Split a stream into HL7 messages.

    Returns (messages, framing, truncated), where framing is "mllp" or
    "none" (a bare message without MLLP blocks), and truncated is True when
    the last block has no end marker within the capture.
    """
    if stream[:1] != bytes([MLLP_START_BLOCK]):
        return ([stream] if stream.startswith(b"MSH") else []), "none", False
    messages = []
    position = 0
    while position < len(stream) and len(messages) < MAX_HL7_MESSAGES:
        start = stream.find(bytes([MLLP_START_BLOCK]), position)
        if start < 0:
            break
        end = stream.find(MLLP_END_BLOCK, start + 1)
        if end < 0:
            messages.append(stream[start + 1 :])
            return messages, "mllp", True
        messages.append(stream[start + 1 : end])
        position = end + len(MLLP_END_BLOCK)
    return messages, "mllp", False


def parse_hl7_message(message: bytes) -> dict:
    """Return the routing fields of one HL7 v2 message (MSH and MSA only)."""
    segments = [s for s in message.replace(b"\n", b"\r").split(b"\r") if s]
    if not segments or not segments[0].startswith(b"MSH"):
        raise Malformed("HL7 message does not start with an MSH segment")
    header = segments[0]
    if len(header) < 8:
        raise Truncated("MSH segment shorter than its encoding characters")

    field_separator = header[3:4]
    # MSH-1 is the field separator itself, so after splitting, MSH-n is at n-1.
    msh = header.split(field_separator)
    while len(msh) < 12:
        msh.append(b"")
    record = {
        "sending_application": clean_text(msh[2], NAME_WIDTH),
        "sending_facility": clean_text(msh[3], NAME_WIDTH),
        "receiving_application": clean_text(msh[4], NAME_WIDTH),
        "receiving_facility": clean_text(msh[5], NAME_WIDTH),
        "message_type": clean_text(msh[8], NAME_WIDTH),
        "control_id": clean_text(msh[9], NAME_WIDTH),
        "processing_id": clean_text(msh[10], 8),
        "version": clean_text(msh[11], 16),
        "ack_code": "",
        "segments": [],
        "patient_segments": False,
    }

    for segment in segments[: 4 * MAX_ITEMS]:
        name = segment[:3].decode("ascii", errors="replace")
        if not name.isalnum():
            continue
        if len(record["segments"]) < 4 * MAX_ITEMS:
            record["segments"].append(name)
        if name in HL7_PATIENT_SEGMENTS:
            record["patient_segments"] = True
        if name == "MSA":
            msa = segment.split(field_separator)
            code = clean_text(msa[1], 8) if len(msa) > 1 else ""
            if code and code not in HL7_ACK_CODES:
                raise Malformed(f"invalid MSA-1 acknowledgment code {code!r}")
            record["ack_code"] = code
    return record


def parse_hl7(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with the MSH routing of each message in both directions."""
    fields.setdefault("messages", [])
    truncated = False
    for direction, stream in ((0, initiator), (1, responder)):
        messages, framing, cut = split_mllp(stream)
        truncated = truncated or cut
        if messages:
            fields["framing"] = framing
        for message in messages:
            try:
                record = parse_hl7_message(message)
            except Truncated:
                truncated = True
                continue
            record["direction"] = direction
            fields["messages"].append(record)
    fields["patient_data"] = any(m["patient_segments"] for m in fields["messages"])
    if truncated:
        raise Truncated("HL7 message cut by the capture or the stream cap")


# --- DICOM upper layer (PS3.8 section 9.3) and DIMSE commands (PS3.7) ------

DICOM_PDU_TYPES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
DIMSE_COMMANDS = {
    0x0001: "C-STORE-RQ", 0x8001: "C-STORE-RSP",
    0x0010: "C-GET-RQ", 0x8010: "C-GET-RSP",
    0x0020: "C-FIND-RQ", 0x8020: "C-FIND-RSP",
    0x0021: "C-MOVE-RQ", 0x8021: "C-MOVE-RSP",
    0x0030: "C-ECHO-RQ", 0x8030: "C-ECHO-RSP",
    0x0100: "N-EVENT-REPORT-RQ", 0x8100: "N-EVENT-REPORT-RSP",
    0x0110: "N-GET-RQ", 0x8110: "N-GET-RSP",
    0x0120: "N-SET-RQ", 0x8120: "N-SET-RSP",
    0x0130: "N-ACTION-RQ", 0x8130: "N-ACTION-RSP",
    0x0140: "N-CREATE-RQ", 0x8140: "N-CREATE-RSP",
    0x0150: "N-DELETE-RQ", 0x8150: "N-DELETE-RSP",
    0x0FFF: "C-CANCEL-RQ",
}
# Well-known SOP class UIDs (PS3.4 Annex B, C, K) named in results.
SOP_CLASS_NAMES = {
    "1.2.840.10008.1.1": "Verification",
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "US Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.2.1.1": "Patient Root Q/R FIND",
    "1.2.840.10008.5.1.4.1.2.1.2": "Patient Root Q/R MOVE",
    "1.2.840.10008.5.1.4.1.2.1.3": "Patient Root Q/R GET",
    "1.2.840.10008.5.1.4.1.2.2.1": "Study Root Q/R FIND",
    "1.2.840.10008.5.1.4.1.2.2.2": "Study Root Q/R MOVE",
    "1.2.840.10008.5.1.4.1.2.2.3": "Study Root Q/R GET",
    "1.2.840.10008.5.1.4.31": "Modality Worklist FIND",
}
MAX_PDU_LENGTH = 1 << 28  # larger declared lengths are malformed, not merely long
AE_TITLE_LENGTH = 16


def looks_like_dicom(stream: bytes) -> bool:
    """Return True when a stream starts with an A-ASSOCIATE-RQ or -AC PDU header."""
    if len(stream) < 10 or stream[0] not in (0x01, 0x02) or stream[1] != 0:
        return False
    length = int.from_bytes(stream[2:6], "big")
    # Protocol version 1 (PS3.8 9.3.2) is the only one defined.
    return 68 <= length < MAX_PDU_LENGTH and stream[6:8] == b"\x00\x01"


def _uid(raw: bytes) -> str:
    return clean_text(raw.rstrip(b"\x00 "), NAME_WIDTH)


def _parse_associate(body: Reader, is_request: bool, fields: dict) -> None:
    body.skip(4)  # protocol version, reserved
    called = clean_text(body.take(AE_TITLE_LENGTH).strip(b" \x00"), AE_TITLE_LENGTH)
    calling = clean_text(body.take(AE_TITLE_LENGTH).strip(b" \x00"), AE_TITLE_LENGTH)
    body.skip(32)
    if is_request:
        fields["called_ae"] = called
        fields["calling_ae"] = calling
    contexts = fields.setdefault("presentation_contexts", [])
    by_id = {c["id"]: c for c in contexts}
    while body.remaining:
        item_type = body.u8()
        body.skip(1)
        item = body.sub(body.u16())
        if item_type == 0x10:
            fields["application_context"] = _uid(item.take(item.remaining))
        elif item_type in (0x20, 0x21):
            context_id = item.u8()
            item.skip(1)
            result = item.u8()
            item.skip(1)
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
                # PS3.8 9.3.3.2: 0 acceptance, 1 user rejection, 2 no reason,
                # 3 abstract syntax not supported, 4 transfer syntaxes not supported.
                context["result"] = result
            while item.remaining:
                sub_type = item.u8()
                item.skip(1)
                value = _uid(item.take(item.u16()))
                if sub_type == 0x30:
                    context["abstract_syntax"] = value
                    context["sop_class"] = SOP_CLASS_NAMES.get(value, "")
                elif sub_type == 0x40 and item_type == 0x21:
                    context["accepted_transfer_syntax"] = value
                elif sub_type == 0x40 and len(context["transfer_syntaxes"]) < MAX_ITEMS:
                    context["transfer_syntaxes"].append(value)
        elif item_type == 0x50:
            while item.remaining:
                sub_type = item.u8()
                item.skip(1)
                value = item.take(item.u16())
                side = "requestor" if is_request else "acceptor"
                if sub_type == 0x52:
                    fields[f"{side}_implementation_class_uid"] = _uid(value)
                elif sub_type == 0x55:
                    fields[f"{side}_implementation_version"] = clean_text(value.strip(b" \x00"), 16)


def _parse_command_set(command: bytes) -> dict:
    """Read a DIMSE command set (implicit VR little endian, group 0000 only)."""
    reader = Reader(command)
    record = {"command": "", "sop_class": "", "status": None, "move_destination": ""}
    while reader.remaining:
        group = reader.u16le()
        element = reader.u16le()
        value = reader.take(reader.u32le())
        if group != 0x0000:
            raise Malformed(f"command set element in group {group:#06x}, expected 0x0000")
        if element == 0x0100 and len(value) >= 2:
            code = int.from_bytes(value[:2], "little")
            record["command"] = DIMSE_COMMANDS.get(code, f"0x{code:04x}")
        elif element in (0x0002, 0x0003):
            record["sop_class"] = _uid(value)
        elif element == 0x0900 and len(value) >= 2:
            record["status"] = int.from_bytes(value[:2], "little")
        elif element == 0x0600:
            record["move_destination"] = clean_text(value.strip(b" \x00"), AE_TITLE_LENGTH)
    return record


def _parse_pdata(body: Reader, direction: int, fields: dict, pending: dict) -> None:
    commands = fields.setdefault("commands", [])
    while body.remaining:
        pdv = body.sub(body.u32())
        pdv.skip(1)  # presentation context id
        control = pdv.u8()
        fragment = pdv.take(pdv.remaining)
        if not control & 0x01:
            # A data set fragment: patient tags live here, so only count it.
            fields["dataset_bytes"] = fields.get("dataset_bytes", 0) + len(fragment)
            continue
        buffered = pending.get(direction, b"") + fragment
        if not control & 0x02:
            pending[direction] = buffered[:65536]
            continue
        pending[direction] = b""
        if len(commands) < 2 * MAX_ITEMS:
            record = _parse_command_set(buffered)
            record["direction"] = direction
            commands.append(record)


def parse_dicom(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with association, DIMSE command and abort details."""
    fields.setdefault("pdus", [])
    pending: dict[int, bytes] = {}
    cut_directions = []
    for direction, stream in ((0, initiator), (1, responder)):
        try:
            _parse_dicom_direction(stream, direction, fields, pending)
        except Truncated:
            cut_directions.append(direction)
    if cut_directions:
        raise Truncated(f"DICOM PDU cut by the capture in directions {cut_directions}")


def _parse_dicom_direction(stream: bytes, direction: int, fields: dict, pending: dict) -> None:
    reader = Reader(stream)
    while reader.remaining:
        pdu_type = reader.u8()
        reader.skip(1)
        length = reader.u32()
        if pdu_type not in DICOM_PDU_TYPES or length >= MAX_PDU_LENGTH:
            raise Malformed(f"invalid DICOM PDU type {pdu_type:#04x} or length {length}")
        name = DICOM_PDU_TYPES[pdu_type]
        if len(fields["pdus"]) < 4 * MAX_ITEMS:
            fields["pdus"].append(name)
        # A P-DATA-TF may be longer than the stream cap: parse what was captured.
        cut = length > reader.remaining
        body = Reader(reader.take(min(length, reader.remaining)))
        if pdu_type in (0x01, 0x02):
            _parse_associate(body, pdu_type == 0x01, fields)
            if pdu_type == 0x02:
                fields["association"] = "accepted"
        elif pdu_type == 0x03:
            body.skip(1)
            fields["association"] = "rejected"
            # PS3.8 9.3.4: result 1 permanent / 2 transient, source, reason.
            fields["reject"] = {"result": body.u8(), "source": body.u8(), "reason": body.u8()}
        elif pdu_type == 0x04:
            _parse_pdata(body, direction, fields, pending)
        elif pdu_type == 0x07:
            body.skip(2)
            fields["abort"] = {"direction": direction, "source": body.u8(), "reason": body.u8()}
        elif pdu_type == 0x06:
            fields["released"] = True
        if cut:
            raise Truncated(f"{name} PDU of {length} bytes cut by the capture")


# --- MQTT 3.1.1 (OASIS 2014) and 5.0 (OASIS 2019) --------------------------

MQTT_PACKET_TYPES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}
MQTT_PROTOCOL_NAMES = (b"MQTT", b"MQIsdp")
MAX_MQTT_PACKETS = 64


def looks_like_mqtt(stream: bytes) -> bool:
    """Return True when a stream starts with an MQTT CONNECT packet."""
    if len(stream) < 9 or stream[0] != 0x10:
        return False
    reader = Reader(stream, 1)
    try:
        _read_varint(reader)
        name = reader.take(reader.u16())
    except (Truncated, Malformed):
        return False
    return name in MQTT_PROTOCOL_NAMES


def _read_varint(reader: Reader) -> int:
    value = 0
    for shift in (0, 7, 14, 21):
        byte = reader.u8()
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
    raise Malformed("MQTT variable byte integer longer than 4 bytes")


def _read_string(reader: Reader) -> bytes:
    return reader.take(reader.u16())


def _skip_properties(reader: Reader, version: int) -> None:
    if version == 5:
        reader.skip(_read_varint(reader))


def _parse_mqtt_connect(body: Reader, fields: dict) -> None:
    name = _read_string(body)
    if name not in MQTT_PROTOCOL_NAMES:
        raise Malformed(f"invalid MQTT protocol name {name[:8]!r}")
    version = body.u8()
    flags = body.u8()
    fields["protocol_version"] = version
    fields["keepalive_s"] = body.u16()
    fields["clean_session"] = bool(flags & 0x02)
    fields["username_present"] = bool(flags & 0x80)
    fields["password_present"] = bool(flags & 0x40)
    _skip_properties(body, version)
    fields["client_id"] = clean_text(_read_string(body), NAME_WIDTH)
    if flags & 0x04:
        _skip_properties(body, version)
        fields["will_topic"] = clean_text(_read_string(body), PATH_WIDTH)
        _read_string(body)
    if flags & 0x80:
        # Kept for the login record only; the password is skipped unread.
        fields["_username"] = clean_text(_read_string(body), NAME_WIDTH)


def parse_mqtt(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with CONNECT details, CONNACK code, topics and packet counts."""
    fields.setdefault("packets", {})
    fields.setdefault("published_topics", [])
    fields.setdefault("subscribed_topics", [])
    fields["wildcard_subscription"] = False
    cut_directions = []
    for direction, stream in ((0, initiator), (1, responder)):
        try:
            _parse_mqtt_direction(stream, fields)
        except Truncated:
            cut_directions.append(direction)
    if cut_directions:
        raise Truncated(f"MQTT packet cut by the capture in directions {cut_directions}")


def _parse_mqtt_direction(stream: bytes, fields: dict) -> None:
    reader = Reader(stream)
    count = 0
    while reader.remaining and count < MAX_MQTT_PACKETS:
        count += 1
        first = reader.u8()
        packet_type = first >> 4
        if packet_type == 0:
            raise Malformed("MQTT packet type 0 is reserved")
        name = MQTT_PACKET_TYPES[packet_type]
        length = _read_varint(reader)
        fields["packets"][name] = fields["packets"].get(name, 0) + 1
        # A PUBLISH may be far larger than the stream cap, so parse the part
        # that was captured (it contains the topic), then report the cut.
        cut = length > reader.remaining
        body = Reader(reader.take(min(length, reader.remaining)))
        version = fields.get("protocol_version", 4)
        if packet_type == 1:
            _parse_mqtt_connect(body, fields)
        elif packet_type == 2:
            body.skip(1)
            fields["connack_code"] = body.u8()
        elif packet_type == 3:
            topic = clean_text(_read_string(body), PATH_WIDTH)
            if topic not in fields["published_topics"] and len(fields["published_topics"]) < MAX_ITEMS:
                fields["published_topics"].append(topic)
        elif packet_type == 8:
            body.skip(2)
            _skip_properties(body, version)
            while body.remaining:
                topic = clean_text(_read_string(body), PATH_WIDTH)
                body.skip(1)
                if "#" in topic or "+" in topic:
                    fields["wildcard_subscription"] = True
                if topic not in fields["subscribed_topics"] and len(fields["subscribed_topics"]) < MAX_ITEMS:
                    fields["subscribed_topics"].append(topic)
        if cut:
            raise Truncated(f"MQTT {name} of {length} bytes cut by the capture")
