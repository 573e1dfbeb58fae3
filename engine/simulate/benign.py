"""Benign hospital traffic: one function per activity, started at Poisson times.

Each activity function builds one complete conversation starting at `t` and
returns nothing; all packets go to the context's buffer. The generator calls
them with start times drawn per time window, at a rate that follows the day
and shift rhythm of the hospital (see rhythm()).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import dpkt
import numpy as np

from engine.simulate.protocols import cleartext, dicom, hl7, kerberos, ldap, mqtt, rdp, smb2, ssh, tls
from engine.simulate.session import CLIENT, SERVER, SimContext, TcpSession, UdpFlow
from engine.simulate.synthetic import USER_NAMES, Patient
from engine.simulate.topology import Device

SHIFT_DAY = (7, 15)  # local hours, start inclusive and end exclusive
SHIFT_EVENING = (15, 23)
WEEKEND_DAYS = (4, 5)  # Friday and Saturday, the Iraqi weekend (Monday is 0)


def rhythm(epoch: float, utc_offset_h: float) -> float:
    """Activity multiplier for user-driven traffic at `epoch`: 1.0 on a weekday day shift."""
    local = epoch + utc_offset_h * 3600
    hour = (local % 86400) / 3600
    weekday = int((local // 86400 + 3) % 7)  # 1970-01-01 was a Thursday (3)
    if SHIFT_DAY[0] <= hour < SHIFT_DAY[1]:
        level = 1.0
    elif SHIFT_EVENING[0] <= hour < SHIFT_EVENING[1]:
        level = 0.55
    else:
        level = 0.2
    if weekday in WEEKEND_DAYS:
        level *= 0.6
    return level


def ae_title_of(device: Device) -> str:
    """AE title of a DICOM node: role abbreviation plus index, at most 16 characters."""
    short = {"ct": "CT", "mri": "MR", "ultrasound": "US", "reading_workstation": "READWS",
             "pacs": "PACS_ARCHIVE"}.get(device.role, device.role.upper()[:8])
    if device.role == "pacs":
        return short
    return f"{short}_{device.name.rsplit('-', 1)[-1]}"


MODALITY = {"ct": ("CT", dicom.CT_IMAGE_STORAGE), "mri": ("MR", dicom.MR_IMAGE_STORAGE),
            "ultrasound": ("US", dicom.US_IMAGE_STORAGE)}
LAB_TESTS = (("718-7", "Hemoglobin", "g/dL", "12-16"), ("6690-2", "Leukocytes", "10*3/uL", "4.5-11"),
             ("777-3", "Platelets", "10*3/uL", "150-400"), ("2951-2", "Sodium", "mmol/L", "135-145"))
INTERNAL_NAMES = ("ehr.rafidain.hosp", "pacs.rafidain.hosp", "fhir.rafidain.hosp", "files.rafidain.hosp",
                  "dc01.rafidain.hosp", "lis.rafidain.hosp", "print.rafidain.hosp")


@dataclass
class BenignState:
    """Values shared by benign activities: patients, counters for ids."""

    patients: list[Patient]
    hl7_control: int = 1000
    dicom_uid: int = 1
    dns_id: int = 1
    image_bytes: int = 8192
    images_per_study: tuple[int, int] = (2, 5)

    def next_control_id(self) -> str:
        self.hl7_control += 1
        return f"MSG{self.hl7_control:08d}"

    def next_uid(self, kind: str) -> str:
        self.dicom_uid += 1
        # Synthetic UID root (2.25 would need a UUID); fine for a simulator.
        return f"1.2.826.0.1.3680043.9.7433.{kind}.{self.dicom_uid}"


def pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def patient_name(patient: Patient) -> str:
    return f"{patient.family}^{patient.given}"


# --- HL7 -------------------------------------------------------------------------

def hl7_adt(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    ehr = pick(rng, ctx.topology.role("ehr_server"))
    engine = ctx.topology.one("hl7_engine")
    session = TcpSession(ctx, ehr, engine, hl7.HL7_PORT, t, rng).open()
    for _ in range(int(rng.integers(1, 4))):
        patient = pick(rng, state.patients)
        event = "A01" if rng.random() < 0.6 else "A03"
        control = state.next_control_id()
        session.send(CLIENT, hl7.adt(event, patient, session.t, control), "hl7", think=0.002)
        session.send(SERVER, hl7.ack(event, session.t, state.next_control_id(), control), "hl7", think=0.004)
    session.close()


def hl7_lab(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    engine = ctx.topology.one("hl7_engine")
    lis = ctx.topology.one("lis")
    patient = pick(rng, state.patients)
    order_id = f"ORD{int(rng.integers(10**6, 10**7))}"
    test_code, test_name, unit, reference = pick(rng, list(LAB_TESTS))
    session = TcpSession(ctx, engine, lis, hl7.HL7_PORT, t, rng).open()
    control = state.next_control_id()
    session.send(CLIENT, hl7.orm(patient, session.t, control, order_id, (test_code, test_name)), "hl7")
    session.send(SERVER, hl7.ack("O01", session.t, state.next_control_id(), control), "hl7", think=0.003)
    session.close()

    # Results come back later on a connection from the LIS.
    later = session.t + float(rng.uniform(20, 90))
    results = [(code, name, f"{rng.uniform(0.5, 1.5) * 10:.1f}", u, r) for code, name, u, r in LAB_TESTS]
    back = TcpSession(ctx, lis, engine, hl7.HL7_PORT, later, rng).open()
    control = state.next_control_id()
    back.send(CLIENT, hl7.oru(patient, back.t, control, order_id, results), "hl7")
    back.send(SERVER, hl7.ack("R01", back.t, state.next_control_id(), control), "hl7", think=0.003)
    back.close()


# --- DICOM -----------------------------------------------------------------------

def dicom_associate(session: TcpSession, calling: str, called: str, syntaxes: list[str]) -> None:
    session.send(CLIENT, dicom.associate_rq(called, calling, syntaxes), "dicom")
    session.send(SERVER, dicom.associate_ac(called, calling, len(syntaxes)), "dicom", think=0.001)


def dicom_release(session: TcpSession) -> None:
    session.send(CLIENT, dicom.release_rq(), "dicom")
    session.send(SERVER, dicom.release_rp(), "dicom")
    session.close()


def dicom_send_images(session: TcpSession, state: BenignState, rng: np.random.Generator, direction: int,
                      modality: str, sop_class: str, patient: Patient, count: int,
                      study_uid: str) -> None:
    """C-STORE `count` images over an open association, sent in `direction`."""
    other = 1 - direction
    series_uid = state.next_uid("3")
    side = int(np.sqrt(state.image_bytes // 2))
    for index in range(count):
        instance = state.next_uid("4")
        pixels = rng.bytes(side * side * 2)
        data = dicom.image(sop_class, instance, study_uid, series_uid, modality,
                           patient_name(patient), patient.mrn, pixels, side, side)
        session.send(direction, dicom.p_data(1, dicom.store_rq(index + 1, sop_class, instance), True, True),
                     "dicom", think=0.001)
        # The stack coalesces the dataset's PDUs into full segments.
        stream, pdu_ends = dicom.data_pdus(1, data)
        session.send(direction, stream, "dicom", pdu_ends=pdu_ends)
        session.send(other, dicom.p_data(1, dicom.store_rsp(index + 1, sop_class, instance), True, True),
                     "dicom", think=0.002)


def dicom_store(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    modalities = [d for role in MODALITY for d in ctx.topology.role(role)]
    device = pick(rng, modalities)
    pacs = ctx.topology.one("pacs")
    modality, sop_class = MODALITY[device.role]
    session = TcpSession(ctx, device, pacs, dicom.DICOM_PORT, t, rng).open()
    dicom_associate(session, ae_title_of(device), ae_title_of(pacs), [sop_class])
    count = int(rng.integers(state.images_per_study[0], state.images_per_study[1] + 1))
    dicom_send_images(session, state, rng, CLIENT, modality, sop_class, pick(rng, state.patients),
                      count, state.next_uid("2"))
    dicom_release(session)


def dicom_echo(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    nodes = [d for role in MODALITY for d in ctx.topology.role(role)] + ctx.topology.role("reading_workstation")
    device = pick(rng, nodes)
    pacs = ctx.topology.one("pacs")
    session = TcpSession(ctx, device, pacs, dicom.DICOM_PORT, t, rng).open()
    if rng.random() < 0.08:
        # A misconfigured node announces a stale AE title and the PACS rejects it.
        session.send(CLIENT, dicom.associate_rq(ae_title_of(pacs), "OLD_" + ae_title_of(device)[:12],
                                                [dicom.VERIFICATION]), "dicom")
        session.send(SERVER, dicom.associate_rj(), "dicom", think=0.001)
        session.close(SERVER)
        return
    dicom_associate(session, ae_title_of(device), ae_title_of(pacs), [dicom.VERIFICATION])
    session.send(CLIENT, dicom.p_data(1, dicom.echo_rq(1), True, True), "dicom")
    session.send(SERVER, dicom.p_data(1, dicom.echo_rsp(1), True, True), "dicom", think=0.001)
    dicom_release(session)


def dicom_query_retrieve(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float,
                         requester: Device | None = None, destination_ae: str | None = None,
                         destination: Device | None = None, studies: int = 1,
                         images_per_study: tuple[int, int] | None = None) -> list[TcpSession]:
    """C-FIND then C-MOVE from a reading workstation; the PACS opens a second association to store.

    Returns the sessions (query and store), so an attack scenario reusing this
    flow can label them.
    """
    requester = requester or pick(rng, ctx.topology.role("reading_workstation"))
    pacs = ctx.topology.one("pacs")
    destination = destination or requester
    destination_ae = destination_ae or ae_title_of(requester)
    patient = pick(rng, state.patients)
    query = TcpSession(ctx, requester, pacs, dicom.DICOM_PORT, t, rng).open()
    dicom_associate(query, ae_title_of(requester), ae_title_of(pacs),
                    [dicom.STUDY_ROOT_FIND, dicom.STUDY_ROOT_MOVE])
    query.send(CLIENT, dicom.p_data(1, dicom.find_rq(1), True, True), "dicom")
    query.send(CLIENT, dicom.p_data(1, dicom.study_query(patient_id=patient.mrn), False, True), "dicom")
    study_uids = [state.next_uid("2") for _ in range(studies)]
    for study_uid in study_uids:
        query.send(SERVER, dicom.p_data(1, dicom.find_rsp(1, dicom.STATUS_PENDING), True, True), "dicom",
                   think=0.003)
        query.send(SERVER, dicom.p_data(1, dicom.study_match(patient_name(patient), patient.mrn,
                                                             study_uid, "CT"), False, True), "dicom")
    query.send(SERVER, dicom.p_data(1, dicom.find_rsp(1, dicom.STATUS_SUCCESS), True, True), "dicom")

    query.send(CLIENT, dicom.p_data(3, dicom.move_rq(2, destination_ae), True, True), "dicom", think=0.5)
    query.send(CLIENT, dicom.p_data(3, dicom.study_query(patient_id=patient.mrn), False, True), "dicom")

    store = TcpSession(ctx, pacs, destination, dicom.DICOM_PORT, query.t + 0.01, rng).open()
    dicom_associate(store, ae_title_of(pacs), destination_ae, [dicom.CT_IMAGE_STORAGE])
    total = 0
    images_per_study = images_per_study or state.images_per_study
    for study_uid in study_uids:
        count = int(rng.integers(images_per_study[0], images_per_study[1] + 1))
        dicom_send_images(store, state, rng, CLIENT, "CT", dicom.CT_IMAGE_STORAGE, patient, count, study_uid)
        total += count
    dicom_release(store)
    query.t = max(query.t, store.t)
    query.send(SERVER, dicom.p_data(3, dicom.move_rsp(2, dicom.STATUS_SUCCESS, 0, total), True, True), "dicom")
    dicom_release(query)
    return [query, store]


# --- Web, FHIR, DNS, NTP ----------------------------------------------------------

def tls_session(session: TcpSession, rng: np.random.Generator, server_name: str,
                exchanges: int, request_bytes: tuple[int, int], response_bytes: tuple[int, int],
                alpn: list[str] | None = None, protocol: str = "tls") -> None:
    """TLS 1.3 handshake and `exchanges` request/response pairs of encrypted records.

    `protocol` names the message counter; RDP passes "rdp_tls" because tshark
    4.0 shows TLS inside RDP as TPKT continuation, not as TLS.
    """
    def send(direction: int, data: bytes, think: float = 0.0) -> None:
        session.send(direction, data, protocol, think=think, pdu_ends=tls.record_ends(data), count_starts=True)

    hello = tls.client_hello(rng, server_name, alpn)
    send(CLIENT, hello)
    send(SERVER, tls.server_hello(rng, hello) + tls.application_data(rng, int(rng.integers(2500, 4200))), 0.002)
    send(CLIENT, tls.record(20, b"\x01") + tls.application_data(rng, 74))
    for _ in range(exchanges):
        send(CLIENT, tls.application_data(rng, int(rng.integers(*request_bytes))), float(rng.exponential(0.8)))
        send(SERVER, tls.application_data(rng, int(rng.integers(*response_bytes))), 0.01)


def fhir_rest(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    clients = ctx.topology.role("physician_workstation") + ctx.topology.role("nurse_workstation")
    session = TcpSession(ctx, pick(rng, clients), ctx.topology.one("fhir_server"), 443, t, rng).open()
    tls_session(session, rng, "fhir.rafidain.hosp", int(rng.integers(1, 6)), (300, 900), (900, 12000),
                ["h2", "http/1.1"])
    session.close()


def web_browsing(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    clients = ctx.topology.role("physician_workstation") + ctx.topology.role("nurse_workstation")
    client = pick(rng, clients)
    names = {"portal.example.com": "web_portal", "news.example.org": "web_news",
             "updates.example.net": "web_vendor_updates", "cdn.example.com": "web_portal"}
    name = pick(rng, list(names))
    server = ctx.topology.external(names[name])
    dns_lookup(ctx, state, rng, t, client, name, [server.ip])
    t += 0.03
    session = TcpSession(ctx, client, server, 443 if rng.random() < 0.8 else 80, t, rng).open()
    if session.dport == 443:
        tls_session(session, rng, name, int(rng.integers(1, 5)), (400, 1200), (2000, 40000),
                    ["h2", "http/1.1"])
    else:
        for _ in range(int(rng.integers(1, 4))):
            session.send(CLIENT, cleartext.http_request("GET", name, f"/page/{int(rng.integers(100))}.html"),
                         "http", think=float(rng.exponential(1.0)))
            session.send(SERVER, cleartext.http_response(200, "OK", b"<html>" + b"x" * int(rng.integers(200, 6000))
                                                         + b"</html>"), "http", think=0.02)
    session.close()


def dns_lookup(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float,
               client: Device, name: str, addresses: list[str]) -> None:
    resolver = ctx.topology.one("dns_ntp")
    flow = UdpFlow(ctx, client, resolver, cleartext.DNS_PORT, rng)
    state.dns_id = (state.dns_id + 7919) & 0xFFFF
    flow.send(t, CLIENT, cleartext.dns_query(state.dns_id, name), "dns")
    flow.send(t + float(rng.uniform(0.0003, 0.002)), SERVER,
              cleartext.dns_response(state.dns_id, name, addresses), "dns")


def dns_internal(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    clients = [d for d in ctx.topology.devices if d.zone in ("workstations", "imaging", "admin", "servers")
               and d.role not in ("dns_ntp",)]
    name = pick(rng, list(INTERNAL_NAMES))
    dns_lookup(ctx, state, rng, t, pick(rng, clients), name, [ctx.topology.one("ehr_server").ip])


def ntp_sync(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    client = pick(rng, [d for d in ctx.topology.devices if d.role not in ("external", "attacker", "dns_ntp")])
    flow = UdpFlow(ctx, client, ctx.topology.one("dns_ntp"), cleartext.NTP_PORT, rng,
                   sport=cleartext.NTP_PORT if rng.random() < 0.5 else None)
    flow.send(t, CLIENT, cleartext.ntp_request(t), "ntp")
    reply_t = t + float(rng.uniform(0.0002, 0.001))
    flow.send(reply_t, SERVER, cleartext.ntp_response(t, reply_t), "ntp")


# --- MQTT telemetry ----------------------------------------------------------------

def mqtt_telemetry(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float,
                   device: Device, until: float, interval_s: float) -> None:
    """Keep one device connection from `t` to `until`, publishing vitals every `interval_s`."""
    broker = ctx.topology.one("mqtt_broker")
    session = TcpSession(ctx, device, broker, mqtt.MQTT_PORT, t, rng).open()
    session.send(CLIENT, mqtt.connect(device.name, keepalive_s=60), "mqtt")
    session.send(SERVER, mqtt.connack(), "mqtt", think=0.001)
    kind = "vitals" if device.role == "bedside_monitor" else "infusion"
    topic = f"ward/{device.name}/{kind}"
    while session.t + interval_s < until:
        session.t += interval_s * float(rng.uniform(0.95, 1.05))
        if kind == "vitals":
            reading = {"hr": int(rng.integers(55, 110)), "spo2": int(rng.integers(91, 100)),
                       "rr": int(rng.integers(10, 24)), "ts": round(session.t, 3)}
        else:
            reading = {"rate_ml_h": round(float(rng.uniform(5, 120)), 1), "vtbi_ml": int(rng.integers(10, 900)),
                       "ts": round(session.t, 3)}
        session.send(CLIENT, mqtt.publish(topic, json.dumps(reading, separators=(",", ":")).encode()), "mqtt")
    session.send(CLIENT, mqtt.disconnect(), "mqtt")
    session.close()


# --- Directory: Kerberos and LDAP ---------------------------------------------------

def kerberos_logon(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    client = pick(rng, ctx.topology.role("nurse_workstation") + ctx.topology.role("physician_workstation"))
    dc = ctx.topology.one("domain_controller")
    realm = ctx.topology.site["realm"]
    user = pick(rng, list(USER_NAMES))
    flow = UdpFlow(ctx, client, dc, kerberos.KERBEROS_PORT, rng)
    flow.send(t, CLIENT, kerberos.as_req(rng, realm, user, t, with_preauth=False), "kerberos")
    flow.send(t + 0.0006, SERVER, kerberos.krb_error(realm, kerberos.KDC_ERR_PREAUTH_REQUIRED, t, user), "kerberos")
    flow2 = UdpFlow(ctx, client, dc, kerberos.KERBEROS_PORT, rng)
    flow2.send(t + 0.002, CLIENT, kerberos.as_req(rng, realm, user, t, with_preauth=True), "kerberos")
    flow2.send(t + 0.003, SERVER, kerberos.as_rep(rng, realm, user), "kerberos")
    service, host = pick(rng, [("cifs", "files.rafidain.hosp"), ("HTTP", "ehr.rafidain.hosp"),
                               ("ldap", "dc01.rafidain.hosp")])
    flow3 = UdpFlow(ctx, client, dc, kerberos.KERBEROS_PORT, rng)
    flow3.send(t + 0.01, CLIENT, kerberos.tgs_req(rng, realm, service, host, t), "kerberos")
    flow3.send(t + 0.011, SERVER, kerberos.tgs_rep(rng, realm, user, service, host), "kerberos")


def ldap_lookup(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    clients = ctx.topology.role("ehr_server") + ctx.topology.role("file_server") + ctx.topology.role("print_server")
    session = TcpSession(ctx, pick(rng, clients), ctx.topology.one("domain_controller"), ldap.LDAP_PORT, t, rng).open()
    session.send(CLIENT, ldap.simple_bind(1, "", ""), "ldap")  # anonymous bind
    session.send(SERVER, ldap.bind_response(1), "ldap", think=0.0005)
    user = pick(rng, list(USER_NAMES))
    base = "dc=rafidain,dc=hosp"
    session.send(CLIENT, ldap.search_request(2, base, "sAMAccountName", user, ["cn", "memberOf"]), "ldap")
    session.send(SERVER, ldap.search_entry(2, f"cn={user},ou=Staff,{base}",
                                           {"cn": [user], "memberOf": [f"cn=Clinical,ou=Groups,{base}"]}),
                 "ldap", think=0.001)
    session.send(SERVER, ldap.search_done(2), "ldap")
    session.send(CLIENT, ldap.unbind(3), "ldap")
    session.close()


# --- Administration: SSH, RDP; legacy Telnet/FTP -------------------------------------

def ssh_handshake(session: TcpSession, rng: np.random.Generator, client_banner: str = "SSH-2.0-OpenSSH_9.6") -> None:
    session.send(SERVER, b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n", "ssh", think=0.002)
    session.send(CLIENT, (client_banner + "\r\n").encode(), "ssh")
    session.send(CLIENT, ssh.kexinit(rng), "ssh")
    session.send(SERVER, ssh.kexinit(rng), "ssh")
    session.send(CLIENT, ssh.ecdh_init(rng), "ssh")
    session.send(SERVER, ssh.ecdh_reply(rng) + ssh.newkeys(rng), "ssh", think=0.003)
    session.send(CLIENT, ssh.newkeys(rng), "ssh")


def ssh_admin(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    admin = pick(rng, ctx.topology.role("admin_workstation"))
    server = pick(rng, ctx.topology.role("pacs") + ctx.topology.role("ehr_db") + ctx.topology.role("hl7_engine"))
    session = TcpSession(ctx, admin, server, ssh.SSH_PORT, t, rng).open()
    ssh_handshake(session, rng)
    session.send(CLIENT, ssh.encrypted(rng, 64), "ssh")
    session.send(SERVER, ssh.encrypted(rng, 32), "ssh", think=0.02)
    for _ in range(int(rng.integers(5, 40))):
        session.send(CLIENT, ssh.encrypted(rng, 16), "ssh", think=float(rng.exponential(1.5)))
        session.send(SERVER, ssh.encrypted(rng, int(rng.integers(16, 1400))), "ssh", think=0.01)
    session.close()


def rdp_admin(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    admin = pick(rng, ctx.topology.role("admin_workstation"))
    server = pick(rng, ctx.topology.role("domain_controller") + ctx.topology.role("file_server")
                  + ctx.topology.role("ehr_server"))
    session = TcpSession(ctx, admin, server, rdp.RDP_PORT, t, rng).open()
    session.send(CLIENT, rdp.connection_request(pick(rng, ["admin.omar", "admin.faris"])), "rdp")
    session.send(SERVER, rdp.connection_confirm(), "rdp", think=0.002)
    tls_session(session, rng, server.name, int(rng.integers(10, 60)), (40, 300), (200, 8000), protocol="rdp_tls")
    session.close()


def legacy_ftp(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    """Check for a result file by anonymous FTP, as lab analyzers with old firmware do."""
    analyzer = pick(rng, ctx.topology.role("lab_analyzer"))
    session = TcpSession(ctx, analyzer, ctx.topology.one("lis"), cleartext.FTP_PORT, t, rng).open()
    for direction, line in ((SERVER, "220 LIS FTP ready"), (CLIENT, "USER anonymous"),
                            (SERVER, "331 Guest login ok, send your e-mail as password"),
                            (CLIENT, f"PASS {analyzer.name}@lab"), (SERVER, "230 Guest login ok"),
                            (CLIENT, "TYPE I"), (SERVER, "200 Type set to I"),
                            (CLIENT, f"SIZE results_{int(t)}.csv"), (SERVER, "550 No such file"),
                            (CLIENT, "QUIT"), (SERVER, "221 Goodbye")):
        session.send(direction, cleartext.ftp_line(line), "ftp", think=0.002)
    session.close()


def legacy_telnet(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    """Poll a lab analyzer's Telnet service menu from the LIS; the menu needs no login."""
    analyzer = pick(rng, ctx.topology.role("lab_analyzer"))
    session = TcpSession(ctx, ctx.topology.one("lis"), analyzer, cleartext.TELNET_PORT, t, rng).open()
    session.send(SERVER, cleartext.TELNET_SERVER_OPTIONS, "telnet", think=0.002)
    session.send(CLIENT, cleartext.TELNET_CLIENT_OPTIONS, "telnet")
    session.send(SERVER, cleartext.telnet_line("SYSMEX XN-1000 SERVICE MENU") + b"> ", "telnet")
    session.send(CLIENT, cleartext.telnet_line("status"), "telnet", think=0.3)
    session.send(SERVER, cleartext.telnet_line("QC OK  REAGENT 74%  QUEUE 3") + b"> ", "telnet", think=0.01)
    session.send(CLIENT, cleartext.telnet_line("exit"), "telnet", think=0.5)
    session.close(SERVER)


