# L2-L4 packet decoder: fills the decode fields of ww_packet records in place.
#
# One nogil pass over a batch. Each packet is decoded by a small state machine
# (link header -> EtherType -> IPv4/IPv6 -> transport, and back to Ethernet,
# EtherType or IP when a tunnel is entered), so nesting depth costs no C stack.
#
# Every length is checked against the bytes captured (caplen), never trusted
# from a header. Two ends are tracked per packet:
#   cap_end   bytes that may be read: caplen, cut down to the end of the
#             enclosing IP or UDP datagram so Ethernet trailers are not parsed
#   wire_end  bytes the packet had on the wire (max of wirelen and caplen),
#             cut down the same way. A header length that exceeds it is
#             impossible (MALFORMED); one that only exceeds cap_end was cut
#             by the snaplen (TRUNCATED)
#
# Field contract: a header's fields are written only after its fixed part has
# passed every check, so a packet that fails at some layer has the fields of
# the outer layers and zeros from the failing layer inwards. Entering a tunnel
# moves the current IP addresses to outer_src_addr/outer_dst_addr and clears
# the network and transport fields before the inner packet is decoded.

cimport numpy as cnp
import numpy as np

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from ww_packet cimport (
    ww_packet,
    WW_STATUS_OK,
    WW_STATUS_TRUNCATED,
    WW_STATUS_MALFORMED,
    WW_STATUS_UNSUPPORTED,
    WW_STATUS_NOT_IP,
    WW_TUNNEL_GRE,
    WW_TUNNEL_VXLAN,
    WW_TUNNEL_IPIP,
    WW_FRAG_IS_FRAGMENT,
    WW_FRAG_MORE,
    WW_TCPOPT_MSS,
    WW_TCPOPT_WSCALE,
    WW_TCPOPT_SACK_PERMITTED,
    WW_TCPOPT_SACK,
    WW_TCPOPT_TIMESTAMP,
    WW_MAX_VLAN_DEPTH,
)

cnp.import_array()


# Anomaly ids index the counters array. The order is part of the interface:
# append new names at the end (before ANOMALY_ID_END) and never reuse an id.
# ANOMALY_NAMES below lists the same names in the same order.
cdef enum anomaly_id:
    ANOMALY_NONE = 0
    ANOMALY_UNKNOWN_LINK_TYPE
    ANOMALY_TRUNCATED_ETHERNET
    ANOMALY_TRUNCATED_SLL
    ANOMALY_TRUNCATED_LOOPBACK
    ANOMALY_UNKNOWN_ADDRESS_FAMILY
    ANOMALY_TRUNCATED_RAW_IP
    ANOMALY_TRUNCATED_VLAN
    ANOMALY_TRUNCATED_MPLS
    ANOMALY_UNKNOWN_MPLS_PAYLOAD
    ANOMALY_TRUNCATED_PPPOE
    ANOMALY_TOO_MANY_LAYERS
    ANOMALY_UNKNOWN_ETHERTYPE
    ANOMALY_TRUNCATED_ARP
    ANOMALY_TRUNCATED_IPV4
    ANOMALY_BAD_IP_VERSION
    ANOMALY_BAD_IP_HEADER_LENGTH
    ANOMALY_BAD_IP_TOTAL_LENGTH
    ANOMALY_IP_PAYLOAD_TOO_SHORT
    ANOMALY_TRUNCATED_IPV6
    ANOMALY_BAD_IPV6_EXTENSION_LENGTH
    ANOMALY_IPV6_EXTENSION_CHAIN_TOO_LONG
    ANOMALY_TRUNCATED_TCP
    ANOMALY_BAD_TCP_HEADER_LENGTH
    ANOMALY_BAD_TCP_OPTION_LENGTH
    ANOMALY_TRUNCATED_UDP
    ANOMALY_BAD_UDP_LENGTH
    ANOMALY_TRUNCATED_ICMP
    ANOMALY_TRUNCATED_GRE
    ANOMALY_BAD_GRE_VERSION
    ANOMALY_UNSUPPORTED_GRE_VERSION
    ANOMALY_BAD_GRE_FLAGS
    ANOMALY_TRUNCATED_ERSPAN
    ANOMALY_BAD_ERSPAN_VERSION
    ANOMALY_TRUNCATED_VXLAN
    ANOMALY_ID_END

ANOMALY_NAMES = (
    "none",
    "unknown_link_type",
    "truncated_ethernet",
    "truncated_sll",
    "truncated_loopback",
    "unknown_address_family",
    "truncated_raw_ip",
    "truncated_vlan",
    "truncated_mpls",
    "unknown_mpls_payload",
    "truncated_pppoe",
    "too_many_layers",
    "unknown_ethertype",
    "truncated_arp",
    "truncated_ipv4",
    "bad_ip_version",
    "bad_ip_header_length",
    "bad_ip_total_length",
    "ip_payload_too_short",
    "truncated_ipv6",
    "bad_ipv6_extension_length",
    "ipv6_extension_chain_too_long",
    "truncated_tcp",
    "bad_tcp_header_length",
    "bad_tcp_option_length",
    "truncated_udp",
    "bad_udp_length",
    "truncated_icmp",
    "truncated_gre",
    "bad_gre_version",
    "unsupported_gre_version",
    "bad_gre_flags",
    "truncated_erspan",
    "bad_erspan_version",
    "truncated_vxlan",
)

ANOMALY_COUNT = ANOMALY_ID_END

# Limits that bound the work per packet.
cdef enum:
    # VLAN tags, MPLS labels, PPPoE, pseudowire Ethernet and tunnels together.
    # The cap leaves room for QinQ, an MPLS stack and nested tunnels, and stops
    # fuzzed captures that nest MPLS pseudowires more than 30 deep.
    MAX_ENCAP_LAYERS = 16
    # IPv6 extension headers per IP header before the chain is rejected.
    MAX_IPV6_EXTENSIONS = 8
    # Headers are parsed only in the first 65535 bytes so that every offset
    # fits the uint16 offset fields; larger frames are IPv6 jumbograms.
    HEADER_LIMIT = 65535
    # Rows of the unknown-link-type table, plus one overflow row (link type
    # -1) that counts every value seen once the table is full. Rows are never
    # evicted, so the counts of the first 16 values stay exact.
    LINK_TABLE_SLOTS = 16

