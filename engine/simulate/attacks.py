"""Attack scenarios: each builds its traffic from a start time and returns its labels.

A scenario function takes the context, the benign state (patients, id
counters), its own random stream, the start time, an intensity and the
attacker device. Intensity 1.0 is the default strength, and 2.0 roughly
doubles rate or volume. The function returns the Label records of the
traffic it sent.

Attacks from inside the hospital come from one compromised workstation per
run, so the same source recurs across days. Floods spoof their sources from
SPOOFED_PREFIX, a range no benign host uses, so a selector on that prefix,
the victim and the time range identifies every flood flow.
"""

from __future__ import annotations

import base64
from typing import Callable

import dpkt
import numpy as np

from engine.simulate import benign
from engine.simulate.benign import arp_frame, pick, smb_open, smb_write_file, tls_session
from engine.simulate.labels import Label
from engine.simulate.protocols import cleartext, dicom, hl7, kerberos, ldap, mqtt, rdp, smb2, ssh
from engine.simulate.session import CLIENT, SERVER, SimContext, TcpSession, UdpFlow
from engine.simulate.synthetic import USER_NAMES
from engine.simulate.topology import Device
from engine.simulate.writer import ACK, KIND_TCP, KIND_UDP, RST, SYN

SPOOFED_PREFIX = "192.0.2."  # RFC 5737 TEST-NET-1, used only for spoofed flood sources

# Listening TCP ports per role: a scan probe to one gets SYN/ACK, to any other port RST/ACK.
OPEN_PORTS = {
    "pacs": (22, 80, 104, 443, 11112),
    "ehr_server": (80, 443, 3389),
    "ehr_db": (22, 1433),
    "domain_controller": (53, 88, 135, 389, 445, 636, 3268, 3389),
    "file_server": (135, 139, 445, 3389),
    "hl7_engine": (22, 2575, 8080),
    "lis": (21, 2575),
    "fhir_server": (443,),
    "mqtt_broker": (1883, 8883),
    "lab_analyzer": (21, 23),
}
SCAN_PORTS = (21, 22, 23, 25, 53, 80, 88, 104, 110, 111, 135, 139, 143, 389, 443, 445, 465, 587, 636,
              993, 995, 1433, 1521, 1883, 2049, 2575, 3268, 3306, 3389, 5432, 5900, 5985, 6379,
              8000, 8080, 8443, 8883, 9100, 11112, 27017)


def _key(session) -> dict:
    return session.key.as_dict()


def _tcp_probe(ctx: SimContext, src: Device, dst: Device, sport: int, dport: int, t: float,
               rng: np.random.Generator, full_connect: bool) -> tuple[dict, float]:
    """Send one scan probe: SYN, then SYN/ACK and RST (open) or RST/ACK (closed)."""
    session = TcpSession(ctx, src, dst, dport, t, rng, sport=sport, rtt=0.0006)
    if dport in OPEN_PORTS.get(dst.role, ()):
        if full_connect:
            session.open()
            session.reset(CLIENT)
        else:
            session._emit(CLIENT, SYN)
            session.next_seq[CLIENT] += 1
            session.t += session.rtt / 2
            session._emit(SERVER, SYN | ACK)
            session.next_seq[SERVER] += 1
            session.t += session.rtt / 2
            session._emit(CLIENT, RST)
    else:
        session.reject()
    return _key(session), session.t


def icmp_frame(src: Device, dst: Device, icmp_type: int, code: int, body: bytes, ttl: int = 64,
               ip_id: int = 0) -> bytes:
    icmp = dpkt.icmp.ICMP(type=icmp_type, code=code, data=body)
    packet = dpkt.ip.IP(src=src.ip_bytes, dst=dst.ip_bytes, p=dpkt.ip.IP_PROTO_ICMP, ttl=ttl, id=ip_id, data=icmp)
    packet.len = 20 + len(bytes(icmp))
    return bytes(dpkt.ethernet.Ethernet(src=src.mac, dst=dst.mac, type=dpkt.ethernet.ETH_TYPE_IP, data=packet))


