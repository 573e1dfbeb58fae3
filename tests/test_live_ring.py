"""The TPACKET_V3 ring reader on a veth pair inside a network namespace made by the test.

Frames are built here with dpkt, sent from one veth end by a raw socket
and read on the other end by engine.capture.live, all inside the
namespace; the namespace (and with it the veth pair) is deleted after each
test.
"""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from conftest import REPO_ROOT, require_root, require_tool
from engine.capture.live import RingConfig

# Runs inside the namespace: sends the frames of the request on `send`,
# reads them on `capture` with one LiveCapture per socket, and prints what
# arrived as JSON.
CAPTURE_SCRIPT = r"""
import json, socket, sys, time
from engine.capture.bpf import compile_filter
from engine.capture.live import LiveCapture, RingConfig
from engine.decode import decode_batch, new_anomaly_counters

request = json.loads(sys.argv[1])
ring = RingConfig(block_size=1 << 16, block_count=8, snaplen=request.get("snaplen", 4096))
program = compile_filter(request["filter"]) if request.get("filter") else None
captures = [LiveCapture(request["capture"], ring, bpf_program=program, fanout_group=request.get("fanout"))
            for _ in range(request.get("sockets", 1))]
for capture in captures:
    capture.start()
sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sender.bind((request["send"], 0))
for frame in request["frames"]:
    sender.send(bytes.fromhex(frame))
if request.get("stop_first"):
    for capture in captures:
        capture.stop()
    for frame in request["frames"]:
        sender.send(bytes.fromhex(frame))
else:
    time.sleep(0.1)
    for capture in captures:
        capture.stop()
result = []
for capture in captures:
    packets = []
    for batch in capture.drain():
        decode_batch(batch.packets, batch.data, new_anomaly_counters())
        for record in batch.packets:
            start = int(record["data_offset"])
            packets.append({
                "frame": bytes(batch.data[start:start + int(record["caplen"])]).hex(),
                "caplen": int(record["caplen"]),
                "wirelen": int(record["wirelen"]),
                "link_type": int(record["link_type"]),
                "ts_ns": int(record["ts_ns"]),
                "vlan_ids": [int(v) for v in record["vlan_ids"][: int(record["vlan_depth"])]],
                "dst_port": int(record["dst_port"]),
            })
    result.append({"packets": packets, "stats": capture.stats})
    capture.close()
print(json.dumps(result))
"""


@pytest.fixture
def veth_namespace():
    """A new network namespace holding a veth pair (send end, capture end), both up."""
    require_root()
    require_tool("ip")
    token = secrets.token_hex(3)
    namespace, send, capture = f"wwlive-{token}", f"wws{token}", f"wwc{token}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        commands = [
            ["ip", "-n", namespace, "link", "add", send, "type", "veth", "peer", "name", capture],
            ["ip", "-n", namespace, "link", "set", send, "up"],
            ["ip", "-n", namespace, "link", "set", capture, "up"],
            # No IPv6 router or neighbour solicitations from the namespace
            # itself: every captured frame is one the test sent.
            ["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
        ]
        for command in commands:
            subprocess.run(command, check=True)
        yield namespace, send, capture
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def capture_in_namespace(veth, frames, **request):
    namespace, send, capture = veth
    request.update(send=send, capture=capture, frames=[frame.hex() for frame in frames])
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", CAPTURE_SCRIPT, json.dumps(request)],
        capture_output=True, text=True, timeout=60, env=environment, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def udp_frame(src_port, dst_port, payload=b"x" * 20, src_ip=b"\x0a\x00\x00\x01", dst_ip=b"\x0a\x00\x00\x02"):
    udp = dpkt.udp.UDP(sport=src_port, dport=dst_port, data=payload)
    udp.ulen = len(bytes(udp))
    ip = dpkt.ip.IP(src=src_ip, dst=dst_ip, p=dpkt.ip.IP_PROTO_UDP, data=udp)
    ip.len = len(bytes(ip))
    ethernet = dpkt.ethernet.Ethernet(
        src=bytes.fromhex("020000000001"), dst=bytes.fromhex("020000000002"), type=0x0800, data=ip
    )
    return bytes(ethernet)


def tagged(frame, tpid, vlan_id, priority=0):
    """Insert an 802.1Q/802.1ad tag after the MAC addresses."""
    tci = (priority << 13) | vlan_id
    return frame[:12] + tpid.to_bytes(2, "big") + tci.to_bytes(2, "big") + frame[12:]


