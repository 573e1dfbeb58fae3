# Live capture from a Linux AF_PACKET socket with a TPACKET_V3 receive ring.
#
# The kernel writes frames into a ring of fixed-size blocks mapped into this
# process and hands each block over by setting TP_STATUS_USER in its block
# header. Ring.read_batch walks the blocks that are ready without the GIL,
# copies every frame into the caller's data buffer and fills the capture
# fields of ww_packet records, then gives the block back by writing
# TP_STATUS_KERNEL. Copying lets a batch outlive its block (the same
# contract as the file reader) and leaves room to put the VLAN tag back.
#
# VLAN tags: the kernel removes the outermost 802.1Q/802.1ad tag before the
# packet socket sees the frame and reports it in tpacket3_hdr.hv1
# (tp_vlan_tci, and tp_vlan_tpid when TP_STATUS_VLAN_TPID_VALID is set).
# The copy re-inserts that 4-byte tag after the two MAC addresses, so the
# frame in the batch is the frame on the wire, caplen and wirelen include
# the tag, and the decoder fills vlan_ids as it does for a file.
#
# Layouts and constants come from <linux/if_packet.h>, so they follow the
# kernel headers the module is built against.

cimport numpy as cnp
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, strerror

from ww_packet cimport WW_DIRECTION_UNSET, ww_packet

import numpy as np

cnp.import_array()

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    int socket(int domain, int type, int protocol)
    int setsockopt(int fd, int level, int name, const void* value, socklen_t length)
    int getsockopt(int fd, int level, int name, void* value, socklen_t* length)
    int bind(int fd, const sockaddr* address, socklen_t length)
    int getsockname(int fd, sockaddr* address, socklen_t* length)
    int AF_PACKET
    int SOCK_RAW
    int SOL_SOCKET
    int SO_ATTACH_FILTER

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<sys/mman.h>" nogil:
    void* mmap(void* address, size_t length, int protection, int flags, int fd, long offset)
    int munmap(void* address, size_t length)
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    void* MAP_FAILED

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long count, int timeout_ms)
    short POLLIN
    short POLLERR

cdef extern from "<net/if.h>" nogil:
    unsigned int if_nametoindex(const char* name)

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t value)

cdef extern from "<linux/filter.h>" nogil:
    struct sock_filter:
        uint16_t code
        uint8_t jt
        uint8_t jf
        uint32_t k
    struct sock_fprog:
        unsigned short len
        sock_filter* filter

cdef extern from "<linux/if_ether.h>" nogil:
    int ETH_P_ALL

cdef extern from "<linux/if_arp.h>" nogil:
    int ARPHRD_ETHER
    int ARPHRD_LOOPBACK
    int ARPHRD_NONE

cdef extern from "<linux/if_packet.h>" nogil:
    struct sockaddr_ll:
        unsigned short sll_family
        uint16_t sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]
    struct packet_mreq:
        int mr_ifindex
        unsigned short mr_type
        unsigned short mr_alen
        unsigned char mr_address[8]
    struct tpacket_req3:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
        unsigned int tp_retire_blk_tov
        unsigned int tp_sizeof_priv
        unsigned int tp_feature_req_word
    struct tpacket_stats_v3:
        unsigned int tp_packets
        unsigned int tp_drops
        unsigned int tp_freeze_q_cnt
    struct tpacket_hdr_variant1:
        uint32_t tp_rxhash
        uint32_t tp_vlan_tci
        uint16_t tp_vlan_tpid
    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint32_t tp_status
        uint16_t tp_mac
        uint16_t tp_net
        tpacket_hdr_variant1 hv1
    struct tpacket_hdr_v1:
        uint32_t block_status
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1
    struct tpacket_block_desc:
        uint32_t version
        uint32_t offset_to_priv
        tpacket_bd_header_u hdr
    int SOL_PACKET
    int PACKET_VERSION
    int PACKET_RX_RING
    int PACKET_FANOUT
    int PACKET_FANOUT_HASH
    int PACKET_STATISTICS
    int PACKET_ADD_MEMBERSHIP
    int PACKET_MR_PROMISC
    int TPACKET_V3
    int TPACKET3_HDRLEN
    uint32_t TP_STATUS_KERNEL
    uint32_t TP_STATUS_USER
    uint32_t TP_STATUS_VLAN_VALID
    uint32_t TP_STATUS_VLAN_TPID_VALID

