# Record parsers for classic pcap and pcapng capture files.
#
# A RecordParser walks the records of one contiguous byte buffer (a mapped
# file or a chunk of a stream) and writes the capture fields of ww_packet
# records in place, without the GIL and without a Python object per packet.
# engine.capture.files owns the buffers, the file header of classic pcap and
# the error messages; this module only parses and counts.
#
# Formats: the classic libpcap format (microsecond magic 0xA1B2C3D4 and
# nanosecond magic 0xA1B23C4D, either byte order) and pcapng as specified in
# draft-ietf-opsawg-pcapng (Section Header, Interface Description, Enhanced,
# Simple and the obsolete Packet Block; every other block is skipped).

cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

from ww_packet cimport WW_DIRECTION_UNSET, ww_packet

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>

    static inline uint16_t ww_bswap16(uint16_t v) { return __builtin_bswap16(v); }
    static inline uint32_t ww_bswap32(uint32_t v) { return __builtin_bswap32(v); }
    static inline uint64_t ww_bswap64(uint64_t v) { return __builtin_bswap64(v); }

    /* ts * 1e9 / 2^shift for a binary if_tsresol. The 128-bit product cannot
       overflow for any 64-bit ts; returns 0 if the result exceeds INT64_MAX. */
    static inline int ww_scale_binary(uint64_t ts, unsigned shift, int64_t *out) {
        unsigned __int128 ns = ((unsigned __int128)ts * 1000000000u) >> shift;
        if (ns > (unsigned __int128)INT64_MAX) return 0;
        *out = (int64_t)ns;
        return 1;
    }

    /* a * b + c in int64; returns 0 on overflow. */
    static inline int ww_mul_add(int64_t a, int64_t b, int64_t c, int64_t *out) {
        int64_t product;
        if (__builtin_mul_overflow(a, b, &product)) return 0;
        return !__builtin_add_overflow(product, c, out);
    }
    """
    uint16_t ww_bswap16(uint16_t v) nogil
    uint32_t ww_bswap32(uint32_t v) nogil
    uint64_t ww_bswap64(uint64_t v) nogil
    int ww_scale_binary(uint64_t ts, unsigned shift, int64_t *out) nogil
    int ww_mul_add(int64_t a, int64_t b, int64_t c, int64_t *out) nogil
    int64_t INT64_MAX

# Anomaly counters, in the order of ANOMALY_NAMES.
cdef enum:
    A_CAPLEN_EXCEEDS_SNAPLEN = 0
    A_CAPLEN_EXCEEDS_WIRELEN = 1
    A_INVALID_TIMESTAMP = 2
    A_TRUNCATED_FILE = 3
    A_UNKNOWN_BLOCK = 4
    A_BAD_BLOCK_LENGTH = 5
    A_UNKNOWN_INTERFACE = 6
    A_INVALID_OPTION = 7
    N_ANOMALIES = 8

ANOMALY_NAMES = (
    "caplen_exceeds_snaplen",
    "caplen_exceeds_wirelen",
    "invalid_timestamp",
    "truncated_file",
    "unknown_block",
    "bad_block_length",
    "unknown_interface",
    "invalid_option",
)

# Outcome of one parse() call.
cdef enum:
    S_BATCH_FULL = 0  # the packet array is full; call again with a new one
    S_NEED_DATA = 1   # the buffer ends inside a record and more data may follow
    S_END = 2         # the data ended on a record boundary
    S_TRUNCATED = 3   # the data ended inside a record; counted as truncated_file
    S_ERROR = 4       # an impossible length; error_* describe it

STATUS_BATCH_FULL = S_BATCH_FULL
STATUS_NEED_DATA = S_NEED_DATA
STATUS_END = S_END
STATUS_TRUNCATED = S_TRUNCATED
STATUS_ERROR = S_ERROR

# Reasons for S_ERROR. Each stops the file because the next record's
# position cannot be trusted.
cdef enum:
    E_NONE = 0
    E_CAPLEN_LIMIT = 1        # pcap record caplen above caplen_limit
    E_BLOCK_LENGTH = 2        # pcapng block length not a multiple of 4 or below its type's minimum
    E_BLOCK_TOO_LONG = 3      # pcapng block length above MAX_BLOCK_LENGTH
    E_BYTE_ORDER_MAGIC = 4    # Section Header Block without 0x1A2B3C4D
    E_PCAPNG_VERSION = 5      # Section Header Block major version other than 1
    E_TOO_MANY_INTERFACES = 6  # more than MAX_INTERFACES Interface Description Blocks

ERROR_CAPLEN_LIMIT = E_CAPLEN_LIMIT
ERROR_BLOCK_LENGTH = E_BLOCK_LENGTH
ERROR_BLOCK_TOO_LONG = E_BLOCK_TOO_LONG
ERROR_BYTE_ORDER_MAGIC = E_BYTE_ORDER_MAGIC
ERROR_PCAPNG_VERSION = E_PCAPNG_VERSION
ERROR_TOO_MANY_INTERFACES = E_TOO_MANY_INTERFACES

cdef enum:
    KIND_PCAP = 0
    KIND_PCAPNG = 1

# Order of the caplen and wirelen fields in classic pcap records. Files of
# format version 2.0 to 2.2 store wirelen first; version 2.3 files may use
# either order, and libpcap swaps them back when caplen exceeds wirelen.
cdef enum:
    L_NOT_SWAPPED = 0
    L_SWAPPED = 1
    L_MAYBE_SWAPPED = 2

LENGTHS_NOT_SWAPPED = L_NOT_SWAPPED
LENGTHS_SWAPPED = L_SWAPPED
LENGTHS_MAYBE_SWAPPED = L_MAYBE_SWAPPED

# pcapng block types
cdef enum:
    BT_SECTION_HEADER = 0x0A0D0D0A
    BT_INTERFACE_DESCRIPTION = 0x00000001
    BT_PACKET_OBSOLETE = 0x00000002
    BT_SIMPLE_PACKET = 0x00000003
    BT_NAME_RESOLUTION = 0x00000004
    BT_INTERFACE_STATISTICS = 0x00000005
    BT_ENHANCED_PACKET = 0x00000006
    BT_SYSTEMD_JOURNAL = 0x00000009
    BT_DECRYPTION_SECRETS = 0x0000000A
    BT_CUSTOM_COPYABLE = 0x00000BAD
    BT_CUSTOM_NOT_COPYABLE = 0x40000BAD

# pcapng option codes of the Interface Description Block
cdef enum:
    OPT_END = 0
    OPT_IF_NAME = 2
    OPT_IF_TSRESOL = 9
    OPT_IF_TSOFFSET = 14

# Bounds on what a file may claim. A pcapng block longer than
# C_MAX_BLOCK_LENGTH is treated as corrupt rather than buffered; it is far
# above the largest snaplen tools write (262144), so real packets never
# reach it. Classic pcap records get a caplen limit of C_MIN_CAPLEN_LIMIT,
# raised to the snaplen of the file header when that is larger, up to
# C_MAX_BLOCK_LENGTH. C_MAX_INTERFACES bounds the Interface Description
# Blocks of one file over all sections: each costs one iface_t, and
# iface_id is a uint16, so the bound also keeps ids in range.
cdef enum:
    C_MAX_BLOCK_LENGTH = 16 * 1024 * 1024
    C_MIN_CAPLEN_LIMIT = 262144
    C_MAX_INTERFACES = 4096
    C_DEFAULT_TSRESOL = 6  # if_tsresol when the option is absent: microseconds
    NAME_SIZE = 64

MAX_BLOCK_LENGTH = C_MAX_BLOCK_LENGTH
MIN_CAPLEN_LIMIT = C_MIN_CAPLEN_LIMIT
MAX_INTERFACES = C_MAX_INTERFACES

cdef int64_t NS_PER_S = 1000000000

cdef uint64_t POW10[20]
POW10[0] = 1
for _i in range(1, 20):
    POW10[_i] = POW10[_i - 1] * 10


ctypedef struct iface_t:
    uint32_t snaplen      # 0 means no limit (pcapng) or an unset header field (pcap)
    uint16_t link_type    # LINKTYPE_* value, recorded as the file states it
    uint8_t tsresol       # raw if_tsresol: bit 7 set = 2^-n s, clear = 10^-n s
    int64_t tsoffset_s    # if_tsoffset: seconds added to every timestamp
    uint32_t section      # index of the pcapng section, from 0
    uint32_t local_id     # interface id inside its section
    char name[NAME_SIZE]  # if_name, NUL-terminated, cut to NAME_SIZE - 1 bytes


cdef inline uint16_t rd16(const uint8_t* p, bint swap) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return ww_bswap16(v) if swap else v


cdef inline uint32_t rd32(const uint8_t* p, bint swap) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return ww_bswap32(v) if swap else v


cdef inline uint64_t rd64(const uint8_t* p, bint swap) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return ww_bswap64(v) if swap else v


cdef inline bint tsresol_is_valid(uint8_t tsresol) noexcept nogil:
    # Decimal exponents above 19 overflow uint64 powers of ten; binary
    # exponents above 63 leave nothing of a 64-bit timestamp.
    if tsresol & 0x80:
        return (tsresol & 0x7F) <= 63
    return tsresol <= 19


cdef inline bint units_to_ns(uint64_t ts, uint8_t tsresol, int64_t tsoffset_s,
                             int64_t* out) noexcept nogil:
    """Convert a pcapng timestamp to ns since the epoch; False on overflow."""
    cdef uint8_t exponent = tsresol & 0x7F
    cdef int64_t ns
    cdef uint64_t factor
    if tsresol & 0x80:
        if not ww_scale_binary(ts, exponent, &ns):
            return False
    elif exponent <= 9:
        factor = POW10[9 - exponent]
        if ts > <uint64_t>INT64_MAX / factor:
            return False
        ns = <int64_t>(ts * factor)
    else:
        ns = <int64_t>(ts / POW10[exponent - 9])
    if tsoffset_s != 0:
        return ww_mul_add(tsoffset_s, NS_PER_S, ns, out) != 0
    out[0] = ns
    return True


cdef class RecordParser:
    """Parser state for one capture file: byte order, interfaces, counters.

    Build it with pcap() or pcapng(), then call parse() on consecutive
    buffers. Counters only grow; the caller reads them at any time.
    """

    cdef int kind
    cdef bint swap                  # file byte order differs from the host's
    cdef uint32_t frac_scale_ns     # classic pcap: ns per unit of the fraction field
    cdef uint32_t frac_limit        # classic pcap: fraction values at or above are invalid
    cdef uint32_t caplen_limit      # classic pcap: larger caplen stops the file
    cdef int lengths_swapped        # classic pcap: LENGTHS_* order of caplen and wirelen

    # Interfaces of all sections in file order, so iface_id is global.
    # Bound: MAX_INTERFACES entries; one more stops the file with
    # E_TOO_MANY_INTERFACES. Nothing is evicted.
    cdef iface_t* ifaces
    cdef Py_ssize_t n_ifaces
    cdef Py_ssize_t cap_ifaces
    cdef Py_ssize_t section_first_iface
    cdef uint32_t section_iface_count
    cdef int64_t section_index

    cdef uint64_t counters[N_ANOMALIES]
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes_captured
    cdef readonly uint64_t records_skipped
    cdef uint32_t next_record_index

    cdef readonly int error_code
    cdef readonly Py_ssize_t error_pos       # offset of the bad record in the last buffer
    cdef readonly uint64_t error_value
    cdef readonly uint64_t error_limit
    cdef readonly uint32_t error_block_type

    def __cinit__(self):
        self.ifaces = NULL
        self.n_ifaces = 0
        self.cap_ifaces = 0
        self.section_index = -1
        memset(self.counters, 0, sizeof(self.counters))

    def __dealloc__(self):
        free(self.ifaces)

    @staticmethod
    def pcap(bint swap, bint nanosecond, uint32_t snaplen, uint16_t link_type,
             int lengths_swapped=L_NOT_SWAPPED):
        """Return a parser for classic pcap records after the 24-byte file header."""
        cdef RecordParser parser = RecordParser()
        parser.kind = KIND_PCAP
        parser.swap = swap
        parser.lengths_swapped = lengths_swapped
        parser.frac_scale_ns = 1 if nanosecond else 1000
        parser.frac_limit = 1000000000 if nanosecond else 1000000
        parser.caplen_limit = max(MIN_CAPLEN_LIMIT, min(snaplen, MAX_BLOCK_LENGTH))
        parser.section_index = 0
        if parser._add_interface(link_type, snaplen) < 0:
            raise MemoryError()
        parser.ifaces[0].tsresol = 9 if nanosecond else 6
        parser.section_iface_count = 1
        return parser

    @staticmethod
    def pcapng():
        """Return a parser for pcapng blocks, starting at a Section Header Block."""
        cdef RecordParser parser = RecordParser()
        parser.kind = KIND_PCAPNG
        return parser

    def anomaly_counts(self):
        """Return the anomaly counters as a dict keyed by ANOMALY_NAMES."""
        return {name: self.counters[i] for i, name in enumerate(ANOMALY_NAMES)}

    def interface_list(self):
        """Return one dict per interface seen so far, in iface_id order."""
        result = []
        cdef Py_ssize_t i
        cdef iface_t* iface
        for i in range(self.n_ifaces):
            iface = &self.ifaces[i]
            if iface.tsresol & 0x80:
                resolution_ns = 1e9 / (1 << (iface.tsresol & 0x7F))
            else:
                resolution_ns = 10.0 ** (9 - iface.tsresol)
            result.append({
                "iface_id": i,
                "section": iface.section,
                "interface_id": iface.local_id,
                "link_type": iface.link_type,
                "snaplen": iface.snaplen,
                "if_tsresol": iface.tsresol,
                "ts_resolution_ns": resolution_ns,
                "ts_offset_s": iface.tsoffset_s,
                "name": iface.name.decode("utf-8", "replace"),
            })
        return result

    def parse(self, const uint8_t[::1] data, Py_ssize_t pos, bint at_eof,
              cnp.ndarray packets, Py_ssize_t count):
        """Parse records of data[pos:] into packets[count:].

        Return (pos, count, status): the offset of the first unparsed byte,
        the number of filled packet records and a STATUS_* value. `at_eof`
        says that no byte follows `data`, so a partial record is a
        truncation rather than a reason to ask for more data.
        """
        if packets.ndim != 1 or packets.descr.itemsize != sizeof(ww_packet):
            raise ValueError(
                f"packets must be a 1-D array of {sizeof(ww_packet)}-byte records, "
                f"got ndim={packets.ndim} itemsize={packets.descr.itemsize}"
            )
        if not cnp.PyArray_IS_C_CONTIGUOUS(packets) or not packets.flags.writeable:
            raise ValueError("packets must be C-contiguous and writeable")
        cdef Py_ssize_t end = data.shape[0]
        if pos < 0 or pos > end:
            raise ValueError(f"pos {pos} is outside the buffer of {end} bytes")
        cdef Py_ssize_t capacity = packets.shape[0]
        if count < 0 or count > capacity:
            raise ValueError(f"count {count} is outside the packet array of {capacity}")
        cdef const uint8_t* buf = &data[0] if end > 0 else NULL
        cdef ww_packet* out = <ww_packet*> cnp.PyArray_DATA(packets)
        cdef int status
        self.error_code = E_NONE
        with nogil:
            if self.kind == KIND_PCAP:
                status = self._parse_pcap(buf, end, &pos, at_eof, out, capacity, &count)
            else:
                status = self._parse_pcapng(buf, end, &pos, at_eof, out, capacity, &count)
        if status == S_ERROR and self.error_code == E_NONE:
            raise MemoryError("cannot grow the interface table")
        return pos, count, status

    cdef Py_ssize_t _add_interface(self, uint16_t link_type, uint32_t snaplen) noexcept nogil:
        """Append an interface of the current section; return its index or -1 on allocation failure."""
        cdef Py_ssize_t new_cap
        cdef iface_t* grown
        if self.n_ifaces == self.cap_ifaces:
            new_cap = 8 if self.cap_ifaces == 0 else self.cap_ifaces * 2
            grown = <iface_t*> realloc(self.ifaces, new_cap * sizeof(iface_t))
            if grown == NULL:
                return -1
            self.ifaces = grown
            self.cap_ifaces = new_cap
        cdef iface_t* iface = &self.ifaces[self.n_ifaces]
        memset(iface, 0, sizeof(iface_t))
        iface.link_type = link_type
        iface.snaplen = snaplen
        iface.tsresol = C_DEFAULT_TSRESOL
        iface.section = <uint32_t>self.section_index
        iface.local_id = self.section_iface_count
        self.n_ifaces += 1
        return self.n_ifaces - 1

    cdef inline int _end_of_data(self, Py_ssize_t avail, bint at_eof) noexcept nogil:
        if not at_eof:
            return S_NEED_DATA
        if avail == 0:
            return S_END
        self.counters[A_TRUNCATED_FILE] += 1
        return S_TRUNCATED

    cdef inline int _fail(self, int code, Py_ssize_t pos, uint64_t value, uint64_t limit,
                          uint32_t block_type) noexcept nogil:
        self.error_code = code
        self.error_pos = pos
        self.error_value = value
        self.error_limit = limit
        self.error_block_type = block_type
        return S_ERROR

    cdef inline void _emit(self, ww_packet* pkt, int64_t ts_ns, Py_ssize_t data_offset,
                           uint32_t caplen, uint32_t wirelen, Py_ssize_t iface_index) noexcept nogil:
        cdef iface_t* iface = &self.ifaces[iface_index]
        if iface.snaplen != 0 and caplen > iface.snaplen:
            self.counters[A_CAPLEN_EXCEEDS_SNAPLEN] += 1
        if caplen > wirelen:
            self.counters[A_CAPLEN_EXCEEDS_WIRELEN] += 1
        memset(pkt, 0, sizeof(ww_packet))
        pkt.ts_ns = ts_ns
        pkt.data_offset = <uint64_t>data_offset
        pkt.caplen = caplen
        pkt.wirelen = wirelen
        pkt.link_type = iface.link_type
        pkt.iface_id = <uint16_t>iface_index
        pkt.record_index = self.next_record_index
        pkt.direction = WW_DIRECTION_UNSET
        self.next_record_index += 1
        self.packets += 1
        self.bytes_captured += caplen

    cdef int _parse_pcap(self, const uint8_t* buf, Py_ssize_t end, Py_ssize_t* pos_io,
                         bint at_eof, ww_packet* out, Py_ssize_t capacity,
                         Py_ssize_t* count_io) noexcept nogil:
        # Record header: ts_sec, ts_frac (us or ns), caplen, wirelen; 4 bytes each.
        cdef Py_ssize_t pos = pos_io[0]
        cdef Py_ssize_t count = count_io[0]
        cdef int status = S_BATCH_FULL
        cdef const uint8_t* p
        cdef uint32_t sec, frac, caplen, wirelen
        cdef Py_ssize_t avail
        cdef bint swap = self.swap
        while count < capacity:
            avail = end - pos
            if avail < 16:
                status = self._end_of_data(avail, at_eof)
                break
            p = buf + pos
            sec = rd32(p, swap)
            frac = rd32(p + 4, swap)
            caplen = rd32(p + 8, swap)
            wirelen = rd32(p + 12, swap)
            if self.lengths_swapped == L_SWAPPED or (
                    self.lengths_swapped == L_MAYBE_SWAPPED and caplen > wirelen):
                caplen, wirelen = wirelen, caplen
            if caplen > self.caplen_limit:
                status = self._fail(E_CAPLEN_LIMIT, pos, caplen, self.caplen_limit, 0)
                break
            if avail - 16 < <Py_ssize_t>caplen:
                status = self._end_of_data(avail, at_eof)
                break
            if frac >= self.frac_limit:
                self.counters[A_INVALID_TIMESTAMP] += 1
            # Kept as the file states it (sec + frac), like tshark does, so
            # an invalid fraction carries into the seconds. uint32 seconds
            # times 1e9 stays below INT64_MAX.
            self._emit(&out[count],
                       <int64_t>sec * NS_PER_S + <int64_t>frac * self.frac_scale_ns,
                       pos + 16, caplen, wirelen, 0)
            count += 1
            pos += 16 + caplen
        pos_io[0] = pos
        count_io[0] = count
        return status

    cdef int _parse_pcapng(self, const uint8_t* buf, Py_ssize_t end, Py_ssize_t* pos_io,
                           bint at_eof, ww_packet* out, Py_ssize_t capacity,
                           Py_ssize_t* count_io) noexcept nogil:
        # Every block: type (4), total length (4), body, total length again (4).
        cdef Py_ssize_t pos = pos_io[0]
        cdef Py_ssize_t count = count_io[0]
        cdef int status = S_BATCH_FULL
        cdef const uint8_t* p
        cdef Py_ssize_t avail
        cdef uint32_t block_type, block_length, minimum, byte_order_magic
        cdef bint block_swap
        cdef int outcome
        while count < capacity:
            avail = end - pos
            if avail < 12:
                status = self._end_of_data(avail, at_eof)
                break
            p = buf + pos
            block_type = rd32(p, self.swap)
            block_swap = self.swap
            if block_type == BT_SECTION_HEADER:
                # The type reads the same in both byte orders; the byte-order
                # magic decides how to read the length and the whole section.
                memcpy(&byte_order_magic, p + 8, 4)
                if byte_order_magic == 0x1A2B3C4D:
                    block_swap = False
                elif byte_order_magic == 0x4D3C2B1A:
                    block_swap = True
                else:
                    status = self._fail(E_BYTE_ORDER_MAGIC, pos, rd32(p + 8, False), 0,
                                        block_type)
                    break
            block_length = rd32(p + 4, block_swap)
            minimum = self._min_block_length(block_type)
            if block_length % 4 != 0 or block_length < minimum:
                status = self._fail(E_BLOCK_LENGTH, pos, block_length, minimum, block_type)
                break
            if block_length > C_MAX_BLOCK_LENGTH:
                status = self._fail(E_BLOCK_TOO_LONG, pos, block_length, C_MAX_BLOCK_LENGTH,
                                    block_type)
                break
            if avail < <Py_ssize_t>block_length:
                status = self._end_of_data(avail, at_eof)
                break
            if rd32(p + block_length - 4, block_swap) != block_length:
                # The leading length passed every check, so keep walking by it.
                self.counters[A_BAD_BLOCK_LENGTH] += 1

            outcome = self._parse_block(p, block_type, block_length, block_swap, pos,
                                        &out[count])
            if outcome < 0:
                status = S_ERROR
                break
            count += outcome
            pos += block_length
        pos_io[0] = pos
        count_io[0] = count
        return status

    cdef uint32_t _min_block_length(self, uint32_t block_type) noexcept nogil:
        if block_type == BT_SECTION_HEADER:
            return 28
        if block_type == BT_INTERFACE_DESCRIPTION:
            return 20
        if block_type == BT_ENHANCED_PACKET or block_type == BT_PACKET_OBSOLETE:
            return 32
        if block_type == BT_SIMPLE_PACKET:
            return 16
        return 12

    cdef int _parse_block(self, const uint8_t* p, uint32_t block_type, uint32_t block_length,
                          bint swap, Py_ssize_t pos, ww_packet* pkt) noexcept nogil:
        """Handle one complete block; return packets written (0 or 1) or -1 on S_ERROR."""
        cdef uint32_t local_id, caplen, wirelen
        cdef uint64_t ts_units
        cdef int64_t ts_ns
        cdef Py_ssize_t iface_index
        cdef uint16_t major

        if block_type == BT_ENHANCED_PACKET or block_type == BT_PACKET_OBSOLETE:
            # EPB: interface id (4), ts high (4), ts low (4), caplen (4),
            # original length (4), data. The obsolete Packet Block has the
            # same layout with a 2-byte interface id and a 2-byte drop count.
            if block_type == BT_ENHANCED_PACKET:
                local_id = rd32(p + 8, swap)
            else:
                local_id = rd16(p + 8, swap)
            caplen = rd32(p + 20, swap)
            wirelen = rd32(p + 24, swap)
            if caplen > block_length - 32:
                self.counters[A_BAD_BLOCK_LENGTH] += 1
                self.records_skipped += 1
                return 0
            if local_id >= self.section_iface_count:
                self.counters[A_UNKNOWN_INTERFACE] += 1
                self.records_skipped += 1
                return 0
            iface_index = self.section_first_iface + local_id
            ts_units = (<uint64_t>rd32(p + 12, swap) << 32) | rd32(p + 16, swap)
            if not units_to_ns(ts_units, self.ifaces[iface_index].tsresol,
                               self.ifaces[iface_index].tsoffset_s, &ts_ns):
                # NOTE: 0 marks a timestamp that does not fit int64 ns
                # (after year 2262); flow code sees it as time going back.
                self.counters[A_INVALID_TIMESTAMP] += 1
                ts_ns = 0
            self._emit(pkt, ts_ns, pos + 28, caplen, wirelen, iface_index)
            return 1

        if block_type == BT_SIMPLE_PACKET:
            # SPB: original length (4), data. It belongs to interface 0 and
            # has no timestamp (ts_ns stays 0). The captured length is the
            # original length cut to the snaplen and to the block.
            if self.section_iface_count == 0:
                self.counters[A_UNKNOWN_INTERFACE] += 1
                self.records_skipped += 1
                return 0
            iface_index = self.section_first_iface
            wirelen = rd32(p + 8, swap)
            caplen = wirelen
            if self.ifaces[iface_index].snaplen != 0 and caplen > self.ifaces[iface_index].snaplen:
                caplen = self.ifaces[iface_index].snaplen
            if caplen > block_length - 16:
                caplen = block_length - 16
            self._emit(pkt, 0, pos + 12, caplen, wirelen, iface_index)
            return 1

        if block_type == BT_INTERFACE_DESCRIPTION:
            # IDB: link type (2), reserved (2), snaplen (4), options.
            if self.n_ifaces >= C_MAX_INTERFACES:
                self._fail(E_TOO_MANY_INTERFACES, pos, self.n_ifaces + 1, C_MAX_INTERFACES,
                           block_type)
                return -1
            iface_index = self._add_interface(rd16(p + 8, swap), rd32(p + 12, swap))
            if iface_index < 0:
                return -1
            self.section_iface_count += 1
            self._parse_interface_options(p, block_length, swap, &self.ifaces[iface_index])
            return 0

        if block_type == BT_SECTION_HEADER:
            # SHB: byte-order magic (4), major (2), minor (2), section length (8).
            major = rd16(p + 12, swap)
            if major != 1:
                self._fail(E_PCAPNG_VERSION, pos, major, 1, block_type)
                return -1
            self.swap = swap
            self.section_index += 1
            self.section_first_iface = self.n_ifaces
            self.section_iface_count = 0
            return 0

        if (block_type == BT_NAME_RESOLUTION or block_type == BT_INTERFACE_STATISTICS
                or block_type == BT_SYSTEMD_JOURNAL or block_type == BT_DECRYPTION_SECRETS
                or block_type == BT_CUSTOM_COPYABLE or block_type == BT_CUSTOM_NOT_COPYABLE):
            return 0

        self.counters[A_UNKNOWN_BLOCK] += 1
        return 0

    cdef void _parse_interface_options(self, const uint8_t* p, uint32_t block_length, bint swap,
                                       iface_t* iface) noexcept nogil:
        # Options: code (2), length (2), value padded to 4 bytes; code 0 ends them.
        cdef uint32_t offset = 16
        cdef uint32_t options_end = block_length - 4
        cdef uint16_t code, length
        cdef uint32_t padded, copied
        cdef const uint8_t* value
        while offset + 4 <= options_end:
            code = rd16(p + offset, swap)
            length = rd16(p + offset + 2, swap)
            if code == OPT_END:
                return
            padded = (<uint32_t>length + 3) & ~(<uint32_t>3)
            if offset + 4 + padded > options_end:
                self.counters[A_INVALID_OPTION] += 1
                return
            value = p + offset + 4
            if code == OPT_IF_TSRESOL:
                if length == 1 and tsresol_is_valid(value[0]):
                    iface.tsresol = value[0]
                else:
                    self.counters[A_INVALID_OPTION] += 1
            elif code == OPT_IF_TSOFFSET:
                if length == 8:
                    iface.tsoffset_s = <int64_t>rd64(value, swap)
                else:
                    self.counters[A_INVALID_OPTION] += 1
            elif code == OPT_IF_NAME:
                copied = length if length < NAME_SIZE - 1 else NAME_SIZE - 1
                memcpy(iface.name, value, copied)
                iface.name[copied] = 0
            offset += 4 + padded
