"""HL7 v2.5 messages framed with MLLP.

MLLP (HL7 v2 Implementation Guide, appendix C) wraps each message as
<VT> message <FS><CR>, with VT = 0x0B and FS = 0x1C. Segments end with CR.
The receiver acknowledges every message with an ACK carrying MSA|AA and the
sender's message control id (MSH-10).
"""

from __future__ import annotations

import time

from engine.simulate.synthetic import Patient

MLLP_START = b"\x0b"
MLLP_END = b"\x1c\x0d"
HL7_PORT = 2575  # IANA "hl7"; tshark 4.0 dissects it as HL7 without decode-as


def hl7_time(epoch: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(epoch))


def frame(segments: list[str]) -> bytes:
    return MLLP_START + ("\r".join(segments) + "\r").encode("ascii") + MLLP_END


def msh(sending_app: str, receiving_app: str, epoch: float, message_type: str, control_id: str) -> str:
    return (f"MSH|^~\\&|{sending_app}|RAFIDAIN|{receiving_app}|RAFIDAIN|{hl7_time(epoch)}||"
            f"{message_type}|{control_id}|P|2.5")


def pid(patient: Patient) -> str:
    return (f"PID|1||{patient.mrn}^^^RAFIDAIN^MR||{patient.family}^{patient.given}||"
            f"{patient.birth_date}|{patient.sex}|||12 SYNTHETIC ST^^BAGHDAD^^10001^IQ")


def pv1(patient: Patient) -> str:
    return f"PV1|1|I|{patient.ward}^{patient.bed:02d}^1^RAFIDAIN||||4411^ZZDOCTOR^SAMIR"


def adt(event: str, patient: Patient, epoch: float, control_id: str, sending_app: str = "EHR") -> bytes:
    """ADT^A01 (admit) or ADT^A03 (discharge)."""
    return frame([
        msh(sending_app, "HL7ENGINE", epoch, f"ADT^{event}^ADT_{event}", control_id),
        f"EVN|{event}|{hl7_time(epoch)}",
        pid(patient),
        pv1(patient),
    ])


def orm(patient: Patient, epoch: float, control_id: str, order_id: str, test: tuple[str, str]) -> bytes:
    """ORM^O01 new laboratory order."""
    code, name = test
    return frame([
        msh("HL7ENGINE", "LIS", epoch, "ORM^O01^ORM_O01", control_id),
        pid(patient),
        pv1(patient),
        f"ORC|NW|{order_id}|||||^^^{hl7_time(epoch)}^^R",
        f"OBR|1|{order_id}||{code}^{name}^LN|||{hl7_time(epoch)}",
    ])


def oru(patient: Patient, epoch: float, control_id: str, order_id: str,
        results: list[tuple[str, str, str, str, str]]) -> bytes:
    """ORU^R01 results; each result is (LOINC code, name, value, unit, reference range)."""
    segments = [
        msh("LIS", "HL7ENGINE", epoch, "ORU^R01^ORU_R01", control_id),
        pid(patient),
        f"OBR|1|{order_id}|{order_id}|CBC^Complete blood count^L|||{hl7_time(epoch)}|||||||||||||||||F",
    ]
    for index, (code, name, value, unit, reference) in enumerate(results, start=1):
        segments.append(f"OBX|{index}|NM|{code}^{name}^LN||{value}|{unit}|{reference}|N|||F")
    return frame(segments)


def ack(original_type: str, epoch: float, control_id: str, acked_id: str, code: str = "AA") -> bytes:
    """ACK for a message whose MSH-9 trigger is `original_type` (e.g. "A01")."""
    return frame([
        msh("HL7ENGINE", "EHR", epoch, f"ACK^{original_type}^ACK", control_id),
        f"MSA|{code}|{acked_id}",
    ])