cdef extern from *:
    """
    /* The block status word is shared with the kernel: read it with acquire
       order so the frames are read after the status, and write it with
       release order so the kernel sees the block only after our last read. */
    static inline unsigned int ww_load_acquire(volatile unsigned int *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void ww_store_release(volatile unsigned int *p, unsigned int v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    """
    unsigned int ww_load_acquire(volatile unsigned int* p) nogil
    void ww_store_release(volatile unsigned int* p, unsigned int v) nogil

# LINKTYPE_* values (tcpdump.org link-layer header types) for the interface
# hardware types a capture can start on, and the other fixed sizes. An enum
# makes them usable without the GIL.
cdef enum:
    LINKTYPE_ETHERNET = 1
    LINKTYPE_RAW = 101
    # The tag put back into a frame: TPID then TCI (IEEE 802.1Q), bytes.
    VLAN_TAG_LENGTH = 4
    MAC_ADDRESSES_LENGTH = 12
    ETHERTYPE_VLAN = 0x8100
    # The largest caplen the decoder's 16-bit offsets can address.
    MAX_SNAPLEN = 65535
    # BPF return value of an accept-all program: the packet's snap length.
    # 262144 is tcpdump's default snaplen, above any frame the ring holds.
    ACCEPT_ALL_SNAPLEN = 262144
    # Classic BPF opcode BPF_RET | BPF_K: return the constant k (0 drops).
    BPF_RET_K = 0x06
    MAX_BPF_INSTRUCTIONS = 4096

LINK_TYPES = {"ethernet": LINKTYPE_ETHERNET, "raw": LINKTYPE_RAW}
SNAPLEN_LIMIT = MAX_SNAPLEN


cdef int _set_filter(int fd, sock_filter* program, unsigned short length) nogil:
    cdef sock_fprog fprog
    fprog.len = length
    fprog.filter = program
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof(fprog))


def _os_error(str action, str interface):
    code = errno
    return OSError(code, f"{action} on {interface} failed: {strerror(code).decode()}")


