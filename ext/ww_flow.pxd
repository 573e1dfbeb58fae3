# The flow record (cimport it with "from ww_flow cimport ww_flow"): one row
# per bidirectional flow, exported by the flow table in ext/flowtable.pyx
# when a flow ends and returned by active snapshots. engine.flows.layout
# derives FLOW_DTYPE from this struct, so the two cannot drift; the flow
# tests pin its size and some offsets.
#
# "src" is the initiator: the sender of the flow's first packet, except that
# a TCP reply seen first (a SYN-ACK, or an RST-ACK from the lower port)
# makes its receiver the initiator and starts the history with "^". "dst"
# is the responder. Multi-byte fields are in host byte order. Addresses are 16
# bytes with IPv4 in the first 4 and the other 12 zero, as in ww_packet.
# Byte counts are wire lengths (pcap "len"), so they include the link-layer
# header and any tunnel around the packet.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from *:
    """
    /* Why a flow record was exported (ww_flow.expiration_id). */
    enum ww_expiration {
        WW_EXPIRATION_IDLE = 0,        /* no packet for idle_timeout_s of capture time */
        WW_EXPIRATION_ACTIVE = 1,      /* lived active_timeout_s; later packets start a new flow */
        WW_EXPIRATION_END_OF_FLOW = 2, /* TCP RST, or FIN from both sides then an ACK; exported after the close delay */
        WW_EXPIRATION_EVICTED = 3,     /* the table was full and this flow was least recently seen */
        WW_EXPIRATION_FLUSHED = 4,     /* still live at the end of input */
        WW_EXPIRATION_LIVE = 5         /* not ended: a copy from active_snapshot() */
    };
    /* Zeek-style connection state (ww_flow.conn_state); docs/flows.md defines each. */
    enum ww_conn_state {
        WW_CONN_S0 = 0, WW_CONN_S1 = 1, WW_CONN_SF = 2, WW_CONN_REJ = 3,
        WW_CONN_S2 = 4, WW_CONN_S3 = 5, WW_CONN_RSTO = 6, WW_CONN_RSTR = 7,
        WW_CONN_RSTOS0 = 8, WW_CONN_RSTRH = 9, WW_CONN_SH = 10, WW_CONN_SHR = 11,
        WW_CONN_OTH = 12
    };
    #define WW_HISTORY_LEN 16       /* history letters kept, NUL-padded */
    #define WW_COMMUNITY_ID_LEN 32  /* "1:" + 28 base64 characters + NUL + pad */
    """
    cpdef enum ww_expiration:
        WW_EXPIRATION_IDLE
        WW_EXPIRATION_ACTIVE
        WW_EXPIRATION_END_OF_FLOW
        WW_EXPIRATION_EVICTED
        WW_EXPIRATION_FLUSHED
        WW_EXPIRATION_LIVE
    cpdef enum ww_conn_state:
        WW_CONN_S0
        WW_CONN_S1
        WW_CONN_SF
        WW_CONN_REJ
        WW_CONN_S2
        WW_CONN_S3
        WW_CONN_RSTO
        WW_CONN_RSTR
        WW_CONN_RSTOS0
        WW_CONN_RSTRH
        WW_CONN_SH
        WW_CONN_SHR
        WW_CONN_OTH
    int WW_HISTORY_LEN
    int WW_COMMUNITY_ID_LEN


# Per-direction statistics. Packet sizes are wire lengths in bytes;
# inter-arrival times (piat) are in milliseconds between consecutive packets
# of that direction. Means and standard deviations use Welford's update; the
# standard deviation is the sample one (divides by n - 1) and is 0 below two
# values. Without packets (or intervals) min, mean, max and stddev are 0.
ctypedef struct ww_flow_direction:
    int64_t first_seen_ns      # capture time of the first packet (smallest timestamp)
    int64_t last_seen_ns       # capture time of the last packet (largest timestamp)
    double duration_ms         # last_seen_ns - first_seen_ns, in milliseconds
    uint64_t packets
    uint64_t bytes             # sum of wire lengths
    uint64_t payload_bytes     # sum of L4 payload lengths the IP headers claim
    uint32_t min_ps            # packet size, bytes
    uint32_t max_ps
    double mean_ps
    double stddev_ps
    double min_piat_ms         # inter-arrival time; 0 when a timestamp went backwards
    double mean_piat_ms
    double stddev_piat_ms
    double max_piat_ms
    uint32_t syn_packets       # packets with the flag set (TCP only)
    uint32_t cwr_packets
    uint32_t ece_packets
    uint32_t urg_packets
    uint32_t ack_packets
    uint32_t psh_packets
    uint32_t rst_packets
    uint32_t fin_packets


ctypedef struct ww_flow:
    uint64_t flow_id           # unique within one FlowTable, from 1; the packets' flow_id
    uint8_t src_addr[16]       # initiator address
    uint8_t dst_addr[16]       # responder address
    uint16_t src_port          # initiator port; ICMP/ICMPv6: the type of the initiator's first message
    uint16_t dst_port          # responder port; ICMP: the reply type, or the code of a one-way type
    uint16_t vlan_ids[3]       # VLAN ids of the flow key, outermost first; 0 past vlan_depth
    uint8_t vlan_depth         # VLAN tags in the key (at most 3)
    uint8_t ip_version         # 4 or 6
    uint8_t ip_proto           # IANA protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...)
    uint8_t tunnel_type        # ww_tunnel of ww_packet.pxd; part of the key
    uint8_t expiration_id      # ww_expiration
    uint8_t conn_state         # ww_conn_state
    uint32_t tunnel_id         # VXLAN VNI or GRE key; part of the key
    uint8_t src_mac[6]         # Ethernet address of the initiator side, from the first packet
    uint8_t dst_mac[6]
    uint32_t fragments         # non-first IP fragments attributed to this flow
    char history[16]           # Zeek-style history letters, NUL-padded (docs/flows.md)
    char community_id[32]      # Community ID v1, "1:" + base64, NUL-terminated
    ww_flow_direction bidirectional
    ww_flow_direction src2dst  # initiator to responder
    ww_flow_direction dst2src  # responder to initiator