def test_frames_arrive_byte_exact(veth_namespace):
    frames = [udp_frame(1000 + i, 53) for i in range(5)]
    [socket_result] = capture_in_namespace(veth_namespace, frames)
    packets = socket_result["packets"]
    assert [bytes.fromhex(p["frame"]) for p in packets] == frames
    assert [p["caplen"] for p in packets] == [len(f) for f in frames]
    assert [p["wirelen"] for p in packets] == [len(f) for f in frames]
    assert {p["link_type"] for p in packets} == {1}
    timestamps = [p["ts_ns"] for p in packets]
    assert timestamps == sorted(timestamps)
    assert socket_result["stats"]["kernel_packets"] == 5
    assert socket_result["stats"]["kernel_drops"] == 0


def test_vlan_tags_restored(veth_namespace):
    plain = udp_frame(1000, 53)
    single = tagged(plain, 0x8100, 10, priority=3)
    # 802.1ad outer tag 100 around an 802.1Q inner tag 20: the kernel
    # strips the outer one only.
    double = tagged(tagged(plain, 0x8100, 20), 0x88A8, 100)
    [socket_result] = capture_in_namespace(veth_namespace, [single, double])
    packets = socket_result["packets"]
    assert [bytes.fromhex(p["frame"]) for p in packets] == [single, double]
    assert [p["wirelen"] for p in packets] == [len(single), len(double)]
    assert packets[0]["vlan_ids"] == [10]
    assert packets[1]["vlan_ids"] == [100, 20]
    assert packets[0]["dst_port"] == 53
    assert socket_result["stats"]["vlan_tags_restored"] == 2


def test_filter_drops_in_kernel(veth_namespace):
    frames = [udp_frame(1000, 22), udp_frame(1001, 53), udp_frame(22, 1002)]
    [socket_result] = capture_in_namespace(veth_namespace, frames, filter="not port 22")
    assert [bytes.fromhex(p["frame"]) for p in socket_result["packets"]] == [frames[1]]
    # Packets the filter rejects are not counted by the kernel at all.
    assert socket_result["stats"]["kernel_packets"] == 1


def test_snaplen_truncates(veth_namespace):
    frame = udp_frame(1000, 53, payload=b"y" * 300)
    [socket_result] = capture_in_namespace(veth_namespace, [frame], snaplen=64)
    [packet] = socket_result["packets"]
    assert packet["caplen"] == 64
    assert packet["wirelen"] == len(frame)
    assert bytes.fromhex(packet["frame"]) == frame[:64]
    assert socket_result["stats"]["frames_truncated"] == 1


def test_fanout_keeps_flow_on_one_socket(veth_namespace):
    frames = []
    for i in range(40):
        client, server = 20000 + i, 443
        frames.append(udp_frame(client, server, src_ip=b"\x0a\x00\x00\x01", dst_ip=b"\x0a\x00\x00\x02"))
        frames.append(udp_frame(server, client, src_ip=b"\x0a\x00\x00\x02", dst_ip=b"\x0a\x00\x00\x01"))
    results = capture_in_namespace(veth_namespace, frames, sockets=2, fanout=4242)
    received = [bytes.fromhex(p["frame"]) for r in results for p in r["packets"]]
    assert sorted(received) == sorted(frames)
    socket_of = {}
    for index, result in enumerate(results):
        for packet in result["packets"]:
            frame = bytes.fromhex(packet["frame"])
            udp = dpkt.ethernet.Ethernet(frame).data.data
            ports = frozenset((udp.sport, udp.dport))
            socket_of.setdefault(ports, set()).add(index)
    assert len(socket_of) == 40
    assert all(len(sockets) == 1 for sockets in socket_of.values())
    assert all(r["packets"] for r in results)


def test_stop_keeps_ring_and_rejects_new(veth_namespace):
    frames = [udp_frame(3000 + i, 53) for i in range(100)]
    [socket_result] = capture_in_namespace(veth_namespace, frames, stop_first=True)
    # The first 100 were in the ring before stop(); the 100 sent after it
    # never entered.
    assert [bytes.fromhex(p["frame"]) for p in socket_result["packets"]] == frames
    assert socket_result["stats"]["kernel_packets"] == 100


def test_ring_config_rejects_block_size():
    with pytest.raises(ValueError, match="invalid block_size 3000"):
        RingConfig(block_size=3000).validate()


def test_ring_config_rejects_snaplen_above_block():
    with pytest.raises(ValueError, match="does not fit in block_size 65536"):
        RingConfig(block_size=1 << 16, snaplen=65535).validate()


def test_ring_config_rejects_frame_size():
    with pytest.raises(ValueError, match="invalid frame_size 100"):
        RingConfig(frame_size=100).validate()


def test_missing_interface_error():
    require_root()
    from engine.capture.live import LiveCapture

    with pytest.raises(OSError, match="not found"):
        LiveCapture("wwnosuchif0", RingConfig())


def test_default_ring_is_valid():
    config = RingConfig()
    config.validate()
    assert config.ring_bytes == 64 << 20
    assert Path(REPO_ROOT, "ext", "afpacket.pyx").is_file()
