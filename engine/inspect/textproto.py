"""Parsers for line-based protocols: HTTP/1.x, SSH banners, FTP, Telnet, POP3, IMAP, SMTP.

Login attempts are collected under fields["_logins"] as (user, outcome)
pairs, with outcome "success", "failure" or "unknown". The inspector turns
them into login records and drops the key. Passwords are never read into a
result: the parsers skip the argument of PASS, LOGIN and the Basic
credential after its user name.
"""

from __future__ import annotations

import base64
import binascii
import re
import socket

from engine.inspect import jndi
from engine.inspect.wire import HOST_WIDTH, MAX_ITEMS, NAME_WIDTH, PATH_WIDTH, Truncated, clean_text

HTTP_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")
HTTP_SERVER_HEADER = re.compile(rb"\nServer:[ \t]*([^\r\n]*)", re.IGNORECASE)
HTTP_METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"PATCH", b"TRACE")
MAX_LINES = 256


def _lines(stream: bytes) -> tuple[list[bytes], bool]:
    """Split a stream into CRLF or LF lines; the bool is True if the last line has no end."""
    parts = stream.split(b"\n")
    unterminated = bool(parts and parts[-1])
    if not parts[-1]:
        parts.pop()
    return [p.rstrip(b"\r") for p in parts[:MAX_LINES]], unterminated


# --- HTTP/1.x (RFC 9112) ----------------------------------------------------

def looks_like_http(initiator: bytes, responder: bytes) -> bool:
    """Return True when the initiator sends a request line or the responder a status line."""
    first = initiator.split(b" ", 1)[0]
    return first in HTTP_METHODS or responder.startswith(b"HTTP/1.")


