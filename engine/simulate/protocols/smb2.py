"""SMB2/3 messages ([MS-SMB2] section 2.2) over direct TCP (port 445).

Each message carries the 4-byte direct-TCP transport header (a zero byte and
a 24-bit length, [MS-SMB2] 2.1), the 64-byte SYNC header and one command.
Authentication is SPNEGO with NTLMSSP ([MS-NLMP] 2.2.1). The NTLM responses
are random bytes of the right shape, because a passive sensor can read only
the names and flags in them.
"""

from __future__ import annotations

import struct

import numpy as np

from engine.simulate.protocols import ber

SMB_PORT = 445

NEGOTIATE, SESSION_SETUP, LOGOFF, TREE_CONNECT, TREE_DISCONNECT = 0, 1, 2, 3, 4
CREATE, CLOSE, READ, WRITE = 5, 6, 8, 9

STATUS_SUCCESS = 0x00000000
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016
STATUS_LOGON_FAILURE = 0xC000006D
FLAGS_SERVER_TO_REDIR = 0x00000001

SPNEGO_OID = bytes.fromhex("06062b0601050502")  # 1.3.6.1.5.5.2
NTLMSSP_OID = bytes.fromhex("060a2b06010401823702020a")  # 1.3.6.1.4.1.311.2.2.10
NTLM_FLAGS = 0xE2088297