UNKNOWN_LINK_TYPE_SLOTS = LINK_TABLE_SLOTS

SUPPORTED_LINK_TYPES = {
    0: "BSD loopback (NULL), address family in the capturing host's byte order",
    1: "Ethernet",
    12: "raw IP (DLT_RAW on most systems)",
    14: "raw IP (DLT_RAW on OpenBSD)",
    101: "raw IP",
    108: "OpenBSD loopback (LOOP), address family in network byte order",
    113: "Linux cooked capture v1 (SLL)",
    228: "raw IPv4",
    229: "raw IPv6",
    276: "Linux cooked capture v2 (SLL2)",
}

# Next step of the per-packet state machine.
cdef enum next_step:
    STEP_DONE = 0
    STEP_ETHERNET
    STEP_ETHERTYPE
    STEP_IPV4
    STEP_IPV6

cdef enum:
    ETHERTYPE_IPV4 = 0x0800
    ETHERTYPE_ARP = 0x0806
    ETHERTYPE_RARP = 0x8035
    ETHERTYPE_VLAN = 0x8100
    ETHERTYPE_QINQ = 0x88A8
    ETHERTYPE_QINQ_OLD = 0x9100
    ETHERTYPE_IPV6 = 0x86DD
    ETHERTYPE_MPLS = 0x8847
    ETHERTYPE_MPLS_MULTICAST = 0x8848
    ETHERTYPE_PPPOE_DISCOVERY = 0x8863
    ETHERTYPE_PPPOE_SESSION = 0x8864
    ETHERTYPE_TEB = 0x6558          # transparent Ethernet bridging (RFC 1701)
    ETHERTYPE_ERSPAN_2 = 0x88BE     # ERSPAN type I and II
    ETHERTYPE_ERSPAN_3 = 0x22EB
    VXLAN_UDP_PORT = 4789           # IANA-assigned, RFC 7348 section 5


cdef struct decode_state:
    const uint8_t* frame
    ww_packet* pkt
    int64_t* counters
    uint32_t cap_end
    uint32_t wire_end
    uint32_t off
    uint16_t ether_type       # EtherType waiting for STEP_ETHERTYPE
    uint8_t layers            # encapsulation layers entered so far
    uint8_t seen_ethernet     # the outermost Ethernet addresses are stored
    uint8_t more_fragments    # the IP packet is a first fragment (MF set)
    uint8_t jumbogram         # the IPv6 length came from a Jumbo Payload option


cdef inline uint16_t read_be16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t read_be32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | p[3])


cdef inline uint32_t read_le32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[1] << 8) | p[0])


cdef inline uint32_t header_bytes(decode_state* s, uint32_t off) noexcept nogil:
    """Bytes a header starting at `off` may read."""
    cdef uint32_t end = s.cap_end
    if end > HEADER_LIMIT:
        end = HEADER_LIMIT
    if off >= end:
        return 0
    return end - off


cdef inline uint32_t wire_bytes(decode_state* s, uint32_t off) noexcept nogil:
    """Bytes the packet had on the wire from `off` to the end of the enclosing datagram."""
    if off >= s.wire_end:
        return 0
    return s.wire_end - off


cdef inline void limit_to_datagram(decode_state* s, uint32_t end) noexcept nogil:
    if s.wire_end > end:
        s.wire_end = end
    if s.cap_end > end:
        s.cap_end = end


cdef inline int record_anomaly(decode_state* s, int anomaly, uint8_t status) noexcept nogil:
    """Count `anomaly`, keep the packet's first one, set its status and stop decoding."""
    s.counters[anomaly] += 1
    if s.pkt.anomaly == 0:
        s.pkt.anomaly = <uint16_t>anomaly
    s.pkt.status = status
    return STEP_DONE


cdef inline bint enter_layer(decode_state* s) noexcept nogil:
    """Count one encapsulation layer; False (and too_many_layers) past the cap."""
    if s.layers >= MAX_ENCAP_LAYERS:
        record_anomaly(s, ANOMALY_TOO_MANY_LAYERS, WW_STATUS_MALFORMED)
        return False
    s.layers += 1
    return True


cdef inline void clear_network_fields(ww_packet* pkt) noexcept nogil:
    # Two runs of the decode section: l3_offset..dst_port and ip_version..
    # frag_flags. VLAN and MPLS counts, tunnel and Ethernet fields survive.
    memset(&pkt.l3_offset, 0, <char*>&pkt.vlan_ids[0] - <char*>&pkt.l3_offset)
    memset(&pkt.ip_version, 0, <char*>&pkt.tunnel_type - <char*>&pkt.ip_version)


cdef inline void set_payload(decode_state* s, uint32_t payload_off,
                             uint32_t payload_wire_len) noexcept nogil:
    cdef ww_packet* pkt = s.pkt
    cdef uint32_t present = 0
    if s.cap_end > payload_off:
        present = s.cap_end - payload_off
    if present > 0xFFFF:
        present = 0xFFFF    # only IPv6 jumbograms are this large; payload_wire_len is exact
    pkt.payload_offset = <uint16_t>payload_off
    pkt.payload_len = <uint16_t>present
    pkt.payload_wire_len = payload_wire_len


cdef inline int enter_tunnel(decode_state* s, uint8_t tunnel_type,
                             uint32_t tunnel_id) noexcept nogil:
    """Move the current IP addresses to the outer fields before an inner packet."""
    cdef ww_packet* pkt = s.pkt
    if not enter_layer(s):
        return 0
    memcpy(pkt.outer_src_addr, pkt.src_addr, 16)
    memcpy(pkt.outer_dst_addr, pkt.dst_addr, 16)
    clear_network_fields(pkt)
    pkt.tunnel_type = tunnel_type
    pkt.tunnel_id = tunnel_id
    s.more_fragments = 0
    s.jumbogram = 0
    return 1


# --- link layer -------------------------------------------------------------

