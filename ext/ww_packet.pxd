# The decoded packet record (cimport it with "from ww_packet cimport ..."): the one struct that crosses from the capture
# reader to the decoder, the flow table, the window features and the
# inspectors. engine.decode.layout derives the NumPy dtype from it, so the
# two cannot drift; tests pin its size and field offsets.
#
# All multi-byte fields are in host byte order (the decoder converts from
# network order). Addresses are 16 bytes: an IPv4 address fills the first
# 4 bytes and the other 12 are zero, so IPv4 and IPv6 share one key layout.
# Offsets are relative to data_offset, the packet's first captured byte in
# the batch's data buffer.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from *:
    """
    /* Decode outcome of one packet (ww_packet.status). */
    enum ww_status {
        WW_STATUS_OK = 0,          /* decoded to the deepest layer we handle */
        WW_STATUS_TRUNCATED = 1,   /* caplen ended inside a header */
        WW_STATUS_MALFORMED = 2,   /* a header field is impossible */
        WW_STATUS_UNSUPPORTED = 3, /* unknown link type or ethertype */
        WW_STATUS_NOT_IP = 4       /* ARP, STP, LLDP ...: no IP layer */
    };
    /* Tunnel that carried the decoded (inner) packet. */
    enum ww_tunnel {
        WW_TUNNEL_NONE = 0,
        WW_TUNNEL_GRE = 1,
        WW_TUNNEL_VXLAN = 2,
        WW_TUNNEL_IPIP = 3         /* IPv4/IPv6 directly in IPv4/IPv6 */
    };
    /* ww_packet.frag_flags bits */
    #define WW_FRAG_IS_FRAGMENT 0x01   /* offset > 0 or more-fragments set */
    #define WW_FRAG_MORE 0x02          /* more-fragments flag */
    /* ww_packet.tcp_opt_flags bits */
    #define WW_TCPOPT_MSS 0x01
    #define WW_TCPOPT_WSCALE 0x02
    #define WW_TCPOPT_SACK_PERMITTED 0x04
    #define WW_TCPOPT_SACK 0x08
    #define WW_TCPOPT_TIMESTAMP 0x10
    /* ww_packet.direction before the flow table has assigned it */
    #define WW_DIRECTION_UNSET 0xFF
    #define WW_MAX_VLAN_DEPTH 3
    """
    cpdef enum ww_status:
        WW_STATUS_OK
        WW_STATUS_TRUNCATED
        WW_STATUS_MALFORMED
        WW_STATUS_UNSUPPORTED
        WW_STATUS_NOT_IP
    cpdef enum ww_tunnel:
        WW_TUNNEL_NONE
        WW_TUNNEL_GRE
        WW_TUNNEL_VXLAN
        WW_TUNNEL_IPIP
    int WW_FRAG_IS_FRAGMENT
    int WW_FRAG_MORE
    int WW_TCPOPT_MSS
    int WW_TCPOPT_WSCALE
    int WW_TCPOPT_SACK_PERMITTED
    int WW_TCPOPT_SACK
    int WW_TCPOPT_TIMESTAMP
    int WW_DIRECTION_UNSET
    int WW_MAX_VLAN_DEPTH


ctypedef struct ww_packet:
    # --- capture: written by the reader (file or AF_PACKET ring) ---
    int64_t ts_ns              # capture time, nanoseconds since the Unix epoch
    uint64_t data_offset       # first captured byte in the batch data buffer
    uint32_t caplen            # bytes captured (never more than the snaplen)
    uint32_t wirelen           # bytes on the wire ("len" in pcap terms)
    uint16_t link_type         # LINKTYPE_* of the interface (1 Ethernet, 113 SLL, ...)
    uint16_t iface_id          # pcapng interface id; 0 for pcap and live capture
    uint32_t record_index      # packet number in its source, from 0

    # --- decode: written by the decoder ---
    uint16_t l3_offset         # to the innermost IP header (or ARP); 0 if none
    uint16_t l4_offset         # to the TCP/UDP/ICMP header; 0 if none
    uint16_t payload_offset    # to the L4 payload; 0 if none
    uint16_t payload_len       # L4 payload bytes present in the capture
    uint32_t payload_wire_len  # L4 payload bytes the IP length claims (may exceed payload_len)
    uint16_t ip_total_len      # IPv4 total length or 40 + IPv6 payload length, bytes
    uint16_t ether_type        # innermost EtherType (0x0800, 0x86DD, 0x0806, ...)
    uint8_t src_addr[16]       # innermost IP source
    uint8_t dst_addr[16]       # innermost IP destination
    uint16_t src_port          # TCP/UDP source port; 0 for other protocols
    uint16_t dst_port          # TCP/UDP destination port; 0 for other protocols
    uint16_t vlan_ids[3]       # 802.1Q/802.1ad VLAN ids, outermost first; 0 past vlan_depth
    uint8_t vlan_depth         # VLAN tags seen (may exceed 3; only the first 3 are kept)
    uint8_t mpls_depth         # MPLS labels popped
    uint8_t ip_version         # 4, 6, or 0 without an IP layer
    uint8_t ip_proto           # upper-layer protocol after IPv6 extension headers
    uint8_t ttl                # IPv4 TTL or IPv6 hop limit
    uint8_t tcp_flags          # FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80
    uint16_t tcp_window        # raw window field (not scaled)
    uint32_t tcp_seq
    uint32_t tcp_ack
    uint32_t tcp_tsval         # TCP timestamp option value (RFC 7323), if present
    uint32_t tcp_tsecr
    uint16_t tcp_mss           # MSS option value, if present
    uint8_t tcp_wscale         # window-scale shift, if present
    uint8_t tcp_opt_flags      # WW_TCPOPT_* bits: which options were present
    uint8_t icmp_type          # ICMP or ICMPv6 type
    uint8_t icmp_code
    uint16_t arp_op            # ARP opcode (1 request, 2 reply); 0 otherwise
    uint32_t frag_id           # IPv4 identification or IPv6 fragment identification
    uint16_t frag_offset       # fragment offset in bytes
    uint8_t frag_flags         # WW_FRAG_* bits
    uint8_t tunnel_type        # ww_tunnel: tunnel the inner packet came out of
    uint32_t tunnel_id         # VXLAN VNI or GRE key; 0 without one
    uint8_t outer_src_addr[16] # outer IP source of a tunnelled packet
    uint8_t outer_dst_addr[16]
    uint8_t eth_src[6]         # outermost Ethernet source MAC; zero without Ethernet
    uint8_t eth_dst[6]
    uint16_t anomaly           # first decoder anomaly id of this packet; 0 = none
    uint8_t status             # ww_status

    # --- flows: written by the flow table ---
    uint8_t direction          # 0 initiator to responder, 1 reverse, WW_DIRECTION_UNSET before
    uint32_t flow_slot         # flow table slot of the packet's flow; valid while that flow lives
    uint64_t flow_id           # flow id (unique within a run); 0 if the packet has no flow