def parse_http(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with request lines, selected headers, response status codes and JNDI lookups.

    `jndi_lookups` (only present when one is found) lists the Log4Shell
    lookups in request lines, headers and bodies, resolved by engine.inspect.jndi.
    """
    requests = fields.setdefault("requests", [])
    responses = fields.setdefault("responses", [])
    fields["basic_auth"] = False
    users = []

    lines, request_cut = _lines(initiator)
    current = None
    request_index = -1
    in_body = False
    lookups = []
    for line in lines:
        parts = line.split(b" ")
        if len(parts) == 3 and parts[0] in HTTP_METHODS and parts[2].startswith(b"HTTP/"):
            current = {
                "method": parts[0].decode("ascii"),
                "path": clean_text(parts[1], PATH_WIDTH),
                "version": clean_text(parts[2], 16),
                "host": "",
                "user_agent": "",
                "basic_auth": False,
            }
            if len(requests) < MAX_ITEMS:
                requests.append(current)
            request_index += 1
            in_body = False
            _add_jndi_lookups(lookups, line, request_index, "target", b"")
            continue
        if current is None:
            continue
        if not line:
            in_body = True
        elif in_body:
            _add_jndi_lookups(lookups, line, request_index, "body", b"")
        else:
            name = line.partition(b":")[0].strip() if b":" in line else b""
            _add_jndi_lookups(lookups, line, request_index, "header", name)
        if b":" not in line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"host":
            current["host"] = clean_text(value, HOST_WIDTH)
        elif name == b"user-agent":
            current["user_agent"] = clean_text(value, PATH_WIDTH)
        elif name == b"authorization" and value[:6].lower() == b"basic ":
            current["basic_auth"] = True
            fields["basic_auth"] = True
            try:
                decoded = base64.b64decode(value[6:].strip(), validate=True)
            except (binascii.Error, ValueError):
                decoded = b""
            users.append(clean_text(decoded.partition(b":")[0], NAME_WIDTH))

    # Response bodies (images, scripts) fill most of the responder stream, so
    # status lines and the Server header are found by regular expression
    # instead of splitting every body line.
    status_codes = [
        int(m.group(1)) for m in HTTP_STATUS_LINE.finditer(responder)
        if m.start() == 0 or responder[m.start() - 1] == 0x0A  # at the start of a line
    ]
    responses.extend({"status": code} for code in status_codes[:MAX_ITEMS])
    server = HTTP_SERVER_HEADER.search(responder)
    if server:
        fields["server"] = clean_text(server.group(1).strip(), PATH_WIDTH)

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
    if request_cut and requests and not requests[-1]["host"]:
        raise Truncated("HTTP request header cut by the capture")


def _add_jndi_lookups(lookups: list, line: bytes, request_index: int, location: str, header: bytes) -> None:
    """Append the Log4Shell JNDI lookups of one request line, header or body line to `lookups`."""
    if len(lookups) >= MAX_ITEMS or (b"$" not in line and b"%" not in line and b"\\u00" not in line):
        return
    for lookup, obfuscated, url_encoded in jndi.scan_line(line)[: MAX_ITEMS - len(lookups)]:
        lookups.append({
            "request": request_index,
            "location": location,
            "header": clean_text(header, NAME_WIDTH),
            "lookup": clean_text(lookup, PATH_WIDTH),
            "obfuscated": obfuscated,
            "url_encoded": url_encoded,
        })


# --- SSH banners (RFC 4253 section 4.2) --------------------------------------

def parse_ssh(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with the client and server identification strings."""
    for key, stream in (("client", initiator), ("server", responder)):
        for line in _lines(stream[:1024])[0][:8]:
            if line.startswith(b"SSH-"):
                fields[f"{key}_banner"] = clean_text(line, PATH_WIDTH)
                # SSH-protoversion-softwareversion SP comments
                fields[f"{key}_software"] = clean_text(line.split(b"-", 2)[-1].split(b" ")[0], NAME_WIDTH)
                break
    fields["_logins"] = [(None, "unknown")]


# --- FTP (RFC 959), POP3 (RFC 1939), SMTP (RFC 5321) -------------------------

def _reply_codes(responder: bytes) -> tuple[list[int], list[bytes]]:
    """Return the final reply code of each FTP/SMTP reply and the reply lines."""
    codes = []
    lines = _lines(responder)[0]
    for line in lines:
        # A multi-line reply ends with a "ddd " line, and "ddd-" lines continue it.
        if len(line) >= 3 and line[:3].isdigit() and (len(line) == 3 or line[3:4] == b" "):
            codes.append(int(line[:3]))
    return codes, lines


def parse_ftp(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with the greeting banner, commands, login outcomes and active-mode data ports.

    `data_ports` (only present when the client sent a valid PORT or EPRT)
    lists the address and port the client asked the server to connect to,
    with the server's reply code.
    """
    codes, lines = _reply_codes(responder)
    if lines and lines[0].startswith(b"220"):
        fields["banner"] = clean_text(lines[0][4:], PATH_WIDTH)
    commands = []
    for line in _lines(initiator)[0]:
        verb, _, argument = line.partition(b" ")
        commands.append((verb.upper(), argument))
    fields["commands"] = sorted({c.decode("ascii", "replace") for c, _ in commands if c.isalpha()})[:MAX_ITEMS]
    # The greeting is reply 0, so command i gets reply i + 1.
    logins = []
    user = None
    for index, (verb, argument) in enumerate(commands):
        reply = codes[index + 1] if index + 1 < len(codes) else None
        if verb == b"USER":
            user = clean_text(argument, NAME_WIDTH)
            if reply == 230:
                logins.append((user, "success"))
        elif verb == b"PASS":
            if reply is None:
                logins.append((user, "unknown"))
            else:
                logins.append((user, "success" if reply == 230 else "failure"))
    fields["_logins"] = logins
    fields["login_failures"] = sum(1 for _, outcome in logins if outcome == "failure")
    data_ports = []
    for index, (verb, argument) in enumerate(commands):
        if verb not in (b"PORT", b"EPRT") or len(data_ports) >= MAX_ITEMS:
            continue
        endpoint = _port_argument(argument) if verb == b"PORT" else _eprt_argument(argument)
        if endpoint is None:
            continue
        data_ports.append({
            "command": verb.decode("ascii"),
            "address": endpoint[0],
            "port": endpoint[1],
            "reply": codes[index + 1] if index + 1 < len(codes) else None,
        })
    if data_ports:
        fields["data_ports"] = data_ports


def _port_argument(argument: bytes) -> tuple[str, int] | None:
    """Return (IPv4 address, port) of a PORT h1,h2,h3,h4,p1,p2 argument (RFC 959), or None when invalid."""
    parts = argument.strip().split(b",")
    if len(parts) != 6 or not all(part.strip().isdigit() and len(part.strip()) <= 3 for part in parts):
        return None
    numbers = [int(part) for part in parts]
    if max(numbers) > 255:
        return None
    return ".".join(str(n) for n in numbers[:4]), numbers[4] * 256 + numbers[5]


def _eprt_argument(argument: bytes) -> tuple[str, int] | None:
    """Return (address, port) of an EPRT |1|addr|port| or |2|addr|port| argument (RFC 2428), or None when invalid."""
    argument = argument.strip()
    if len(argument) < 7:
        return None
    delimiter = argument[:1]
    parts = argument.split(delimiter)
    # A leading and a trailing delimiter give empty first and last parts.
    if len(parts) != 5 or parts[0] or parts[4] or parts[1] not in (b"1", b"2"):
        return None
    if not parts[3].isdigit() or len(parts[3]) > 5 or int(parts[3]) > 65535:
        return None
    family = socket.AF_INET if parts[1] == b"1" else socket.AF_INET6
    try:
        packed = socket.inet_pton(family, parts[2].decode("ascii"))
    except (ValueError, OSError):
        return None
    return socket.inet_ntop(family, packed), int(parts[3])


def parse_pop3(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with the greeting banner and USER/PASS outcomes."""
    replies = [line for line in _lines(responder)[0] if line[:1] in (b"+", b"-")]
    if replies:
        fields["banner"] = clean_text(replies[0][4:], PATH_WIDTH)
    logins = []
    user = None
    for index, line in enumerate(_lines(initiator)[0]):
        verb, _, argument = line.partition(b" ")
        reply = replies[index + 1] if index + 1 < len(replies) else None
        if verb.upper() == b"USER":
            user = clean_text(argument, NAME_WIDTH)
        elif verb.upper() == b"PASS":
            if reply is None:
                outcome = "unknown"
            elif reply.startswith(b"+OK"):
                outcome = "success"
            else:
                outcome = "failure"
            logins.append((user, outcome))
    fields["_logins"] = logins


def parse_imap(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with the greeting and the outcome of each LOGIN command."""
    server_lines = _lines(responder)[0]
    if server_lines:
        fields["banner"] = clean_text(server_lines[0][5:], PATH_WIDTH)
    status_by_tag = {}
    for line in server_lines:
        tag, _, rest = line.partition(b" ")
        if tag != b"*" and rest[:3] in (b"OK ", b"NO ", b"BAD"):
            status_by_tag[tag] = rest[:2]
    logins = []
    for line in _lines(initiator)[0]:
        parts = line.split(b" ")
        if len(parts) >= 3 and parts[1].upper() == b"LOGIN":
            status = status_by_tag.get(parts[0])
            if status is None:
                outcome = "unknown"
            elif status == b"OK":
                outcome = "success"
            else:
                outcome = "failure"
            logins.append((clean_text(parts[2].strip(b'"'), NAME_WIDTH), outcome))
    fields["_logins"] = logins


def parse_smtp(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with the greeting banner and the client's EHLO/HELO name."""
    lines = _lines(responder)[0]
    if lines and lines[0].startswith(b"220"):
        fields["banner"] = clean_text(lines[0][4:], PATH_WIDTH)
    for line in _lines(initiator)[0][:8]:
        if line[:5].upper() in (b"EHLO ", b"HELO "):
            fields["helo"] = clean_text(line[5:], HOST_WIDTH)
            break


# --- Telnet (RFC 854) ----------------------------------------------------------

IAC = 0xFF
TELNET_SB = 0xFA
TELNET_SE = 0xF0
LOGIN_FAILED = re.compile(rb"login incorrect|incorrect password|authentication fail|access denied|login failed", re.IGNORECASE)
LOGIN_SUCCEEDED = re.compile(rb"last login|welcome|[$#>] ?$", re.IGNORECASE)


def strip_telnet_commands(stream: bytes) -> bytes:
    """Return the data bytes of a Telnet stream without IAC command sequences."""
    out = bytearray()
    i = 0
    n = len(stream)
    while i < n:
        iac = stream.find(IAC, i)
        if iac < 0:
            out += stream[i:]
            break
        # Copy the data before the command in one step: most bytes are data.
        out += stream[i:iac]
        if iac + 1 >= n:
            break
        command = stream[iac + 1]
        if command == IAC:
            out.append(IAC)
            i = iac + 2
        elif command == TELNET_SB:
            end = stream.find(bytes([IAC, TELNET_SE]), iac + 2)
            i = n if end < 0 else end + 2
        elif 0xFB <= command <= 0xFE:
            i = iac + 3
        else:
            i = iac + 2
    return bytes(out)


def looks_like_telnet(initiator: bytes, responder: bytes) -> bool:
    """Return True when either side opens with Telnet option negotiation."""
    return any(len(s) >= 3 and s[0] == IAC and 0xFB <= s[1] <= 0xFE for s in (initiator, responder))


def parse_telnet(initiator: bytes, responder: bytes, fields: dict) -> None:
    """Fill `fields` with the server banner and the login user and outcome."""
    server = strip_telnet_commands(responder).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    client = strip_telnet_commands(initiator).replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\x00", b"")
    server_lines = [line for line in server.split(b"\n") if line.strip()]
    if server_lines:
        fields["banner"] = clean_text(server_lines[0].strip(), PATH_WIDTH)
    prompt = None
    for match in re.finditer(rb"(login|username|user name)\s*:", server, re.IGNORECASE):
        prompt = match
        break
    if prompt is None:
        return
    client_lines = [line.strip() for line in client.split(b"\n") if line.strip()]
    user = clean_text(client_lines[0], NAME_WIDTH) if client_lines else None
    after = server[prompt.end():]
    password_prompt = re.search(rb"password\s*:", after, re.IGNORECASE)
    outcome = "unknown"
    if LOGIN_FAILED.search(after):
        outcome = "failure"
    elif password_prompt is not None:
        # The server's text after the password prompt: a last-login line or a
        # shell prompt means the login went through.
        reply_lines = after[password_prompt.end():].split(b"\n")
        if any(LOGIN_SUCCEEDED.search(line.strip()) for line in reply_lines[:64] if line.strip()):
            outcome = "success"
    fields["login_prompt"] = True
    fields["_logins"] = [(user, outcome)]