cdef inline bint is_known_non_ip(uint16_t ether_type) noexcept nogil:
    # EtherTypes of link control and industrial protocols that carry no IP,
    # so their frames are NOT_IP rather than unknown_ethertype.
    return (ether_type == 0x88CC      # LLDP
            or ether_type == 0x8809   # slow protocols: LACP, OAM
            or ether_type == 0x888E   # EAPOL (802.1X)
            or ether_type == 0x88F7   # PTP (IEEE 1588)
            or ether_type == 0x88E5   # MACsec
            or ether_type == 0x9000   # configuration test protocol (loopback)
            or ether_type == 0x8808   # Ethernet flow control (PAUSE)
            or ether_type == 0x8902   # connectivity fault management (802.1ag)
            or ether_type == 0x893A   # IEEE 1905.1
            or ether_type == 0x88E1   # HomePlug AV
            or ether_type == 0x8899   # Realtek remote control protocol
            or ether_type == 0x8137   # IPX
            or ether_type == 0x0842   # Wake-on-LAN
            or ether_type == 0x88B8   # IEC 61850 GOOSE
            or ether_type == 0x88BA   # IEC 61850 sampled values
            or ether_type == 0x8892   # PROFINET
            or ether_type == 0x88A4   # EtherCAT
            or ether_type == 0x22F0   # AVTP (audio video bridging)
            or ether_type == 0x22EA   # stream reservation protocol
            or ether_type == 0x88F5   # MVRP
            or ether_type == 0x88E3   # media redundancy protocol
            or ether_type == ETHERTYPE_PPPOE_DISCOVERY)


cdef inline int decode_llc(decode_state* s) noexcept nogil:
    """Follow an 802.2 SNAP header with OUI 0 to its EtherType; any other LLC frame is NOT_IP."""
    cdef uint32_t off = s.off
    cdef const uint8_t* p = s.frame + off
    if (header_bytes(s, off) >= 8 and p[0] == 0xAA and p[1] == 0xAA and p[2] == 0x03
            and p[3] == 0 and p[4] == 0 and p[5] == 0):
        s.ether_type = read_be16(p + 6)
        s.off = off + 8
        if s.ether_type >= 0x0600:
            return STEP_ETHERTYPE
    s.pkt.status = WW_STATUS_NOT_IP
    return STEP_DONE