class SmbConversation:
    """Header fields that advance over one connection: message id, session and tree ids."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.message_id = 0
        self.session_id = 0
        self.tree_id = 0
        self.file_serial = 0

    def header(self, command: int, response: bool, status: int = STATUS_SUCCESS) -> bytes:
        flags = FLAGS_SERVER_TO_REDIR if response else 0
        tree_id = self.tree_id if command not in (NEGOTIATE, SESSION_SETUP) else 0
        return (b"\xfeSMB" + struct.pack("<HHIHHIIQIIQ", 64, 1, status if response else 0, command,
                                         1 if not response else 32, flags, 0, self.message_id,
                                         0xFEFF, tree_id, self.session_id) + bytes(16))

    def message(self, command: int, body: bytes, response: bool, status: int = STATUS_SUCCESS) -> bytes:
        smb = self.header(command, response, status) + body
        if response:
            self.message_id += 1
        return b"\x00" + len(smb).to_bytes(3, "big") + smb

    def new_file_id(self) -> bytes:
        self.file_serial += 1
        return struct.pack("<QQ", self.file_serial, 0x7000_0000 + self.file_serial)


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def negotiate_request(conversation: SmbConversation) -> bytes:
    dialects = (0x0202, 0x0210, 0x0300, 0x0302)
    body = (struct.pack("<HHHHI", 36, len(dialects), 1, 0, 0x7F) + conversation.rng.bytes(16) + bytes(8)
            + b"".join(struct.pack("<H", d) for d in dialects))
    return conversation.message(NEGOTIATE, body, response=False)


def negotiate_response(conversation: SmbConversation, system_time: int) -> bytes:
    blob = _spnego_init_hint()
    body = (struct.pack("<HHHH", 65, 1, 0x0302, 0) + conversation.rng.bytes(16)
            + struct.pack("<IIIIQQHHI", 0x2F, 8388608, 8388608, 8388608, system_time, 0, 128, len(blob), 0)
            + blob)
    return conversation.message(NEGOTIATE, body, response=True)


def _spnego_init_hint() -> bytes:
    # GSS-API InitialContextToken with a NegTokenInit listing NTLMSSP only.
    neg_token_init = ber.context(0, ber.sequence(ber.context(0, ber.sequence(NTLMSSP_OID))))
    return ber.application(0, SPNEGO_OID + neg_token_init)


def _ntlm_negotiate() -> bytes:
    return b"NTLMSSP\x00" + struct.pack("<II", 1, NTLM_FLAGS) + bytes(16) + bytes([10, 0, 0x63, 0x45, 0, 0, 0, 15])


def _ntlm_challenge(rng: np.random.Generator, domain: str) -> bytes:
    name = _utf16(domain)
    target_info = struct.pack("<HH", 2, len(name)) + name + struct.pack("<HH", 0, 0)
    offset = 56
    return (b"NTLMSSP\x00" + struct.pack("<I", 2) + struct.pack("<HHI", len(name), len(name), offset)
            + struct.pack("<I", NTLM_FLAGS) + rng.bytes(8) + bytes(8)
            + struct.pack("<HHI", len(target_info), len(target_info), offset + len(name))
            + bytes([10, 0, 0x63, 0x45, 0, 0, 0, 15]) + name + target_info)


def _ntlm_authenticate(rng: np.random.Generator, domain: str, user: str, workstation: str) -> bytes:
    # NTLMv2 response: NTProofStr (16), then the client blob ([MS-NLMP] 2.2.2.7).
    blob = (b"\x01\x01" + bytes(6) + rng.bytes(8) + rng.bytes(8) + bytes(4)
            + struct.pack("<HH", 2, len(_utf16(domain))) + _utf16(domain) + struct.pack("<HH", 0, 0) + bytes(4))
    nt_response = rng.bytes(16) + blob
    lm_response = bytes(24)
    fields = [lm_response, nt_response, _utf16(domain), _utf16(user), _utf16(workstation), rng.bytes(16)]
    offset = 88
    header = b"NTLMSSP\x00" + struct.pack("<I", 3)
    payload = b""
    for value in fields:
        header += struct.pack("<HHI", len(value), len(value), offset + len(payload))
        payload += value
    header += struct.pack("<I", NTLM_FLAGS) + bytes([10, 0, 0x63, 0x45, 0, 0, 0, 15]) + bytes(16)
    return header + payload


def session_setup_request(conversation: SmbConversation, step: int, domain: str = "RAFIDAIN",
                          user: str = "", workstation: str = "") -> bytes:
    """Step 1 sends NTLMSSP_NEGOTIATE in a NegTokenInit, step 2 NTLMSSP_AUTH in a NegTokenResp."""
    if step == 1:
        token = ber.application(0, SPNEGO_OID + ber.context(0, ber.sequence(
            ber.context(0, ber.sequence(NTLMSSP_OID)), ber.context(2, ber.octets(_ntlm_negotiate())))))
    else:
        token = ber.context(1, ber.sequence(ber.context(2, ber.octets(
            _ntlm_authenticate(conversation.rng, domain, user, workstation)))))
    body = struct.pack("<HBBIIHHQ", 25, 0, 1, 1, 0, 88, len(token), 0) + token
    return conversation.message(SESSION_SETUP, body, response=False)


def session_setup_response(conversation: SmbConversation, step: int, status: int | None = None,
                           domain: str = "RAFIDAIN") -> bytes:
    if step == 1:
        conversation.session_id = int(conversation.rng.integers(1, 2**40))
        token = ber.context(1, ber.sequence(
            ber.context(0, ber.enumerated(1)), ber.context(1, NTLMSSP_OID),
            ber.context(2, ber.octets(_ntlm_challenge(conversation.rng, domain)))))
        status = STATUS_MORE_PROCESSING_REQUIRED
    else:
        token = ber.context(1, ber.sequence(ber.context(0, ber.enumerated(0))))
        status = STATUS_SUCCESS if status is None else status
        if status != STATUS_SUCCESS:
            token = b""
    body = struct.pack("<HHHH", 9, 0, 72, len(token)) + token
    return conversation.message(SESSION_SETUP, body, response=True, status=status)


def tree_connect_request(conversation: SmbConversation, share_path: str) -> bytes:
    path = _utf16(share_path)
    body = struct.pack("<HHHH", 9, 0, 72, len(path)) + path
    return conversation.message(TREE_CONNECT, body, response=False)


def tree_connect_response(conversation: SmbConversation) -> bytes:
    conversation.tree_id = int(conversation.rng.integers(1, 2**16))
    body = struct.pack("<HBBIII", 16, 1, 0, 0x00000800, 0, 0x001F01FF)
    return conversation.message(TREE_CONNECT, body, response=True)


def create_request(conversation: SmbConversation, name: str, write: bool) -> bytes:
    raw = _utf16(name)
    access = 0x0012019F if write else 0x00120089
    disposition = 5 if write else 1  # FILE_OVERWRITE_IF or FILE_OPEN
    body = (struct.pack("<HBBIQQIIIII", 57, 0, 0, 2, 0, 0, access, 0x80, 7, disposition, 0x00000040)
            + struct.pack("<HHII", 120, len(raw), 0, 0) + raw)
    return conversation.message(CREATE, body, response=False)


def create_response(conversation: SmbConversation, file_id: bytes, size: int) -> bytes:
    now = 0x01DC_0000_0000_0000
    body = (struct.pack("<HBBIQQQQQQII", 89, 0, 0, 2, now, now, now, now, (size + 4095) // 4096 * 4096,
                        size, 0x80, 0) + file_id + struct.pack("<II", 0, 0))
    return conversation.message(CREATE, body, response=True)


def write_request(conversation: SmbConversation, file_id: bytes, offset: int, data: bytes) -> bytes:
    body = struct.pack("<HHIQ", 49, 112, len(data), offset) + file_id + struct.pack("<IIHHI", 0, 0, 0, 0, 0) + data
    return conversation.message(WRITE, body, response=False)


def write_response(conversation: SmbConversation, count: int) -> bytes:
    body = struct.pack("<HHIIHH", 17, 0, count, 0, 0, 0)
    return conversation.message(WRITE, body, response=True)


def read_request(conversation: SmbConversation, file_id: bytes, offset: int, length: int) -> bytes:
    body = struct.pack("<HBBIQ", 49, 0, 0, length, offset) + file_id + struct.pack("<IIIHH", 1, 0, 0, 0, 0) + b"\x00"
    return conversation.message(READ, body, response=False)


def read_response(conversation: SmbConversation, data: bytes) -> bytes:
    body = struct.pack("<HBBII I", 17, 80, 0, len(data), 0, 0) + data
    return conversation.message(READ, body, response=True)


def close_request(conversation: SmbConversation, file_id: bytes) -> bytes:
    body = struct.pack("<HHI", 24, 0, 0) + file_id
    return conversation.message(CLOSE, body, response=False)


def close_response(conversation: SmbConversation) -> bytes:
    body = struct.pack("<HHIQQQQQQI", 60, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return conversation.message(CLOSE, body, response=True)