def arp_chatter(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    """Resolve a neighbour's MAC: an ARP request and the true reply."""
    device = pick(rng, [d for d in ctx.topology.devices if d.role not in ("external", "attacker")])
    same_zone = [d for d in ctx.topology.devices if d.zone == device.zone and d is not device]
    if not same_zone:
        return
    target = pick(rng, same_zone)
    ctx.buffer.raw(t, arp_frame(dpkt.arp.ARP_OP_REQUEST, device.mac, device.ip, b"\xff" * 6, target.ip,
                                b"\x00" * 6))
    ctx.buffer.raw(t + 0.0002, arp_frame(dpkt.arp.ARP_OP_REPLY, target.mac, target.ip, device.mac, device.ip,
                                         device.mac))
    ctx.count("arp", 2)


def arp_frame(op: int, sender_mac: bytes, sender_ip: str, eth_dst: bytes, target_ip: str,
              target_mac: bytes) -> bytes:
    arp = dpkt.arp.ARP(op=op, sha=sender_mac, spa=bytes(int(x) for x in sender_ip.split(".")),
                       tha=target_mac, tpa=bytes(int(x) for x in target_ip.split(".")))
    return bytes(dpkt.ethernet.Ethernet(dst=eth_dst, src=sender_mac, type=dpkt.ethernet.ETH_TYPE_ARP,
                                        data=arp))


def smb_open(ctx, rng, client: Device, server: Device, t: float, user: str, share: str,
                 status: int = smb2.STATUS_SUCCESS) -> tuple[TcpSession, smb2.SmbConversation]:
    session = TcpSession(ctx, client, server, smb2.SMB_PORT, t, rng).open()
    conversation = smb2.SmbConversation(rng)
    session.send(CLIENT, smb2.negotiate_request(conversation), "smb2")
    session.send(SERVER, smb2.negotiate_response(conversation, int((t + 11644473600) * 1e7)), "smb2", think=0.001)
    session.send(CLIENT, smb2.session_setup_request(conversation, 1), "smb2")
    session.send(SERVER, smb2.session_setup_response(conversation, 1), "smb2", think=0.001)
    session.send(CLIENT, smb2.session_setup_request(conversation, 2, user=user, workstation=client.name.upper()),
                 "smb2")
    session.send(SERVER, smb2.session_setup_response(conversation, 2, status=status), "smb2", think=0.003)
    if status == smb2.STATUS_SUCCESS:
        session.send(CLIENT, smb2.tree_connect_request(conversation, f"\\\\{server.name}\\{share}"), "smb2")
        session.send(SERVER, smb2.tree_connect_response(conversation), "smb2", think=0.001)
    return session, conversation


def smb_write_file(session: TcpSession, conversation: smb2.SmbConversation, name: str, data: bytes,
                   think: float = 0.001) -> None:
    file_id = conversation.new_file_id()
    session.send(CLIENT, smb2.create_request(conversation, name, write=True), "smb2", think=think)
    session.send(SERVER, smb2.create_response(conversation, file_id, 0), "smb2", think=0.001)
    for offset in range(0, len(data), 32768):
        chunk = data[offset:offset + 32768]
        session.send(CLIENT, smb2.write_request(conversation, file_id, offset, chunk), "smb2")
        session.send(SERVER, smb2.write_response(conversation, len(chunk)), "smb2", think=0.001)
    session.send(CLIENT, smb2.close_request(conversation, file_id), "smb2")
    session.send(SERVER, smb2.close_response(conversation), "smb2", think=0.0005)


def smb_file_access(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    """A workstation opens the clinical share, reads one document and saves a new version."""
    client = pick(rng, ctx.topology.role("nurse_workstation") + ctx.topology.role("physician_workstation"))
    server = ctx.topology.one("file_server")
    session, conversation = smb_open(ctx, rng, client, server, t, pick(rng, list(USER_NAMES)), "Clinical")
    name = f"Ward{int(rng.integers(1, 9))}\\rota_{int(rng.integers(1, 53)):02d}.xlsx"
    file_id = conversation.new_file_id()
    size = int(rng.integers(8000, 60000))
    session.send(CLIENT, smb2.create_request(conversation, name, write=False), "smb2", think=0.2)
    session.send(SERVER, smb2.create_response(conversation, file_id, size), "smb2", think=0.001)
    session.send(CLIENT, smb2.read_request(conversation, file_id, 0, size), "smb2")
    session.send(SERVER, smb2.read_response(conversation, rng.bytes(size)), "smb2", think=0.002)
    session.send(CLIENT, smb2.close_request(conversation, file_id), "smb2")
    session.send(SERVER, smb2.close_response(conversation), "smb2", think=0.0005)
    if rng.random() < 0.3:
        smb_write_file(session, conversation, name, rng.bytes(size), think=float(rng.exponential(20)))
    session.close()


def http_intranet(ctx: SimContext, state: BenignState, rng: np.random.Generator, t: float) -> None:
    """Plain-HTTP status pages of the print server, still served without TLS."""
    client = pick(rng, ctx.topology.role("nurse_workstation") + ctx.topology.role("admin_workstation"))
    server = ctx.topology.one("print_server")
    session = TcpSession(ctx, client, server, cleartext.HTTP_PORT, t, rng).open()
    session.send(CLIENT, cleartext.http_request("GET", "print.rafidain.hosp", "/queue/status"), "http")
    body = json.dumps({"printers": len(ctx.topology.role("printer")), "queued": int(rng.integers(0, 12))}).encode()
    session.send(SERVER, cleartext.http_response(200, "OK", body, "application/json"), "http", think=0.01)
    session.close()


ActivityFunction = Callable[[SimContext, BenignState, np.random.Generator, float], None]

# name -> (sessions per hour at full rhythm for the 300-device hospital, follows rhythm, function)
ACTIVITIES: dict[str, tuple[float, bool, ActivityFunction]] = {
    "hl7_adt": (240, True, hl7_adt),
    "hl7_lab": (300, True, hl7_lab),
    "dicom_store": (90, True, dicom_store),
    "dicom_echo": (60, False, dicom_echo),
    "dicom_query_retrieve": (60, True, dicom_query_retrieve),
    "fhir_rest": (1500, True, fhir_rest),
    "web_browsing": (900, True, web_browsing),
    "dns_internal": (6000, True, dns_internal),
    "ntp_sync": (600, False, ntp_sync),
    "kerberos_logon": (500, True, kerberos_logon),
    "ldap_lookup": (400, True, ldap_lookup),
    "ssh_admin": (12, True, ssh_admin),
    "rdp_admin": (8, True, rdp_admin),
    "legacy_ftp": (20, True, legacy_ftp),
    "legacy_telnet": (20, True, legacy_telnet),
    "arp_chatter": (1200, False, arp_chatter),
    "smb_file_access": (600, True, smb_file_access),
    "http_intranet": (200, True, http_intranet),
}