cdef inline int decode_ethernet(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef const uint8_t* p = s.frame + off
    if header_bytes(s, off) < 14:
        return record_anomaly(s, ANOMALY_TRUNCATED_ETHERNET, WW_STATUS_TRUNCATED)
    if not s.seen_ethernet:
        memcpy(s.pkt.eth_dst, p, 6)
        memcpy(s.pkt.eth_src, p + 6, 6)
        s.seen_ethernet = 1
    s.ether_type = read_be16(p + 12)
    s.off = off + 14
    if s.ether_type < 0x0600:
        # An 802.3 length field, not an EtherType: an LLC frame follows.
        return decode_llc(s)
    return STEP_ETHERTYPE


cdef inline int decode_sll(decode_state* s, bint version2) noexcept nogil:
    cdef const uint8_t* p = s.frame
    cdef uint32_t header_len = 20 if version2 else 16
    cdef uint16_t hardware_type, protocol
    cdef uint32_t address_len
    cdef const uint8_t* address
    if header_bytes(s, 0) < header_len:
        return record_anomaly(s, ANOMALY_TRUNCATED_SLL, WW_STATUS_TRUNCATED)
    if version2:
        protocol = read_be16(p)
        hardware_type = read_be16(p + 8)
        address_len = p[11]
        address = p + 12
    else:
        hardware_type = read_be16(p + 2)
        address_len = read_be16(p + 4)
        address = p + 6
        protocol = read_be16(p + 14)
    # ARPHRD_ETHER with a 6-byte address: the sender's MAC, useful for assets.
    if hardware_type == 1 and address_len == 6:
        memcpy(s.pkt.eth_src, address, 6)
        s.seen_ethernet = 1
    s.off = header_len
    s.ether_type = protocol
    if hardware_type == 824:
        # ARPHRD_NETLINK: the protocol field is a netlink family.
        s.pkt.status = WW_STATUS_NOT_IP
        return STEP_DONE
    if protocol == 0x0004:
        return decode_llc(s)
    if protocol < 0x0600:
        # Linux pseudo-protocols (802.3 raw, AX.25, CAN ...) carry no IP.
        s.pkt.status = WW_STATUS_NOT_IP
        return STEP_DONE
    return STEP_ETHERTYPE


cdef inline int decode_loopback(decode_state* s, bint network_order) noexcept nogil:
    cdef uint32_t family
    if header_bytes(s, 0) < 4:
        return record_anomaly(s, ANOMALY_TRUNCATED_LOOPBACK, WW_STATUS_TRUNCATED)
    if network_order:
        family = read_be32(s.frame)
    else:
        # NULL stores the family in the byte order of the host that captured,
        # which may differ from ours: family values are small, so a value with
        # only high bytes set was written by a host of the other order.
        family = read_le32(s.frame)
        if family > 0xFFFF:
            family = read_be32(s.frame)
        if family > 0xFFFF and read_be16(s.frame + 2) >= 0x0600:
            # Neither order gives a family: some writers put an EtherType in
            # the last two bytes instead (tshark 4 decodes such frames the same way).
            s.ether_type = read_be16(s.frame + 2)
            s.off = 4
            return STEP_ETHERTYPE
    s.off = 4
    if family == 2:
        return STEP_IPV4
    # AF_INET6 is 24 on NetBSD/OpenBSD, 28 on FreeBSD and 30 on macOS.
    if family == 24 or family == 28 or family == 30:
        return STEP_IPV6
    return record_anomaly(s, ANOMALY_UNKNOWN_ADDRESS_FAMILY, WW_STATUS_UNSUPPORTED)


cdef inline int decode_raw_ip(decode_state* s) noexcept nogil:
    cdef uint8_t version
    if header_bytes(s, 0) < 1:
        return record_anomaly(s, ANOMALY_TRUNCATED_RAW_IP, WW_STATUS_TRUNCATED)
    version = s.frame[0] >> 4
    if version == 4:
        return STEP_IPV4
    if version == 6:
        return STEP_IPV6
    return record_anomaly(s, ANOMALY_BAD_IP_VERSION, WW_STATUS_MALFORMED)


# --- EtherType dispatch and L2.5 -------------------------------------------

cdef inline int decode_vlan(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef const uint8_t* p = s.frame + off
    cdef ww_packet* pkt = s.pkt
    if not enter_layer(s):
        return STEP_DONE
    if header_bytes(s, off) < 4:
        return record_anomaly(s, ANOMALY_TRUNCATED_VLAN, WW_STATUS_TRUNCATED)
    if pkt.vlan_depth < WW_MAX_VLAN_DEPTH:
        pkt.vlan_ids[pkt.vlan_depth] = read_be16(p) & 0x0FFF
    # Cannot wrap: the layer cap keeps the depth far below 255.
    pkt.vlan_depth += 1
    s.ether_type = read_be16(p + 2)
    s.off = off + 4
    if s.ether_type < 0x0600:
        return decode_llc(s)
    return STEP_ETHERTYPE


cdef inline int decode_mpls(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef uint32_t entry
    cdef uint8_t nibble
    # Pop labels up to the bottom-of-stack bit (RFC 3032 section 2.1).
    while True:
        if not enter_layer(s):
            return STEP_DONE
        if header_bytes(s, off) < 4:
            return record_anomaly(s, ANOMALY_TRUNCATED_MPLS, WW_STATUS_TRUNCATED)
        entry = read_be32(s.frame + off)
        s.pkt.mpls_depth += 1
        off += 4
        if entry & 0x100:
            break
    s.off = off
    if header_bytes(s, off) < 1:
        return record_anomaly(s, ANOMALY_TRUNCATED_MPLS, WW_STATUS_TRUNCATED)
    # MPLS does not name its payload, so guess from the first nibble (dpkt
    # guesses the same way). A zero nibble is the pseudowire control word
    # (RFC 4385), and an Ethernet frame follows it (RFC 4448).
    nibble = s.frame[off] >> 4
    if nibble == 4:
        return STEP_IPV4
    if nibble == 6:
        return STEP_IPV6
    if nibble == 0:
        if header_bytes(s, off) < 4:
            return record_anomaly(s, ANOMALY_TRUNCATED_MPLS, WW_STATUS_TRUNCATED)
        if not enter_layer(s):
            return STEP_DONE
        s.off = off + 4
        return STEP_ETHERNET
    return record_anomaly(s, ANOMALY_UNKNOWN_MPLS_PAYLOAD, WW_STATUS_UNSUPPORTED)


cdef inline int decode_pppoe_session(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef uint16_t protocol
    if not enter_layer(s):
        return STEP_DONE
    # 6-byte PPPoE header (RFC 2516 section 4) and the 2-byte PPP protocol.
    if header_bytes(s, off) < 8:
        return record_anomaly(s, ANOMALY_TRUNCATED_PPPOE, WW_STATUS_TRUNCATED)
    protocol = read_be16(s.frame + off + 6)
    s.off = off + 8
    if protocol == 0x0021:
        return STEP_IPV4
    if protocol == 0x0057:
        return STEP_IPV6
    # LCP, IPCP, authentication and the rest of PPP control.
    s.pkt.ether_type = ETHERTYPE_PPPOE_SESSION
    s.pkt.status = WW_STATUS_NOT_IP
    return STEP_DONE


cdef inline int decode_arp(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef const uint8_t* p = s.frame + off
    cdef ww_packet* pkt = s.pkt
    cdef uint32_t hardware_len
    if header_bytes(s, off) < 8:
        return record_anomaly(s, ANOMALY_TRUNCATED_ARP, WW_STATUS_TRUNCATED)
    hardware_len = p[4]
    pkt.ether_type = s.ether_type
    pkt.arp_op = read_be16(p + 6)
    pkt.l3_offset = <uint16_t>off
    # Protocol addresses only for IPv4 over any hardware (RFC 826 layout:
    # sender hw, sender proto, target hw, target proto).
    if read_be16(p + 2) == ETHERTYPE_IPV4 and p[5] == 4:
        if header_bytes(s, off) < 8 + 2 * hardware_len + 8:
            return record_anomaly(s, ANOMALY_TRUNCATED_ARP, WW_STATUS_TRUNCATED)
        memcpy(pkt.src_addr, p + 8 + hardware_len, 4)
        memcpy(pkt.dst_addr, p + 8 + 2 * hardware_len + 4, 4)
    pkt.status = WW_STATUS_NOT_IP
    return STEP_DONE


cdef inline int decode_ethertype(decode_state* s) noexcept nogil:
    cdef uint16_t ether_type = s.ether_type
    if ether_type == ETHERTYPE_IPV4:
        return STEP_IPV4
    if ether_type == ETHERTYPE_IPV6:
        return STEP_IPV6
    if (ether_type == ETHERTYPE_VLAN or ether_type == ETHERTYPE_QINQ
            or ether_type == ETHERTYPE_QINQ_OLD):
        return decode_vlan(s)
    if ether_type == ETHERTYPE_MPLS or ether_type == ETHERTYPE_MPLS_MULTICAST:
        return decode_mpls(s)
    if ether_type == ETHERTYPE_ARP or ether_type == ETHERTYPE_RARP:
        return decode_arp(s)
    if ether_type == ETHERTYPE_PPPOE_SESSION:
        return decode_pppoe_session(s)
    s.pkt.ether_type = ether_type
    if is_known_non_ip(ether_type):
        s.pkt.status = WW_STATUS_NOT_IP
        return STEP_DONE
    return record_anomaly(s, ANOMALY_UNKNOWN_ETHERTYPE, WW_STATUS_UNSUPPORTED)


# --- transport and tunnels --------------------------------------------------

cdef inline int decode_tcp(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef const uint8_t* p = s.frame + off
    cdef ww_packet* pkt = s.pkt
    cdef uint32_t wire = wire_bytes(s, off)
    cdef uint32_t header_len, i, option_len
    cdef uint8_t kind
    if wire < 20:
        return record_anomaly(s, ANOMALY_IP_PAYLOAD_TOO_SHORT, WW_STATUS_MALFORMED)
    if header_bytes(s, off) < 20:
        return record_anomaly(s, ANOMALY_TRUNCATED_TCP, WW_STATUS_TRUNCATED)
    header_len = (p[12] >> 4) * 4
    if header_len > wire and s.more_fragments and header_len >= 20:
        # The options continue in the next fragment (RFC 1858 tiny fragment).
        return record_anomaly(s, ANOMALY_IP_PAYLOAD_TOO_SHORT, WW_STATUS_MALFORMED)
    if header_len < 20 or header_len > wire:
        return record_anomaly(s, ANOMALY_BAD_TCP_HEADER_LENGTH, WW_STATUS_MALFORMED)
    if header_bytes(s, off) < header_len:
        return record_anomaly(s, ANOMALY_TRUNCATED_TCP, WW_STATUS_TRUNCATED)

    pkt.l4_offset = <uint16_t>off
    pkt.src_port = read_be16(p)
    pkt.dst_port = read_be16(p + 2)
    pkt.tcp_seq = read_be32(p + 4)
    pkt.tcp_ack = read_be32(p + 8)
    pkt.tcp_flags = p[13]
    pkt.tcp_window = read_be16(p + 14)
    set_payload(s, off + header_len, wire - header_len)

    # Options (RFC 9293 section 3.2; timestamps RFC 7323). A bad length ends
    # the walk: the fixed header and options read so far stay valid.
    i = 20
    while i < header_len:
        kind = p[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= header_len:
            return record_anomaly(s, ANOMALY_BAD_TCP_OPTION_LENGTH, WW_STATUS_MALFORMED)
        option_len = p[i + 1]
        if option_len < 2 or i + option_len > header_len:
            return record_anomaly(s, ANOMALY_BAD_TCP_OPTION_LENGTH, WW_STATUS_MALFORMED)
        if kind == 2:
            if option_len != 4:
                return record_anomaly(s, ANOMALY_BAD_TCP_OPTION_LENGTH, WW_STATUS_MALFORMED)
            pkt.tcp_mss = read_be16(p + i + 2)
            pkt.tcp_opt_flags |= WW_TCPOPT_MSS
        elif kind == 3:
            if option_len != 3:
                return record_anomaly(s, ANOMALY_BAD_TCP_OPTION_LENGTH, WW_STATUS_MALFORMED)
            pkt.tcp_wscale = p[i + 2]
            pkt.tcp_opt_flags |= WW_TCPOPT_WSCALE
        elif kind == 4:
            if option_len != 2:
                return record_anomaly(s, ANOMALY_BAD_TCP_OPTION_LENGTH, WW_STATUS_MALFORMED)
            pkt.tcp_opt_flags |= WW_TCPOPT_SACK_PERMITTED
        elif kind == 5:
            if option_len < 10 or (option_len - 2) % 8 != 0:
                return record_anomaly(s, ANOMALY_BAD_TCP_OPTION_LENGTH, WW_STATUS_MALFORMED)
            pkt.tcp_opt_flags |= WW_TCPOPT_SACK
        elif kind == 8:
            if option_len != 10:
                return record_anomaly(s, ANOMALY_BAD_TCP_OPTION_LENGTH, WW_STATUS_MALFORMED)
            pkt.tcp_tsval = read_be32(p + i + 2)
            pkt.tcp_tsecr = read_be32(p + i + 6)
            pkt.tcp_opt_flags |= WW_TCPOPT_TIMESTAMP
        i += option_len
    return STEP_DONE


cdef inline int decode_vxlan(decode_state* s, uint32_t off, uint32_t payload_wire_len) noexcept nogil:
    """Enter a VXLAN tunnel at `off` (the UDP payload), or leave the packet as plain UDP."""
    cdef const uint8_t* p = s.frame + off
    if payload_wire_len < 8 or s.more_fragments:
        return STEP_DONE
    if header_bytes(s, off) < 8:
        return record_anomaly(s, ANOMALY_TRUNCATED_VXLAN, WW_STATUS_TRUNCATED)
    # Without the I flag (RFC 7348 section 5) the VNI is not valid: treat the
    # datagram as ordinary UDP to port 4789.
    if not (p[0] & 0x08):
        return STEP_DONE
    if not enter_tunnel(s, WW_TUNNEL_VXLAN, read_be32(p + 4) >> 8):
        return STEP_DONE
    s.off = off + 8
    return STEP_ETHERNET


cdef inline int decode_udp(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef const uint8_t* p = s.frame + off
    cdef ww_packet* pkt = s.pkt
    cdef uint32_t wire = wire_bytes(s, off)
    cdef uint32_t udp_len
    if wire < 8:
        return record_anomaly(s, ANOMALY_IP_PAYLOAD_TOO_SHORT, WW_STATUS_MALFORMED)
    if header_bytes(s, off) < 8:
        return record_anomaly(s, ANOMALY_TRUNCATED_UDP, WW_STATUS_TRUNCATED)
    udp_len = read_be16(p + 4)
    if udp_len == 0 and s.jumbogram:
        # RFC 2675 section 4: a UDP jumbogram carries length 0.
        udp_len = wire
    elif udp_len < 8:
        return record_anomaly(s, ANOMALY_BAD_UDP_LENGTH, WW_STATUS_MALFORMED)
    elif udp_len > wire and not s.more_fragments:
        # A first fragment holds only part of the datagram the length covers.
        return record_anomaly(s, ANOMALY_BAD_UDP_LENGTH, WW_STATUS_MALFORMED)

    pkt.l4_offset = <uint16_t>off
    pkt.src_port = read_be16(p)
    pkt.dst_port = read_be16(p + 2)
    limit_to_datagram(s, off + udp_len)
    set_payload(s, off + 8, udp_len - 8)
    if pkt.dst_port == VXLAN_UDP_PORT:
        return decode_vxlan(s, off + 8, udp_len - 8)
    return STEP_DONE


cdef inline int decode_icmp(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef uint32_t wire = wire_bytes(s, off)
    # Type, code and checksum: the part that ICMP (RFC 792) and ICMPv6
    # (RFC 4443) share; the rest depends on the type.
    if wire < 4:
        return record_anomaly(s, ANOMALY_IP_PAYLOAD_TOO_SHORT, WW_STATUS_MALFORMED)
    if header_bytes(s, off) < 4:
        return record_anomaly(s, ANOMALY_TRUNCATED_ICMP, WW_STATUS_TRUNCATED)
    s.pkt.l4_offset = <uint16_t>off
    s.pkt.icmp_type = s.frame[off]
    s.pkt.icmp_code = s.frame[off + 1]
    set_payload(s, off + 4, wire - 4)
    return STEP_DONE


cdef inline int decode_erspan(decode_state* s, uint32_t off, uint32_t key,
                              bint has_sequence, bint type3) noexcept nogil:
    """Skip the ERSPAN header at `off` and enter the mirrored Ethernet frame."""
    cdef const uint8_t* p = s.frame + off
    cdef uint32_t header_len = 0
    cdef uint32_t session_id = key
    if type3:
        header_len = 12
    elif has_sequence:
        # Type I has no ERSPAN header and no GRE sequence number; type II has both.
        header_len = 8
    if header_len:
        if wire_bytes(s, off) < header_len:
            return record_anomaly(s, ANOMALY_IP_PAYLOAD_TOO_SHORT, WW_STATUS_MALFORMED)
        if header_bytes(s, off) < header_len:
            return record_anomaly(s, ANOMALY_TRUNCATED_ERSPAN, WW_STATUS_TRUNCATED)
        if (p[0] >> 4) != (2 if type3 else 1):
            return record_anomaly(s, ANOMALY_BAD_ERSPAN_VERSION, WW_STATUS_MALFORMED)
        if type3 and (p[11] & 0x01):
            # The O flag adds an 8-byte platform-specific subheader.
            header_len += 8
            if header_bytes(s, off) < header_len:
                return record_anomaly(s, ANOMALY_TRUNCATED_ERSPAN, WW_STATUS_TRUNCATED)
        if not key:
            session_id = read_be16(p + 2) & 0x03FF
    if not enter_tunnel(s, WW_TUNNEL_GRE, session_id):
        return STEP_DONE
    s.off = off + header_len
    return STEP_ETHERNET


cdef inline int decode_gre(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef const uint8_t* p = s.frame + off
    cdef uint32_t wire = wire_bytes(s, off)
    cdef uint16_t flags, protocol
    cdef uint32_t header_len = 4
    cdef uint32_t key = 0
    if s.more_fragments:
        return STEP_DONE    # the inner packet needs reassembly first
    if wire < 4:
        return record_anomaly(s, ANOMALY_IP_PAYLOAD_TOO_SHORT, WW_STATUS_MALFORMED)
    if header_bytes(s, off) < 4:
        return record_anomaly(s, ANOMALY_TRUNCATED_GRE, WW_STATUS_TRUNCATED)
    flags = read_be16(p)
    if (flags & 0x0007) == 1:
        # NOTE: PPTP's enhanced GRE (RFC 2637) carries PPP, which is not decoded.
        return record_anomaly(s, ANOMALY_UNSUPPORTED_GRE_VERSION, WW_STATUS_UNSUPPORTED)
    if (flags & 0x0007) != 0:
        return record_anomaly(s, ANOMALY_BAD_GRE_VERSION, WW_STATUS_MALFORMED)
    # RFC 2784 section 2.3: bits 1-12 other than K and S (RFC 2890) must be
    # zero. The routing bit of RFC 1701 would add a variable-length field.
    if flags & 0x4FF8:
        return record_anomaly(s, ANOMALY_BAD_GRE_FLAGS, WW_STATUS_MALFORMED)
    if flags & 0x8000:
        header_len += 4     # checksum and reserved1
    if flags & 0x2000:
        header_len += 4     # key
    if flags & 0x1000:
        header_len += 4     # sequence number
    if wire < header_len:
        return record_anomaly(s, ANOMALY_IP_PAYLOAD_TOO_SHORT, WW_STATUS_MALFORMED)
    if header_bytes(s, off) < header_len:
        return record_anomaly(s, ANOMALY_TRUNCATED_GRE, WW_STATUS_TRUNCATED)
    if flags & 0x2000:
        key = read_be32(p + (8 if flags & 0x8000 else 4))
    protocol = read_be16(p + 2)
    off += header_len

    if protocol == ETHERTYPE_ERSPAN_2:
        return decode_erspan(s, off, key, flags & 0x1000, False)
    if protocol == ETHERTYPE_ERSPAN_3:
        return decode_erspan(s, off, key, flags & 0x1000, True)
    if not enter_tunnel(s, WW_TUNNEL_GRE, key):
        return STEP_DONE
    s.off = off
    if protocol == ETHERTYPE_TEB:
        return STEP_ETHERNET
    s.ether_type = protocol
    return STEP_ETHERTYPE


cdef inline int decode_transport(decode_state* s, uint8_t protocol) noexcept nogil:
    if protocol == 6:
        return decode_tcp(s)
    if protocol == 17:
        return decode_udp(s)
    if protocol == 1 or protocol == 58:
        return decode_icmp(s)
    if protocol == 47:
        return decode_gre(s)
    if protocol == 4 or protocol == 41:
        if s.more_fragments:
            return STEP_DONE
        if not enter_tunnel(s, WW_TUNNEL_IPIP, 0):
            return STEP_DONE
        return STEP_IPV4 if protocol == 4 else STEP_IPV6
    # Other protocols (SCTP, OSPF, ESP, ...) stop at the IP layer.
    return STEP_DONE


# --- IPv4 and IPv6 ----------------------------------------------------------

cdef inline void set_fragment_payload(decode_state* s, uint32_t off) noexcept nogil:
    # A later fragment has no transport header: its payload fields cover the
    # fragment data so that a reassembler can find it.
    set_payload(s, off, wire_bytes(s, off))


cdef inline int decode_ipv4(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef const uint8_t* p = s.frame + off
    cdef ww_packet* pkt = s.pkt
    cdef uint32_t header_len, total_len
    cdef uint16_t fragment_field
    if header_bytes(s, off) < 20:
        return record_anomaly(s, ANOMALY_TRUNCATED_IPV4, WW_STATUS_TRUNCATED)
    if (p[0] >> 4) != 4:
        return record_anomaly(s, ANOMALY_BAD_IP_VERSION, WW_STATUS_MALFORMED)
    header_len = (p[0] & 0x0F) * 4
    if header_len < 20:
        return record_anomaly(s, ANOMALY_BAD_IP_HEADER_LENGTH, WW_STATUS_MALFORMED)
    if header_bytes(s, off) < header_len:
        return record_anomaly(s, ANOMALY_TRUNCATED_IPV4, WW_STATUS_TRUNCATED)
    total_len = read_be16(p + 2)
    # NOTE: TCP segmentation offload on the capturing host can leave total
    # length 0 in outgoing packets; those count as bad_ip_total_length.
    if total_len < header_len or total_len > wire_bytes(s, off):
        return record_anomaly(s, ANOMALY_BAD_IP_TOTAL_LENGTH, WW_STATUS_MALFORMED)

    pkt.ether_type = ETHERTYPE_IPV4
    pkt.l3_offset = <uint16_t>off
    pkt.ip_version = 4
    pkt.ip_total_len = <uint16_t>total_len
    pkt.ttl = p[8]
    pkt.ip_proto = p[9]
    # Address bytes 4-15 stay zero: decode_packet and enter_tunnel clear them.
    memcpy(pkt.src_addr, p + 12, 4)
    memcpy(pkt.dst_addr, p + 16, 4)
    pkt.frag_id = read_be16(p + 4)
    fragment_field = read_be16(p + 6)
    pkt.frag_offset = (fragment_field & 0x1FFF) * 8
    if fragment_field & 0x2000:
        pkt.frag_flags = WW_FRAG_IS_FRAGMENT | WW_FRAG_MORE
    elif pkt.frag_offset:
        pkt.frag_flags = WW_FRAG_IS_FRAGMENT
    else:
        pkt.frag_flags = 0
    s.more_fragments = (fragment_field & 0x2000) != 0
    limit_to_datagram(s, off + total_len)
    s.off = off + header_len
    if pkt.frag_offset:
        set_fragment_payload(s, s.off)
        return STEP_DONE
    return decode_transport(s, pkt.ip_proto)


cdef inline uint32_t find_jumbo_length(const uint8_t* options, uint32_t length) noexcept nogil:
    """Return the Jumbo Payload length (RFC 2675) among hop-by-hop options, or 0."""
    cdef uint32_t i = 0
    cdef uint32_t option_len
    while i < length:
        if options[i] == 0:     # Pad1
            i += 1
            continue
        if i + 2 > length:
            return 0
        option_len = options[i + 1]
        if i + 2 + option_len > length:
            return 0
        if options[i] == 0xC2 and option_len == 4:
            return read_be32(options + i + 2)
        i += 2 + option_len
    return 0


cdef inline int decode_ipv6(decode_state* s) noexcept nogil:
    cdef uint32_t off = s.off
    cdef const uint8_t* p = s.frame + off
    cdef ww_packet* pkt = s.pkt
    cdef uint32_t payload_len, header_len, total_len, extensions
    cdef uint32_t jumbo_len = 0
    cdef uint8_t next_header
    cdef uint16_t fragment_field
    if header_bytes(s, off) < 40:
        return record_anomaly(s, ANOMALY_TRUNCATED_IPV6, WW_STATUS_TRUNCATED)
    if (p[0] >> 4) != 6:
        return record_anomaly(s, ANOMALY_BAD_IP_VERSION, WW_STATUS_MALFORMED)
    payload_len = read_be16(p + 4)
    next_header = p[6]
    if payload_len == 0 and next_header == 0:
        # Payload length 0 before a hop-by-hop header announces a jumbogram
        # whose length is in the Jumbo Payload option.
        if header_bytes(s, off + 40) < 2:
            return record_anomaly(s, ANOMALY_TRUNCATED_IPV6, WW_STATUS_TRUNCATED)
        header_len = (<uint32_t>p[41] + 1) * 8
        if header_bytes(s, off + 40) < header_len:
            return record_anomaly(s, ANOMALY_TRUNCATED_IPV6, WW_STATUS_TRUNCATED)
        jumbo_len = find_jumbo_length(p + 42, header_len - 2)
        if jumbo_len <= 0xFFFF:
            return record_anomaly(s, ANOMALY_BAD_IP_TOTAL_LENGTH, WW_STATUS_MALFORMED)
        payload_len = jumbo_len
    if 40 + payload_len > wire_bytes(s, off):
        return record_anomaly(s, ANOMALY_BAD_IP_TOTAL_LENGTH, WW_STATUS_MALFORMED)

    total_len = 40 + payload_len
    pkt.ether_type = ETHERTYPE_IPV6
    pkt.l3_offset = <uint16_t>off
    pkt.ip_version = 6
    # NOTE: saturates at 65535 for a jumbogram; payload_wire_len is exact.
    pkt.ip_total_len = <uint16_t>(total_len if total_len <= 0xFFFF else 0xFFFF)
    pkt.ttl = p[7]
    memcpy(pkt.src_addr, p + 8, 16)
    memcpy(pkt.dst_addr, p + 24, 16)
    s.jumbogram = jumbo_len != 0
    limit_to_datagram(s, off + total_len)
    off += 40

    # Extension headers (RFC 8200 section 4). ESP (50) and No Next Header (59)
    # end the chain like any upper-layer protocol.
    extensions = 0
    while True:
        if (next_header == 0 or next_header == 43 or next_header == 60 or next_header == 44
                or next_header == 51 or next_header == 135 or next_header == 139
                or next_header == 140):
            extensions += 1
            if extensions > MAX_IPV6_EXTENSIONS:
                return record_anomaly(s, ANOMALY_IPV6_EXTENSION_CHAIN_TOO_LONG,
                                      WW_STATUS_MALFORMED)
            if wire_bytes(s, off) < 8:
                return record_anomaly(s, ANOMALY_BAD_IPV6_EXTENSION_LENGTH,
                                      WW_STATUS_MALFORMED)
            if header_bytes(s, off) < 8:
                return record_anomaly(s, ANOMALY_TRUNCATED_IPV6, WW_STATUS_TRUNCATED)
            p = s.frame + off
            if next_header == 44:
                header_len = 8
            elif next_header == 51:
                header_len = (<uint32_t>p[1] + 2) * 4     # AH counts 4-byte words (RFC 4302)
            else:
                header_len = (<uint32_t>p[1] + 1) * 8
            if header_len > wire_bytes(s, off):
                return record_anomaly(s, ANOMALY_BAD_IPV6_EXTENSION_LENGTH,
                                      WW_STATUS_MALFORMED)
            if header_len > header_bytes(s, off):
                return record_anomaly(s, ANOMALY_TRUNCATED_IPV6, WW_STATUS_TRUNCATED)
            if next_header == 44:
                fragment_field = read_be16(p + 2)
                pkt.frag_id = read_be32(p + 4)
                pkt.frag_offset = fragment_field & 0xFFF8
                pkt.frag_flags = WW_FRAG_IS_FRAGMENT
                if fragment_field & 0x0001:
                    pkt.frag_flags |= WW_FRAG_MORE
                    s.more_fragments = 1
                elif pkt.frag_offset == 0:
                    # An atomic fragment (RFC 6946): offset 0 and no more
                    # fragments, so it is a whole packet.
                    pkt.frag_flags = 0
            next_header = p[0]
            off += header_len
            if pkt.frag_offset:
                pkt.ip_proto = next_header
                set_fragment_payload(s, off)
                return STEP_DONE
            continue
        break

    pkt.ip_proto = next_header
    s.off = off
    return decode_transport(s, next_header)


# --- per packet and per batch -----------------------------------------------

cdef void count_unknown_link_type(int64_t* table, uint16_t link_type) noexcept nogil:
    cdef int row
    for row in range(LINK_TABLE_SLOTS):
        if table[2 * row + 1] == 0:
            table[2 * row] = link_type
            table[2 * row + 1] = 1
            return
        if table[2 * row] == link_type:
            table[2 * row + 1] += 1
            return
    table[2 * LINK_TABLE_SLOTS + 1] += 1


cdef void decode_packet(ww_packet* pkt, const uint8_t* frame, int64_t* counters,
                        int64_t* link_table) noexcept nogil:
    cdef decode_state s
    cdef int step
    cdef uint16_t link_type = pkt.link_type

    memset(&pkt.l3_offset, 0, <char*>&pkt.status - <char*>&pkt.l3_offset + sizeof(pkt.status))
    s.frame = frame
    s.pkt = pkt
    s.counters = counters
    s.cap_end = pkt.caplen
    s.wire_end = pkt.wirelen if pkt.wirelen > pkt.caplen else pkt.caplen
    s.off = 0
    s.ether_type = 0
    s.layers = 0
    s.seen_ethernet = 0
    s.more_fragments = 0
    s.jumbogram = 0

    if link_type == 1:
        step = STEP_ETHERNET
    elif link_type == 113:
        step = decode_sll(&s, False)
    elif link_type == 276:
        step = decode_sll(&s, True)
    elif link_type == 101 or link_type == 12 or link_type == 14:
        step = decode_raw_ip(&s)
    elif link_type == 228:
        step = STEP_IPV4
    elif link_type == 229:
        step = STEP_IPV6
    elif link_type == 0:
        step = decode_loopback(&s, False)
    elif link_type == 108:
        step = decode_loopback(&s, True)
    else:
        count_unknown_link_type(link_table, link_type)
        step = record_anomaly(&s, ANOMALY_UNKNOWN_LINK_TYPE, WW_STATUS_UNSUPPORTED)

    while step != STEP_DONE:
        if step == STEP_ETHERNET:
            step = decode_ethernet(&s)
        elif step == STEP_ETHERTYPE:
            step = decode_ethertype(&s)
        elif step == STEP_IPV4:
            step = decode_ipv4(&s)
        else:
            step = decode_ipv6(&s)


cdef int64_t decode_all(ww_packet* packets, Py_ssize_t count, const uint8_t* data,
                        uint64_t data_len, int64_t* counters,
                        int64_t* link_table) noexcept nogil:
    """Decode packets in order; stop at the first packet outside `data` and return its index.

    Returns -1 when every packet was decoded. The bounds check shares the
    decode loop so the records are read from memory once.
    """
    cdef Py_ssize_t i
    for i in range(count):
        if (packets[i].data_offset > data_len
                or packets[i].caplen > data_len - packets[i].data_offset):
            return i
        decode_packet(&packets[i], data + packets[i].data_offset, counters, link_table)
    return -1


def decode_into(cnp.ndarray packets, const uint8_t[::1] data,
                cnp.ndarray counters, cnp.ndarray link_table):
    """Decode `packets` in place; the caller has checked dtypes, shapes and contiguity.

    Returns the index of the first packet whose bytes lie outside `data`, or
    -1. Packets before that index are decoded, the rest are left as they were.
    """
    cdef ww_packet* packet_ptr = <ww_packet*>cnp.PyArray_DATA(packets)
    cdef Py_ssize_t count = packets.shape[0]
    cdef int64_t* counter_ptr = <int64_t*>cnp.PyArray_DATA(counters)
    cdef int64_t* table_ptr = <int64_t*>cnp.PyArray_DATA(link_table)
    cdef const uint8_t* data_ptr = NULL
    cdef uint64_t data_len = data.shape[0]
    cdef int64_t bad_index
    if data_len:
        data_ptr = &data[0]
    with nogil:
        bad_index = decode_all(packet_ptr, count, data_ptr, data_len, counter_ptr, table_ptr)
    return bad_index