def port_scan(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """SYN (default), connect or UDP scan of one server's common ports; `mode=` selects."""
    mode = params.get("mode", "syn")
    if mode not in ("syn", "connect", "udp"):
        raise ValueError(f"invalid port_scan mode {mode!r}: expected syn, connect or udp")
    target = ctx.topology.one(params.get("target", "pacs"))
    ports = list(SCAN_PORTS)
    extra = int(len(ports) * max(0.0, intensity - 1.0) * 10)
    ports += [int(p) for p in rng.choice(np.arange(1024, 49152), size=min(extra, 5000), replace=False)]
    order = rng.permutation(len(ports))
    gap = 0.01 / max(intensity, 0.1)
    flows, now, end = [], t, t
    sport = ctx.ports.allocate(attacker.ip)
    for index in order.tolist():
        dport = ports[index]
        if mode == "udp":
            flow = UdpFlow(ctx, attacker, target, dport, rng, sport=sport)
            flow.send(now, CLIENT, b"")
            flows.append(_key(flow))
            end = now
            if dport not in (53, 123):
                # Closed UDP port: ICMP port unreachable quoting the probe (RFC 792).
                probe = dpkt.ip.IP(src=attacker.ip_bytes, dst=target.ip_bytes, p=17, ttl=64,
                                   data=dpkt.udp.UDP(sport=sport, dport=dport, ulen=8))
                probe.len = 28
                quoted = bytes(probe)[:28]
                ctx.buffer.raw(now + 0.0004, icmp_frame(target, attacker, 3, 3, b"\0\0\0\0" + quoted))
                end = now + 0.0004
        else:
            key, end = _tcp_probe(ctx, attacker, target, sport, dport, now, rng, mode == "connect")
            flows.append(key)
        now += gap * float(rng.uniform(0.5, 1.5))
    return [Label("port_scan", "port_scan", attacker.ip, target.ip, t, end, dst_ports=ports,
                  flows=flows, details={"mode": mode, "ports": len(ports)})]


def host_sweep(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """ICMP echo sweep of a zone's first addresses; live hosts reply."""
    zone = params.get("zone", "clinical_devices")
    subnet = ctx.topology.zone_subnets[zone]
    count = min(int(254 * intensity), subnet.num_addresses - 2)
    flows, now, end = [], t, t
    for offset in range(1, count + 1):
        address = str(subnet.network_address + offset)
        live = ctx.topology.by_ip.get(address)
        target = live or Device("absent", "absent", zone, address, ctx.topology.router.mac, "")
        echo = dpkt.icmp.ICMP.Echo(id=0x4D2, seq=offset, data=b"\x00" * 32)
        ctx.buffer.raw(now, icmp_frame(attacker, target, 8, 0, bytes(echo), ip_id=offset))
        flows.append({"src": attacker.ip, "sport": 8, "dst": address, "dport": 0, "proto": "icmp"})
        end = max(end, now)
        if live is not None:
            end = max(end, now + 0.0005)
            ctx.buffer.raw(now + 0.0005, icmp_frame(live, attacker, 0, 0, bytes(echo), ip_id=offset + 7))
        now += 0.004 / max(intensity, 0.1)
    return [Label("host_sweep", "host_sweep", attacker.ip, str(subnet), t, end, flows=flows,
                  details={"zone": zone, "addresses": count})]


def ssh_bruteforce(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    target = ctx.topology.one(params.get("target", "hl7_engine"))
    attempts = max(3, int(30 * intensity))
    flows, now = [], t
    for _ in range(attempts):
        session = TcpSession(ctx, attacker, target, ssh.SSH_PORT, now, rng).open()
        benign.ssh_handshake(session, rng, client_banner="SSH-2.0-libssh_0.9.6")
        for _ in range(3):  # three password tries per connection, each rejected
            session.send(CLIENT, ssh.encrypted(rng, 96), "ssh", think=0.01)
            session.send(SERVER, ssh.encrypted(rng, 32), "ssh", think=0.4)
        session.close(SERVER)
        flows.append(_key(session))
        now = session.t + float(rng.uniform(0.05, 0.4)) / intensity
    return [Label("ssh_bruteforce", "ssh_bruteforce", attacker.ip, target.ip, t, session.t,
                  dst_ports=[ssh.SSH_PORT], flows=flows, details={"connections": attempts})]


def rdp_bruteforce(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    target = ctx.topology.one(params.get("target", "file_server"))
    attempts = max(3, int(25 * intensity))
    flows, now = [], t
    for index in range(attempts):
        session = TcpSession(ctx, attacker, target, rdp.RDP_PORT, now, rng).open()
        session.send(CLIENT, rdp.connection_request(pick(rng, ["administrator", "admin", "user", "test"])), "rdp")
        session.send(SERVER, rdp.connection_confirm(), "rdp", think=0.002)
        tls_session(session, rng, target.name, 2, (300, 600), (60, 120), protocol="rdp_tls")
        session.close(SERVER)
        flows.append(_key(session))
        now = session.t + float(rng.uniform(0.1, 0.5)) / intensity
    return [Label("rdp_bruteforce", "rdp_bruteforce", attacker.ip, target.ip, t, session.t,
                  dst_ports=[rdp.RDP_PORT], flows=flows, details={"connections": attempts})]


def ftp_bruteforce(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    target = ctx.topology.one("lab_analyzer")
    attempts = max(3, int(20 * intensity))
    flows, now = [], t
    passwords = ("admin", "123456", "sysmex", "password", "service", "lab2024", "qwerty", "root")
    for _ in range(attempts):
        session = TcpSession(ctx, attacker, target, cleartext.FTP_PORT, now, rng).open()
        session.send(SERVER, cleartext.ftp_line("220 XN-1000 FTP server ready"), "ftp", think=0.002)
        for _ in range(3):
            session.send(CLIENT, cleartext.ftp_line("USER admin"), "ftp", think=0.01)
            session.send(SERVER, cleartext.ftp_line("331 Password required for admin"), "ftp", think=0.002)
            session.send(CLIENT, cleartext.ftp_line(f"PASS {pick(rng, list(passwords))}"), "ftp", think=0.01)
            session.send(SERVER, cleartext.ftp_line("530 Login incorrect"), "ftp", think=0.3)
        session.close(SERVER)
        flows.append(_key(session))
        now = session.t + float(rng.uniform(0.05, 0.3)) / intensity
    return [Label("ftp_bruteforce", "ftp_bruteforce", attacker.ip, target.ip, t, session.t,
                  dst_ports=[cleartext.FTP_PORT], flows=flows, details={"connections": attempts})]


def password_spray(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """Try Kerberos pre-authentication once per user name, every attempt failing."""
    dc = ctx.topology.one("domain_controller")
    realm = ctx.topology.site["realm"]
    users = [f"{name}{suffix}" for suffix in ("", ".adm", "2") for name in USER_NAMES]
    users = users[:max(5, int(30 * intensity))]
    flows, now = [], t
    for user in users:
        flow = UdpFlow(ctx, attacker, dc, kerberos.KERBEROS_PORT, rng)
        flow.send(now, CLIENT, kerberos.as_req(rng, realm, user, now, with_preauth=True), "kerberos")
        flow.send(now + 0.0007, SERVER, kerberos.krb_error(realm, kerberos.KDC_ERR_PREAUTH_FAILED, now, user),
                  "kerberos")
        flows.append(_key(flow))
        now += float(rng.uniform(0.2, 1.0)) / intensity
    return [Label("password_spray", "password_spray", attacker.ip, dc.ip, t, now, dst_ports=[88],
                  flows=flows, details={"users": len(users)})]


def smb_lateral(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """Admin-share logons to several workstations, dropping a service binary on each."""
    candidates = [d for d in ctx.topology.role("nurse_workstation") + ctx.topology.role("physician_workstation")
                  if d.ip != attacker.ip]
    count = min(len(candidates), max(2, int(6 * intensity)))
    targets = [candidates[i] for i in rng.choice(len(candidates), size=count, replace=False).tolist()]
    flows, now, end = [], t, t
    for target in targets:
        session, conversation = smb_open(ctx, rng, attacker, target, now, "admin.faris", "ADMIN$")
        smb_write_file(session, conversation, "Temp\\wupdsvc.exe", rng.bytes(int(rng.integers(40000, 90000))))
        session.close()
        flows.append(_key(session))
        end = session.t
        now = session.t + float(rng.uniform(1, 4)) / intensity
    return [Label("smb_lateral", "smb_lateral", attacker.ip, [d.ip for d in targets], t, end,
                  dst_ports=[445], flows=flows, details={"targets": count, "share": "ADMIN$"})]


def ransomware(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """Mass overwrite of files on the clinical share, each rewritten with a ".locked" name."""
    server = ctx.topology.one("file_server")
    files = max(10, int(80 * intensity))
    session, conversation = smb_open(ctx, rng, attacker, server, t, "n.alwan", "Clinical")
    for index in range(files):
        name = f"Ward{index % 8 + 1}\\handover_{index:04d}.docx.locked"
        smb_write_file(session, conversation, name, rng.bytes(int(rng.integers(3000, 20000))))
    session.send(CLIENT, smb2.create_request(conversation, "README_RESTORE.txt", write=True), "smb2")
    session.send(SERVER, smb2.create_response(conversation, conversation.new_file_id(), 0), "smb2")
    session.close()
    return [Label("ransomware", "ransomware", attacker.ip, server.ip, t, session.t, dst_ports=[445],
                  flows=[_key(session)], details={"files": files, "share": "Clinical"})]


def dicom_exfil(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """C-MOVE of studies to an unknown AE title at an external address."""
    sink = ctx.topology.attacker("exfil_sink")
    studies = max(1, int(3 * intensity))
    sessions = benign.dicom_query_retrieve(ctx, state, rng, t, requester=attacker, destination_ae="EXT_ARCHIVE",
                                           destination=sink, studies=studies, images_per_study=(3, 6))
    query, store = sessions
    return [
        Label("dicom_exfil", "dicom_exfil", attacker.ip, query.server.ip, t, query.t, dst_ports=[104],
              flows=[_key(query)], details={"move_destination_ae": "EXT_ARCHIVE", "studies": studies,
                                            "role": "C-MOVE request"}),
        Label("dicom_exfil", "dicom_exfil", store.client.ip, sink.ip, store.first_time, store.t, dst_ports=[104],
              flows=[_key(store)], details={"called_ae": "EXT_ARCHIVE", "studies": studies,
                                            "role": "C-STORE to external address"}),
    ]


def hl7_unauthorized(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """ORU results injected into the HL7 engine from a workstation that never sends HL7."""
    engine = ctx.topology.one("hl7_engine")
    session = TcpSession(ctx, attacker, engine, hl7.HL7_PORT, t, rng).open()
    for _ in range(max(1, int(5 * intensity))):
        patient = pick(rng, state.patients)
        control = state.next_control_id()
        order = f"ORD{int(rng.integers(10**6, 10**7))}"
        results = [("718-7", "Hemoglobin", "4.1", "g/dL", "12-16"), ("2823-3", "Potassium", "7.9", "mmol/L", "3.5-5.1")]
        session.send(CLIENT, hl7.oru(patient, session.t, control, order, results), "hl7", think=0.5)
        session.send(SERVER, hl7.ack("R01", session.t, state.next_control_id(), control), "hl7", think=0.003)
    session.close()
    return [Label("hl7_unauthorized", "hl7_unauthorized", attacker.ip, engine.ip, t, session.t,
                  dst_ports=[hl7.HL7_PORT], flows=[_key(session)])]


def _flood_columns(ctx, rng, t, duration, rate, victim: Device, dport_choice, kind: int, payload_id: int,
                   answer_fraction: float) -> tuple[int, float]:
    """Append a spoofed-source flood as NumPy columns; return packet count and last time."""
    count = max(1, int(rate * duration))
    times = t + np.sort(rng.uniform(0, duration, size=count))
    sources = rng.integers(1, 255, size=count)
    # Source ports above 61000: tshark 4.0 registers no UDP dissector there, so random
    # flood payloads are not parsed (and reported malformed) as some port's protocol.
    sports = rng.integers(61000 if kind == KIND_UDP else 1024, 65536, size=count)
    dports = dport_choice(count)
    router = ctx.topology.router
    flows = np.empty(count, dtype=np.int64)
    for index, (source, sport, dport) in enumerate(zip(sources.tolist(), sports.tolist(), dports.tolist())):
        flows[index] = ctx.buffer.flows.add(kind, router.mac, f"{SPOOFED_PREFIX}{source}", sport, victim.mac,
                                            victim.ip, dport, 48, 64, 1024, 0)
    zeros = np.zeros(count, dtype=np.int64)
    columns = {"time": times, "kind": np.full(count, kind), "flow": flows, "dir": zeros,
               "flags": np.full(count, SYN if kind == KIND_TCP else 0),
               "seq": rng.integers(0, 2**32, size=count), "ack": zeros,
               "payload": np.full(count, payload_id)}
    ctx.buffer.add_columns(columns)
    answered = rng.random(count) < answer_fraction
    if kind == KIND_TCP and answered.any():
        # The victim replies to part of the SYNs with SYN/ACK until its backlog fills.
        picked = np.nonzero(answered)[0]
        ctx.buffer.add_columns({"time": times[picked] + 0.0002, "kind": np.full(len(picked), kind),
                                "flow": flows[picked], "dir": np.ones(len(picked), dtype=np.int64),
                                "flags": np.full(len(picked), SYN | ACK),
                                "seq": rng.integers(0, 2**32, size=len(picked)),
                                "ack": columns["seq"][picked] + 1, "payload": np.zeros(len(picked), np.int64)})
    return count, float(times[-1]) + 0.0002


def syn_flood(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    victim = ctx.topology.one("pacs")
    duration = float(params.get("duration", 10))
    count, end = _flood_columns(ctx, rng, t, duration, 1500 * intensity, victim,
                                lambda n: np.full(n, dicom.DICOM_PORT), KIND_TCP, 0, 0.2)
    return [Label("syn_flood", "syn_flood", f"{SPOOFED_PREFIX}0/24", victim.ip, t, end, dst_ports=[104],
                  selector={"src_cidr": f"{SPOOFED_PREFIX}0/24", "dst": victim.ip, "dport": 104, "proto": "tcp"},
                  details={"syn_packets": count})]


def udp_flood(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    victim = ctx.topology.one("pacs")
    duration = float(params.get("duration", 10))
    # One victim port: random ports would hit UDP dissectors registered on them and
    # make tshark report random payloads as malformed packets of those protocols.
    dport = int(params.get("dport", dicom.DICOM_PORT))
    payload_id = ctx.buffer.intern(rng.bytes(512))
    count, end = _flood_columns(ctx, rng, t, duration, 1500 * intensity, victim,
                                lambda n: np.full(n, dport), KIND_UDP, payload_id, 0.0)
    return [Label("udp_flood", "udp_flood", f"{SPOOFED_PREFIX}0/24", victim.ip, t, end, dst_ports=[dport],
                  selector={"src_cidr": f"{SPOOFED_PREFIX}0/24", "dst": victim.ip, "dport": dport, "proto": "udp"},
                  details={"udp_packets": count})]


def mqtt_wildcard(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """Subscribe to "#" and receive every device's telemetry."""
    broker = ctx.topology.one("mqtt_broker")
    session = TcpSession(ctx, attacker, broker, mqtt.MQTT_PORT, t, rng).open()
    session.send(CLIENT, mqtt.connect("mqtt-explorer-" + str(int(rng.integers(1000, 9999)))), "mqtt")
    session.send(SERVER, mqtt.connack(), "mqtt", think=0.001)
    session.send(CLIENT, mqtt.subscribe(1, "#"), "mqtt")
    session.send(SERVER, mqtt.suback(1), "mqtt", think=0.001)
    devices = ctx.topology.role("bedside_monitor") + ctx.topology.role("infusion_pump")
    for _ in range(max(10, int(60 * intensity))):
        device = pick(rng, devices)
        reading = f'{{"hr":{int(rng.integers(55, 110))},"spo2":{int(rng.integers(91, 100))}}}'.encode()
        session.send(SERVER, mqtt.publish(f"ward/{device.name}/vitals", reading), "mqtt",
                     think=float(rng.exponential(0.1)))
    session.send(CLIENT, mqtt.disconnect(), "mqtt")
    session.close()
    return [Label("mqtt_wildcard", "mqtt_wildcard", attacker.ip, broker.ip, t, session.t, dst_ports=[1883],
                  flows=[_key(session)], details={"topic_filter": "#"})]


def mqtt_flood(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    broker = ctx.topology.one("mqtt_broker")
    flows, end = [], t
    for connection in range(max(1, int(3 * intensity))):
        session = TcpSession(ctx, attacker, broker, mqtt.MQTT_PORT, t + connection * 0.05, rng).open()
        session.send(CLIENT, mqtt.connect(f"flood{connection}"), "mqtt")
        session.send(SERVER, mqtt.connack(), "mqtt", think=0.001)
        for index in range(int(300 * intensity)):
            session.send(CLIENT, mqtt.publish(f"ward/bed{index % 40}/vitals", rng.bytes(200)), "mqtt",
                         think=0.002)
        session.reset(CLIENT)
        flows.append(_key(session))
        end = max(end, session.t)
    return [Label("mqtt_flood", "mqtt_flood", attacker.ip, broker.ip, t, end, dst_ports=[1883], flows=flows)]


def dns_tunnel(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """TXT queries whose labels carry base32 data for an attacker-run domain."""
    resolver = ctx.topology.one("dns_ntp")
    queries = max(10, int(120 * intensity))
    flows, now = [], t
    for index in range(queries):
        chunk = base64.b32encode(rng.bytes(35)).decode().rstrip("=").lower()
        name = f"{chunk[:56]}.{index:x}.t.cdn-sync.example.net"
        flow = UdpFlow(ctx, attacker, resolver, cleartext.DNS_PORT, rng)
        query_id = int(rng.integers(0, 65536))
        flow.send(now, CLIENT, cleartext.dns_query(query_id, name, dpkt.dns.DNS_TXT), "dns")
        answer = base64.b64encode(rng.bytes(90))
        flow.send(now + float(rng.uniform(0.02, 0.08)), SERVER,
                  cleartext.dns_response(query_id, name, [], dpkt.dns.DNS_TXT, txt=[answer]), "dns")
        flows.append(_key(flow))
        now += float(rng.exponential(0.25)) / intensity
    return [Label("dns_tunnel", "dns_tunnel", attacker.ip, resolver.ip, t, now + 0.08, dst_ports=[53],
                  flows=flows, details={"domain": "cdn-sync.example.net", "queries": queries})]


def c2_beacon(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """TLS check-ins to the C2 server every `interval` seconds with +-20% jitter."""
    server = ctx.topology.attacker("c2_server")
    interval = float(params.get("interval", 60)) / max(intensity, 0.1)
    beacons = int(params.get("beacons", 20))
    flows, now, end = [], t, t
    for _ in range(beacons):
        session = TcpSession(ctx, attacker, server, 443, now, rng).open()
        tls_session(session, rng, "telemetry.cdn-sync.example.net", 1, (180, 260), (90, 140))
        session.close()
        flows.append(_key(session))
        end = session.t
        now += interval * float(rng.uniform(0.8, 1.2))
    return [Label("c2_beacon", "c2_beacon", attacker.ip, server.ip, t, end, dst_ports=[443], flows=flows,
                  details={"interval_s": interval, "beacons": beacons})]


def arp_spoof(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """Gratuitous ARP replies claiming the zone gateway's address for the attacker's MAC."""
    gateway_ip = str(ctx.topology.zone_subnets[attacker.zone].network_address + 1)
    victims = [d for d in ctx.topology.devices if d.zone == attacker.zone and d.ip != attacker.ip][:8]
    replies = max(5, int(30 * intensity))
    now = t
    for index in range(replies):
        victim = victims[index % len(victims)] if victims else None
        if victim is None:
            break
        ctx.buffer.raw(now, arp_frame(dpkt.arp.ARP_OP_REPLY, attacker.mac, gateway_ip, victim.mac, victim.ip,
                                      victim.mac))
        ctx.count("arp")
        now += 2.0 / intensity / max(len(victims), 1)
    mac = ":".join(f"{b:02x}" for b in attacker.mac)
    return [Label("arp_spoof", "arp_spoof", attacker.ip, [v.ip for v in victims], t, now,
                  selector={"proto": "arp", "src_mac": mac, "claimed_ip": gateway_ip},
                  details={"replies": replies})]


def cleartext_credentials(ctx, state, rng, t, intensity, attacker, params) -> list[Label]:
    """Telnet and FTP logins with a real password, and an LDAP simple bind with one."""
    analyzer = ctx.topology.one("lab_analyzer")
    dc = ctx.topology.one("domain_controller")
    flows = []
    telnet = TcpSession(ctx, attacker, analyzer, cleartext.TELNET_PORT, t, rng).open()
    telnet.send(SERVER, cleartext.TELNET_SERVER_OPTIONS, "telnet", think=0.002)
    telnet.send(CLIENT, cleartext.TELNET_CLIENT_OPTIONS, "telnet")
    telnet.send(SERVER, b"login: ", "telnet")
    telnet.send(CLIENT, cleartext.telnet_line("service"), "telnet", think=1.0)
    telnet.send(SERVER, b"Password: ", "telnet")
    telnet.send(CLIENT, cleartext.telnet_line("Sysmex#2019"), "telnet", think=1.2)
    telnet.send(SERVER, cleartext.telnet_line("Welcome, service") + b"> ", "telnet")
    telnet.send(CLIENT, cleartext.telnet_line("exit"), "telnet", think=3.0)
    telnet.close(SERVER)
    flows.append(_key(telnet))

    ftp = TcpSession(ctx, attacker, analyzer, cleartext.FTP_PORT, telnet.t + 2, rng).open()
    for direction, line in ((SERVER, "220 XN-1000 FTP server ready"), (CLIENT, "USER service"),
                            (SERVER, "331 Password required for service"), (CLIENT, "PASS Sysmex#2019"),
                            (SERVER, "230 User service logged in"), (CLIENT, "QUIT"), (SERVER, "221 Goodbye")):
        ftp.send(direction, cleartext.ftp_line(line), "ftp", think=0.05)
    ftp.close()
    flows.append(_key(ftp))

    bind = TcpSession(ctx, attacker, dc, ldap.LDAP_PORT, ftp.t + 1, rng).open()
    bind.send(CLIENT, ldap.simple_bind(1, "cn=svc-scanner,ou=Service,dc=rafidain,dc=hosp", "Winter2024!"), "ldap")
    bind.send(SERVER, ldap.bind_response(1), "ldap", think=0.001)
    bind.send(CLIENT, ldap.unbind(2), "ldap")
    bind.close()
    flows.append(_key(bind))
    return [Label("cleartext_credentials", "cleartext_credentials", attacker.ip, [analyzer.ip, dc.ip], t, bind.t,
                  dst_ports=[23, 21, 389], flows=flows, details={"protocols": ["telnet", "ftp", "ldap"]})]


Scenario = Callable[..., list[Label]]

# Scenario-specific keys of an attack specification; `src` is accepted by every scenario.
SCENARIO_OPTIONS: dict[str, tuple[str, ...]] = {
    "port_scan": ("mode", "target"),
    "host_sweep": ("zone",),
    "ssh_bruteforce": ("target",),
    "rdp_bruteforce": ("target",),
    "syn_flood": ("duration",),
    "udp_flood": ("duration", "dport"),
    "c2_beacon": ("interval", "beacons"),
}

SCENARIOS: dict[str, Scenario] = {
    "port_scan": port_scan,
    "host_sweep": host_sweep,
    "ssh_bruteforce": ssh_bruteforce,
    "rdp_bruteforce": rdp_bruteforce,
    "ftp_bruteforce": ftp_bruteforce,
    "password_spray": password_spray,
    "smb_lateral": smb_lateral,
    "ransomware": ransomware,
    "dicom_exfil": dicom_exfil,
    "hl7_unauthorized": hl7_unauthorized,
    "syn_flood": syn_flood,
    "udp_flood": udp_flood,
    "mqtt_wildcard": mqtt_wildcard,
    "mqtt_flood": mqtt_flood,
    "dns_tunnel": dns_tunnel,
    "c2_beacon": c2_beacon,
    "arp_spoof": arp_spoof,
    "cleartext_credentials": cleartext_credentials,
}