cdef class Ring:
    """An AF_PACKET socket bound to one interface with a mapped TPACKET_V3 ring.

    The socket starts with a filter that drops every packet, so nothing is
    delivered before join_fanout and set_filter have run; call
    set_filter(None) to accept everything.
    """

    cdef int fd
    cdef uint8_t* ring
    cdef size_t ring_length
    cdef readonly unsigned int block_size
    cdef readonly unsigned int block_count
    cdef readonly unsigned int frame_size
    cdef readonly unsigned int block_timeout_ms
    cdef readonly unsigned int snaplen
    cdef readonly int ifindex
    cdef readonly int link_type
    cdef readonly str interface
    # Read position: the block being read, and within it the next frame.
    cdef unsigned int current_block
    cdef unsigned int frame_index
    cdef uint32_t frame_offset
    cdef uint32_t record_index
    # Totals since open. PACKET_STATISTICS resets the kernel counters on
    # every read, so they are summed here.
    cdef readonly uint64_t kernel_packets
    cdef readonly uint64_t kernel_drops
    cdef readonly uint64_t kernel_freezes
    cdef readonly uint64_t packets_read
    cdef readonly uint64_t bytes_read
    cdef readonly uint64_t blocks_read
    cdef readonly uint64_t vlan_tags_restored
    cdef readonly uint64_t frames_truncated

    def __cinit__(self):
        self.fd = -1
        self.ring = NULL

    def __init__(self, str interface, unsigned int block_size, unsigned int block_count,
                 unsigned int frame_size, unsigned int block_timeout_ms, unsigned int snaplen,
                 bint promiscuous):
        cdef bytes name = interface.encode()
        cdef tpacket_req3 request
        cdef sockaddr_ll address
        cdef socklen_t address_length = sizeof(address)
        cdef packet_mreq membership
        cdef int version = TPACKET_V3
        cdef sock_filter drop_all
        cdef void* mapped

        if snaplen < 64 or snaplen > MAX_SNAPLEN:
            raise ValueError(f"invalid snaplen {snaplen}; expected 64 to {MAX_SNAPLEN} bytes")
        self.interface = interface
        self.block_size = block_size
        self.block_count = block_count
        self.frame_size = frame_size
        self.block_timeout_ms = block_timeout_ms
        self.snaplen = snaplen
        self.ifindex = if_nametoindex(name)
        if self.ifindex == 0:
            raise OSError(errno, f"interface {interface!r} not found; list interfaces with `ip link`")

        # Protocol 0 receives nothing until bind names ETH_P_ALL, after the
        # ring and the drop-all filter are in place.
        self.fd = socket(AF_PACKET, SOCK_RAW, 0)
        if self.fd < 0:
            raise _os_error("opening an AF_PACKET socket (needs CAP_NET_RAW)", interface)
        try:
            drop_all.code = BPF_RET_K
            drop_all.jt = 0
            drop_all.jf = 0
            drop_all.k = 0
            if _set_filter(self.fd, &drop_all, 1) != 0:
                raise _os_error("attaching the drop-all filter", interface)
            if setsockopt(self.fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) != 0:
                raise _os_error("selecting TPACKET_V3", interface)

            memset(&request, 0, sizeof(request))
            request.tp_block_size = block_size
            request.tp_block_nr = block_count
            request.tp_frame_size = frame_size
            request.tp_frame_nr = (block_size // frame_size) * block_count
            request.tp_retire_blk_tov = block_timeout_ms
            if setsockopt(self.fd, SOL_PACKET, PACKET_RX_RING, &request, sizeof(request)) != 0:
                raise _os_error(
                    f"creating a ring of {block_count} blocks of {block_size} bytes "
                    f"(frame size {frame_size})", interface)
            self.ring_length = <size_t>block_size * block_count
            mapped = mmap(NULL, self.ring_length, PROT_READ | PROT_WRITE, MAP_SHARED, self.fd, 0)
            if mapped == MAP_FAILED:
                raise _os_error(f"mapping the {self.ring_length}-byte ring", interface)
            self.ring = <uint8_t*>mapped

            memset(&address, 0, sizeof(address))
            address.sll_family = AF_PACKET
            address.sll_protocol = htons(ETH_P_ALL)
            address.sll_ifindex = self.ifindex
            if bind(self.fd, <sockaddr*>&address, sizeof(address)) != 0:
                raise _os_error("binding the packet socket", interface)
            if getsockname(self.fd, <sockaddr*>&address, &address_length) != 0:
                raise _os_error("reading the interface type", interface)
            if address.sll_hatype == ARPHRD_ETHER or address.sll_hatype == ARPHRD_LOOPBACK:
                self.link_type = LINKTYPE_ETHERNET
            elif address.sll_hatype == ARPHRD_NONE:
                self.link_type = LINKTYPE_RAW
            else:
                raise ValueError(
                    f"interface {interface} has hardware type {address.sll_hatype} (ARPHRD_*); "
                    "live capture supports Ethernet, loopback and raw IP (tun) interfaces")

            if promiscuous:
                memset(&membership, 0, sizeof(membership))
                membership.mr_ifindex = self.ifindex
                membership.mr_type = PACKET_MR_PROMISC
                if setsockopt(self.fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                              &membership, sizeof(membership)) != 0:
                    raise _os_error("enabling promiscuous mode", interface)
        except BaseException:
            self.close()
            raise

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept nogil:
        if self.ring != NULL:
            munmap(self.ring, self.ring_length)
            self.ring = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def close(self):
        """Unmap the ring and close the socket (the kernel leaves promiscuous mode)."""
        self._release()

    @property
    def closed(self):
        return self.fd < 0

    def fileno(self):
        return self.fd

    def _check_open(self):
        if self.fd < 0:
            raise ValueError(f"the capture ring on {self.interface} is closed")

    def join_fanout(self, unsigned int group_id, unsigned int mode=PACKET_FANOUT_HASH):
        """Join fanout group `group_id` (0..65535); the kernel spreads packets over its sockets."""
        self._check_open()
        if group_id > 0xFFFF:
            raise ValueError(f"invalid fanout group id {group_id}; expected 0 to 65535")
        cdef int argument = <int>(group_id | (mode << 16))
        if setsockopt(self.fd, SOL_PACKET, PACKET_FANOUT, &argument, sizeof(argument)) != 0:
            raise _os_error(f"joining fanout group {group_id}", self.interface)

    def set_filter(self, program):
        """Attach a classic BPF program: rows of (code, jt, jf, k); None accepts every packet."""
        self._check_open()
        if program is None:
            program = [(BPF_RET_K, 0, 0, ACCEPT_ALL_SNAPLEN)]
        cdef Py_ssize_t length = len(program)
        if length == 0 or length > MAX_BPF_INSTRUCTIONS:
            raise ValueError(
                f"invalid BPF program length {length}; expected 1 to {MAX_BPF_INSTRUCTIONS} instructions")
        cdef cnp.ndarray[cnp.uint64_t, ndim=2] rows = np.asarray(program, dtype=np.uint64).reshape(length, 4)
        cdef sock_filter[MAX_BPF_INSTRUCTIONS] instructions
        cdef Py_ssize_t i
        for i in range(length):
            instructions[i].code = <uint16_t>rows[i, 0]
            instructions[i].jt = <uint8_t>rows[i, 1]
            instructions[i].jf = <uint8_t>rows[i, 2]
            instructions[i].k = <uint32_t>rows[i, 3]
        if _set_filter(self.fd, instructions, <unsigned short>length) != 0:
            raise _os_error("attaching the BPF filter", self.interface)

    def stop_capture(self):
        """Attach a drop-all filter: the ring keeps what it has and gets nothing more."""
        self._check_open()
        self.set_filter([(BPF_RET_K, 0, 0, 0)])

    def read_statistics(self):
        """Add the kernel's PACKET_STATISTICS since the last call to the totals; return the totals."""
        self._check_open()
        cdef tpacket_stats_v3 counters
        cdef socklen_t length = sizeof(counters)
        memset(&counters, 0, sizeof(counters))
        if getsockopt(self.fd, SOL_PACKET, PACKET_STATISTICS, &counters, &length) != 0:
            raise _os_error("reading PACKET_STATISTICS", self.interface)
        self.kernel_packets += counters.tp_packets
        self.kernel_drops += counters.tp_drops
        self.kernel_freezes += counters.tp_freeze_q_cnt
        return {
            "kernel_packets": self.kernel_packets,
            "kernel_drops": self.kernel_drops,
            "kernel_freezes": self.kernel_freezes,
        }

    def read_batch(self, ww_packet[::1] packets, uint8_t[::1] data, int timeout_ms):
        """Copy ready frames into `packets` and `data`; return (packets filled, data bytes used).

        Waits up to `timeout_ms` for the first block when none is ready,
        and returns as soon as the ready blocks are read or either output
        is full; a block is given back to the kernel once all its frames
        are copied.
        """
        self._check_open()
        cdef Py_ssize_t packet_capacity = packets.shape[0]
        cdef Py_ssize_t data_capacity = data.shape[0]
        if packet_capacity == 0:
            raise ValueError("the packet array is empty; pass at least one record")
        if data_capacity < self.snaplen + VLAN_TAG_LENGTH:
            raise ValueError(
                f"data buffer of {data_capacity} bytes is below snaplen {self.snaplen} + "
                f"{VLAN_TAG_LENGTH}; one frame would not fit")
        cdef ww_packet* out = &packets[0]
        cdef uint8_t* buffer = &data[0]
        cdef Py_ssize_t count = 0
        cdef uint64_t used = 0
        cdef bint waited = False
        cdef tpacket_block_desc* block
        cdef tpacket3_hdr* frame
        cdef uint8_t* source
        cdef uint8_t* target
        cdef uint32_t status, frames_in_block, caplen, wirelen, copied, tpid
        cdef bint has_tag, truncated
        cdef ww_packet* record
        cdef pollfd waiter

        with nogil:
            while count < packet_capacity:
                block = <tpacket_block_desc*>(self.ring + <size_t>self.current_block * self.block_size)
                status = ww_load_acquire(&block.hdr.bh1.block_status)
                if (status & TP_STATUS_USER) == 0:
                    if count > 0 or waited or timeout_ms == 0:
                        break
                    waiter.fd = self.fd
                    waiter.events = POLLIN | POLLERR
                    waiter.revents = 0
                    poll(&waiter, 1, timeout_ms)
                    waited = True
                    continue

                frames_in_block = block.hdr.bh1.num_pkts
                if self.frame_index == 0:
                    self.frame_offset = block.hdr.bh1.offset_to_first_pkt
                while self.frame_index < frames_in_block:
                    frame = <tpacket3_hdr*>(<uint8_t*>block + self.frame_offset)
                    has_tag = (frame.tp_status & TP_STATUS_VLAN_VALID) != 0 and self.link_type == LINKTYPE_ETHERNET
                    caplen = frame.tp_snaplen
                    wirelen = frame.tp_len
                    if has_tag:
                        caplen += VLAN_TAG_LENGTH
                        wirelen += VLAN_TAG_LENGTH
                    truncated = caplen > self.snaplen
                    if truncated:
                        caplen = self.snaplen
                    if count == packet_capacity or used + caplen > <uint64_t>data_capacity:
                        break
                    if truncated:
                        self.frames_truncated += 1

                    source = <uint8_t*>frame + frame.tp_mac
                    target = buffer + used
                    if has_tag and frame.tp_snaplen >= MAC_ADDRESSES_LENGTH:
                        tpid = ETHERTYPE_VLAN
                        if (frame.tp_status & TP_STATUS_VLAN_TPID_VALID) != 0 and frame.hv1.tp_vlan_tpid != 0:
                            tpid = frame.hv1.tp_vlan_tpid
                        memcpy(target, source, MAC_ADDRESSES_LENGTH)
                        target[12] = <uint8_t>(tpid >> 8)
                        target[13] = <uint8_t>(tpid & 0xFF)
                        target[14] = <uint8_t>((frame.hv1.tp_vlan_tci >> 8) & 0xFF)
                        target[15] = <uint8_t>(frame.hv1.tp_vlan_tci & 0xFF)
                        copied = caplen - MAC_ADDRESSES_LENGTH - VLAN_TAG_LENGTH
                        memcpy(target + MAC_ADDRESSES_LENGTH + VLAN_TAG_LENGTH,
                               source + MAC_ADDRESSES_LENGTH, copied)
                        self.vlan_tags_restored += 1
                    else:
                        if has_tag:
                            # Too short to hold the MAC addresses: keep the
                            # frame as delivered.
                            caplen -= VLAN_TAG_LENGTH
                            wirelen -= VLAN_TAG_LENGTH
                        memcpy(target, source, caplen)

                    record = &out[count]
                    memset(record, 0, sizeof(ww_packet))
                    record.ts_ns = <int64_t>frame.tp_sec * 1000000000 + frame.tp_nsec
                    record.data_offset = used
                    record.caplen = caplen
                    record.wirelen = wirelen
                    record.link_type = <uint16_t>self.link_type
                    record.iface_id = 0
                    record.record_index = self.record_index
                    record.direction = WW_DIRECTION_UNSET
                    self.record_index += 1
                    self.packets_read += 1
                    self.bytes_read += caplen
                    used += caplen
                    count += 1
                    self.frame_index += 1
                    self.frame_offset += frame.tp_next_offset

                if self.frame_index < frames_in_block:
                    break
                ww_store_release(&block.hdr.bh1.block_status, TP_STATUS_KERNEL)
                self.blocks_read += 1
                self.frame_index = 0
                self.current_block = (self.current_block + 1) % self.block_count
        return count, used


def tpacket3_header_length():
    """Return TPACKET3_HDRLEN: the per-frame header the kernel puts before each frame in a block."""
    return TPACKET3_HDRLEN


def block_header_length():
    """Return sizeof(struct tpacket_block_desc): the header at the start of every ring block."""
    return sizeof(tpacket_block_desc)
