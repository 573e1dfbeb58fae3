"""DICOM upper layer PDUs (PS3.8 section 9) and DIMSE messages (PS3.7).

Command sets and datasets are Implicit VR Little Endian (transfer syntax
1.2.840.10008.1.2), the one transfer syntax every DICOM node must accept.
Each element is group (u16 LE), element (u16 LE), length (u32 LE), value,
with values padded to an even length: UIDs with NUL, text with a space.
"""

from __future__ import annotations

import struct

DICOM_PORT = 104  # tshark 4.0 dissects tcp/104 as DICOM without decode-as

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"  # synthetic root
IMPLEMENTATION_VERSION = "WARDSIM_1"

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"

# DIMSE command field values (PS3.7 table E.1-1).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0000
STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00

MAX_PDU_LENGTH = 16384


def _pad_uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) & 1 else raw


def _pad_text(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b" " if len(raw) & 1 else raw


def element(group: int, number: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, number, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def ul(value: int) -> bytes:
    return struct.pack("<I", value)


def command(elements: list[tuple[int, bytes]]) -> bytes:
    """Command set (group 0000) with its group length element first."""
    body = b"".join(element(0x0000, number, value) for number, value in sorted(elements))
    return element(0x0000, 0x0000, ul(len(body))) + body


def dataset(elements: list[tuple[int, int, bytes]]) -> bytes:
    return b"".join(element(g, e, v) for g, e, v in sorted(elements))


def ae_title(name: str) -> bytes:
    if len(name) > 16:
        raise ValueError(f"AE title {name!r} is longer than 16 characters")
    return name.encode("ascii").ljust(16, b" ")


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _user_information() -> bytes:
    return _item(0x50, _item(0x51, struct.pack(">I", MAX_PDU_LENGTH))
                 + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
                 + _item(0x55, IMPLEMENTATION_VERSION.encode()))


def associate_rq(called: str, calling: str, abstract_syntaxes: list[str]) -> bytes:
    """A-ASSOCIATE-RQ with one presentation context (odd ids 1, 3, ...) per abstract syntax."""
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for index, syntax in enumerate(abstract_syntaxes):
        items += _item(0x20, bytes([1 + 2 * index, 0, 0, 0])
                       + _item(0x30, syntax.encode()) + _item(0x40, IMPLICIT_VR_LE.encode()))
    items += _user_information()
    fixed = struct.pack(">HH", 1, 0) + ae_title(called) + ae_title(calling) + bytes(32)
    return _pdu(0x01, fixed + items)


def associate_ac(called: str, calling: str, context_count: int) -> bytes:
    """A-ASSOCIATE-AC accepting every proposed context with Implicit VR Little Endian."""
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for index in range(context_count):
        items += _item(0x21, bytes([1 + 2 * index, 0, 0, 0]) + _item(0x40, IMPLICIT_VR_LE.encode()))
    items += _user_information()
    fixed = struct.pack(">HH", 1, 0) + ae_title(called) + ae_title(calling) + bytes(32)
    return _pdu(0x02, fixed + items)


def associate_rj(reason: int = 3) -> bytes:
    """A-ASSOCIATE-RJ, rejected-permanent by the service user; reason 3 is "calling AE title not recognized"."""
    return _pdu(0x03, bytes([0, 1, 1, reason]))


def release_rq() -> bytes:
    return _pdu(0x05, bytes(4))


def release_rp() -> bytes:
    return _pdu(0x06, bytes(4))


def p_data(context_id: int, payload: bytes, is_command: bool, is_last: bool) -> bytes:
    """P-DATA-TF carrying one PDV (PS3.8 9.3.5.1 and annex E.2 for the control header)."""
    control = 0
    if is_command:
        control |= 1
    if is_last:
        control |= 2
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return _pdu(0x04, pdv)


def data_pdus(context_id: int, data: bytes) -> tuple[bytes, list[int]]:
    """Split a dataset into P-DATA-TF PDUs that fit the negotiated maximum PDU length.

    Returns the PDUs back to back, as one byte string, and the end offset of
    each PDU in it. Built in one buffer because datasets are megabytes.
    """
    fragment = MAX_PDU_LENGTH - 6  # PDV item header: length (4) + context id + control
    count = max(1, (len(data) + fragment - 1) // fragment)
    stream = bytearray(len(data) + 12 * count)  # PDU header (6) + PDV header (6) per fragment
    view = memoryview(data)
    ends = []
    position = 0
    for index in range(count):
        chunk = view[index * fragment:(index + 1) * fragment]
        control = 2 if index == count - 1 else 0  # dataset fragment; bit 1 marks the last one
        struct.pack_into(">BBIIBB", stream, position, 0x04, 0, len(chunk) + 6, len(chunk) + 2, context_id, control)
        stream[position + 12:position + 12 + len(chunk)] = chunk
        position += 12 + len(chunk)
        ends.append(position)
    return bytes(stream), ends


def echo_rq(message_id: int) -> bytes:
    return command([(0x0002, _pad_uid(VERIFICATION)), (0x0100, us(C_ECHO_RQ)),
                    (0x0110, us(message_id)), (0x0800, us(NO_DATASET))])


def echo_rsp(message_id: int) -> bytes:
    return command([(0x0002, _pad_uid(VERIFICATION)), (0x0100, us(C_ECHO_RSP)),
                    (0x0120, us(message_id)), (0x0800, us(NO_DATASET)),
                    (0x0900, us(STATUS_SUCCESS))])


def store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    return command([(0x0002, _pad_uid(sop_class)), (0x0100, us(C_STORE_RQ)),
                    (0x0110, us(message_id)), (0x0700, us(0)), (0x0800, us(DATASET_PRESENT)),
                    (0x1000, _pad_uid(sop_instance))])


def store_rsp(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    return command([(0x0002, _pad_uid(sop_class)), (0x0100, us(C_STORE_RSP)),
                    (0x0120, us(message_id)), (0x0800, us(NO_DATASET)),
                    (0x0900, us(STATUS_SUCCESS)), (0x1000, _pad_uid(sop_instance))])


def find_rq(message_id: int) -> bytes:
    return command([(0x0002, _pad_uid(STUDY_ROOT_FIND)), (0x0100, us(C_FIND_RQ)),
                    (0x0110, us(message_id)), (0x0700, us(0)), (0x0800, us(DATASET_PRESENT))])


def find_rsp(message_id: int, status: int) -> bytes:
    has_data = DATASET_PRESENT if status == STATUS_PENDING else NO_DATASET
    return command([(0x0002, _pad_uid(STUDY_ROOT_FIND)), (0x0100, us(C_FIND_RSP)),
                    (0x0120, us(message_id)), (0x0800, us(has_data)), (0x0900, us(status))])


def move_rq(message_id: int, destination: str) -> bytes:
    return command([(0x0002, _pad_uid(STUDY_ROOT_MOVE)), (0x0100, us(C_MOVE_RQ)),
                    (0x0110, us(message_id)), (0x0600, ae_title(destination)),
                    (0x0700, us(0)), (0x0800, us(DATASET_PRESENT))])


def move_rsp(message_id: int, status: int, remaining: int, completed: int) -> bytes:
    return command([(0x0002, _pad_uid(STUDY_ROOT_MOVE)), (0x0100, us(C_MOVE_RSP)),
                    (0x0120, us(message_id)), (0x0800, us(NO_DATASET)), (0x0900, us(status)),
                    (0x1020, us(remaining)), (0x1021, us(completed)), (0x1022, us(0)),
                    (0x1023, us(0))])


def study_query(level: str = "STUDY", patient_id: str = "") -> bytes:
    return dataset([(0x0008, 0x0052, _pad_text(level)), (0x0010, 0x0020, _pad_text(patient_id)),
                    (0x0020, 0x000D, b"")])


def study_match(patient_name: str, patient_id: str, study_uid: str, modality: str) -> bytes:
    return dataset([(0x0008, 0x0052, _pad_text("STUDY")), (0x0008, 0x0061, _pad_text(modality)),
                    (0x0010, 0x0010, _pad_text(patient_name)), (0x0010, 0x0020, _pad_text(patient_id)),
                    (0x0020, 0x000D, _pad_uid(study_uid))])


def image(sop_class: str, sop_instance: str, study_uid: str, series_uid: str, modality: str,
          patient_name: str, patient_id: str, pixels: bytes, rows: int, columns: int) -> bytes:
    """Build an image dataset with patient, study, series and 16-bit pixel data elements."""
    return dataset([
        (0x0008, 0x0016, _pad_uid(sop_class)),
        (0x0008, 0x0018, _pad_uid(sop_instance)),
        (0x0008, 0x0060, _pad_text(modality)),
        (0x0010, 0x0010, _pad_text(patient_name)),
        (0x0010, 0x0020, _pad_text(patient_id)),
        (0x0020, 0x000D, _pad_uid(study_uid)),
        (0x0020, 0x000E, _pad_uid(series_uid)),
        (0x0028, 0x0010, us(rows)),
        (0x0028, 0x0011, us(columns)),
        (0x0028, 0x0100, us(16)),
        (0x7FE0, 0x0010, pixels),
    ])
