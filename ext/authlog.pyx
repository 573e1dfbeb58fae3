# A line scanner for Linux authentication logs (OpenSSH, PAM, sudo) over a
# bytes buffer, with no Python object per line.
#
# Input: whole lines of syslog text. Three header forms are accepted:
#   BSD (RFC 3164)   "Dec 10 06:55:46 host ident[pid]: message"
#   RFC 3339         "2026-12-04T21:35:12.123456+01:00 host ident[pid]: message"
#   epoch seconds    "@1733347200.123456 host ident[pid]: message"
# each optionally after a "<PRI>" prefix. The epoch form is what the journald
# reader writes when it turns export-format entries into lines.
#
# Output: one auth_event per recognised line. Strings (user, source address,
# host, service, method) are not copied: each is an offset and length into the
# buffer plus a 64-bit FNV-1a hash, so Python decodes only distinct values.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memset

cimport numpy as cnp
import numpy as np

cnp.import_array()


cpdef enum AuthKind:
    AUTH_NONE = 0
    AUTH_FAILURE = 1          # sshd "Failed <method> for", sudo "incorrect password attempts"
    AUTH_SUCCESS = 2          # sshd "Accepted <method> for"
    AUTH_INVALID_USER = 3     # sshd "Invalid user X from ADDR": a probe, not yet a failure
    AUTH_PAM_FAILURE = 4      # pam_unix "authentication failure;"
    AUTH_SESSION_OPEN = 5     # pam_unix "session opened for user X"
    AUTH_SESSION_CLOSE = 6    # pam_unix "session closed for user X"
    AUTH_SUDO = 7             # sudo command run as another user

# auth_event.flags bits
FLAG_INVALID_USER = 0x01      # sshd said "invalid user"
FLAG_PRIVILEGED = 0x02        # the target account is root

cdef uint8_t _FLAG_INVALID_USER = 0x01
cdef uint8_t _FLAG_PRIVILEGED = 0x02

# Line outcome counters, in the order scan_lines() returns them.
COUNTER_NAMES = ("lines", "blank", "malformed", "events", "ignored")

cdef extern from *:
    """
    #define WW_FNV_OFFSET 14695981039346656037ULL
    #define WW_FNV_PRIME 1099511628211ULL
    """
    uint64_t FNV_OFFSET "WW_FNV_OFFSET"
    uint64_t FNV_PRIME "WW_FNV_PRIME"

# Longest string field kept; longer values are cut (the offsets are 16-bit).
cdef Py_ssize_t MAX_FIELD_LEN = 65535

ctypedef struct auth_event:
    int64_t ts_us             # event time, microseconds since the Unix epoch (UTC)
    int64_t line_no           # line number in the file, from 1
    uint64_t user_hash        # FNV-1a 64 of the user name; 0 when absent
    uint64_t src_hash         # FNV-1a 64 of the client address or host name; 0 when absent
    uint64_t host_hash        # FNV-1a 64 of the logging host name
    uint32_t line_start       # byte offset of the line in the buffer
    uint32_t user_start       # byte offsets into the buffer; a length of 0 means absent
    uint32_t src_start
    uint32_t host_start
    uint32_t service_start
    uint32_t method_start
    uint16_t user_len
    uint16_t src_len
    uint16_t host_len
    uint16_t service_len
    uint16_t method_len
    uint16_t src_port         # client port; 0 when absent
    int32_t pid               # process id from "ident[pid]"; -1 when absent
    uint32_t count            # events this line stands for ("message repeated N times")
    uint8_t kind              # AuthKind
    uint8_t flags             # FLAG_* bits
    uint8_t reserved[2]       # zero


def event_dtype():
    """Return the NumPy structured dtype of auth_event."""
    cdef auth_event sample
    memset(&sample, 0, sizeof(auth_event))
    cdef auth_event[::1] view = <auth_event[:1]> &sample
    return np.asarray(view).dtype


cdef const char* MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"
# Days before the first of each month in a common year.
cdef int64_t DAYS_BEFORE_MONTH[12]
DAYS_BEFORE_MONTH[:] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334]


cdef inline bint is_digit(uint8_t c) noexcept nogil:
    return c >= 48 and c <= 57


cdef inline int64_t days_since_epoch(int64_t year, int64_t month, int64_t day) noexcept nogil:
    # Proleptic Gregorian calendar; the caller keeps year in 1970..9999.
    cdef int64_t previous = year - 1
    cdef int64_t leap_days = (previous // 4 - previous // 100 + previous // 400) - 477
    cdef int64_t days = 365 * (year - 1970) + leap_days + DAYS_BEFORE_MONTH[month - 1] + day - 1
    cdef bint leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
    if leap and month > 2:
        days += 1
    return days


cdef inline int read_digits(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    # Value of exactly n digits at p, or -1 if any is not a digit.
    cdef int value = 0
    cdef Py_ssize_t i
    for i in range(n):
        if not is_digit(p[i]):
            return -1
        value = value * 10 + (p[i] - 48)
    return value


cdef inline uint64_t fnv1a(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * FNV_PRIME
    if h == 0:
        h = 1  # 0 is the "absent" sentinel
    return h


cdef inline Py_ssize_t find(const uint8_t* buf, Py_ssize_t start, Py_ssize_t end,
                            const char* needle, Py_ssize_t needle_len) noexcept nogil:
    # Offset of the first needle in buf[start:end], or -1.
    cdef Py_ssize_t i
    cdef const uint8_t* hit
    i = start
    while i + needle_len <= end:
        hit = <const uint8_t*> memchr(buf + i, needle[0], end - needle_len + 1 - i)
        if hit == NULL:
            return -1
        i = hit - buf
        if memcmp(hit, needle, needle_len) == 0:
            return i
        i += 1
    return -1


cdef inline bint starts(const uint8_t* buf, Py_ssize_t p, Py_ssize_t end,
                        const char* prefix, Py_ssize_t prefix_len) noexcept nogil:
    return p + prefix_len <= end and memcmp(buf + p, prefix, prefix_len) == 0


cdef inline Py_ssize_t token_end(const uint8_t* buf, Py_ssize_t p, Py_ssize_t end) noexcept nogil:
    while p < end and buf[p] != 32:
        p += 1
    return p


cdef struct scan_state:
    int64_t year              # year of BSD timestamps, which carry none
    int64_t previous_month    # month of the last BSD timestamp, for the December to January rollover
    int64_t utc_offset_s      # offset of BSD timestamps' local time from UTC


cdef inline int64_t parse_bsd_time(const uint8_t* buf, Py_ssize_t p, Py_ssize_t end,
                                   scan_state* state) noexcept nogil:
    # "Mmm dd hh:mm:ss " (day space-padded); -1 when malformed.
    cdef int month = 0, m, day, hour, minute, second
    if p + 16 > end or buf[p + 3] != 32 or buf[p + 6] != 32 or buf[p + 9] != 58 \
            or buf[p + 12] != 58 or buf[p + 15] != 32:
        return -1
    for m in range(12):
        if memcmp(buf + p, MONTHS + 3 * m, 3) == 0:
            month = m + 1
            break
    if month == 0:
        return -1
    if buf[p + 4] == 32:
        day = read_digits(buf + p + 5, 1)
    else:
        day = read_digits(buf + p + 4, 2)
    hour = read_digits(buf + p + 7, 2)
    minute = read_digits(buf + p + 10, 2)
    second = read_digits(buf + p + 13, 2)
    if day < 1 or day > 31 or hour < 0 or hour > 23 or minute < 0 or minute > 59 \
            or second < 0 or second > 60:
        return -1
    if state.previous_month == 12 and month == 1:
        state.year += 1
    state.previous_month = month
    return ((days_since_epoch(state.year, month, day) * 86400 + hour * 3600 + minute * 60
             + second - state.utc_offset_s) * 1000000)


cdef inline int64_t parse_rfc3339_time(const uint8_t* buf, Py_ssize_t p, Py_ssize_t end,
                                       Py_ssize_t* after) noexcept nogil:
    # "YYYY-MM-DDThh:mm:ss[.frac](Z|+hh:mm|-hh:mm) "; -1 when malformed.
    cdef int year, month, day, hour, minute, second, offset_h, offset_m
    cdef int64_t micros = 0, scale = 100000, offset_s = 0
    if p + 20 > end or buf[p + 4] != 45 or buf[p + 7] != 45 or buf[p + 10] != 84 \
            or buf[p + 13] != 58 or buf[p + 16] != 58:
        return -1
    year = read_digits(buf + p, 4)
    month = read_digits(buf + p + 5, 2)
    day = read_digits(buf + p + 8, 2)
    hour = read_digits(buf + p + 11, 2)
    minute = read_digits(buf + p + 14, 2)
    second = read_digits(buf + p + 17, 2)
    if year < 1970 or year > 9999 or month < 1 or month > 12 or day < 1 or day > 31 \
            or hour < 0 or hour > 23 or minute < 0 or minute > 59 or second < 0 or second > 60:
        return -1
    p += 19
    if p < end and buf[p] == 46:  # '.'
        p += 1
        while p < end and is_digit(buf[p]):
            micros += (buf[p] - 48) * scale
            scale //= 10
            p += 1
    if p < end and buf[p] == 90:  # 'Z'
        p += 1
    elif p + 6 <= end and (buf[p] == 43 or buf[p] == 45) and buf[p + 3] == 58:
        offset_h = read_digits(buf + p + 1, 2)
        offset_m = read_digits(buf + p + 4, 2)
        if offset_h < 0 or offset_m < 0:
            return -1
        offset_s = offset_h * 3600 + offset_m * 60
        if buf[p] == 45:
            offset_s = -offset_s
        p += 6
    else:
        return -1
    if p >= end or buf[p] != 32:
        return -1
    after[0] = p + 1
    return ((days_since_epoch(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
             - offset_s) * 1000000 + micros)


cdef inline int64_t parse_epoch_time(const uint8_t* buf, Py_ssize_t p, Py_ssize_t end,
                                     Py_ssize_t* after) noexcept nogil:
    # "@seconds[.frac] "; -1 when malformed.
    cdef int64_t seconds = 0, micros = 0, scale = 100000
    cdef Py_ssize_t digits = 0
    p += 1
    while p < end and is_digit(buf[p]) and digits < 12:
        seconds = seconds * 10 + (buf[p] - 48)
        p += 1
        digits += 1
    if digits == 0:
        return -1
    if p < end and buf[p] == 46:
        p += 1
        while p < end and is_digit(buf[p]):
            micros += (buf[p] - 48) * scale
            scale //= 10
            p += 1
    if p >= end or buf[p] != 32:
        return -1
    after[0] = p + 1
    return seconds * 1000000 + micros


cdef inline void set_user(auth_event* ev, const uint8_t* buf, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    if stop - start > MAX_FIELD_LEN:
        stop = start + MAX_FIELD_LEN
    ev.user_start = <uint32_t> start
    ev.user_len = <uint16_t> (stop - start)
    ev.user_hash = fnv1a(buf + start, stop - start) if stop > start else 0
    if stop - start == 4 and memcmp(buf + start, b"root", 4) == 0:
        ev.flags |= _FLAG_PRIVILEGED


cdef inline void set_src(auth_event* ev, const uint8_t* buf, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    if stop - start > MAX_FIELD_LEN:
        stop = start + MAX_FIELD_LEN
    ev.src_start = <uint32_t> start
    ev.src_len = <uint16_t> (stop - start)
    ev.src_hash = fnv1a(buf + start, stop - start) if stop > start else 0


cdef inline Py_ssize_t parse_user_from(auth_event* ev, const uint8_t* buf, Py_ssize_t p,
                                       Py_ssize_t end) noexcept nogil:
    # "USER from ADDR[ port N]..." as sshd writes it; returns -1 if " from " is missing.
    cdef Py_ssize_t from_at = find(buf, p, end, b" from ", 6)
    cdef Py_ssize_t q, port = 0
    if from_at < 0:
        return -1
    set_user(ev, buf, p, from_at)
    q = token_end(buf, from_at + 6, end)
    set_src(ev, buf, from_at + 6, q)
    if starts(buf, q, end, b" port ", 6):
        q += 6
        while q < end and is_digit(buf[q]) and port <= 65535:
            port = port * 10 + (buf[q] - 48)
            q += 1
        if port <= 65535:
            ev.src_port = <uint16_t> port
    return q


cdef inline bint classify_sshd(auth_event* ev, const uint8_t* buf, Py_ssize_t p,
                               Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t q, count = 0
    if starts(buf, p, end, b"Failed ", 7) or starts(buf, p, end, b"Accepted ", 9):
        ev.kind = AUTH_FAILURE if buf[p] == 70 else AUTH_SUCCESS
        p += 7 if buf[p] == 70 else 9
        q = token_end(buf, p, end)
        ev.method_start = <uint32_t> p
        ev.method_len = <uint16_t> min(q - p, MAX_FIELD_LEN)
        if not starts(buf, q, end, b" for ", 5):
            return False
        p = q + 5
        if starts(buf, p, end, b"invalid user ", 13):
            ev.flags |= _FLAG_INVALID_USER
            p += 13
        return parse_user_from(ev, buf, p, end) >= 0
    if starts(buf, p, end, b"Invalid user ", 13):
        ev.kind = AUTH_INVALID_USER
        ev.flags |= _FLAG_INVALID_USER
        return parse_user_from(ev, buf, p + 13, end) >= 0
    if starts(buf, p, end, b"message repeated ", 17):
        # "message repeated N times: [ inner message]"
        p += 17
        while p < end and is_digit(buf[p]) and count < 1000000:
            count = count * 10 + (buf[p] - 48)
            p += 1
        if count < 1 or not starts(buf, p, end, b" times: [ ", 10):
            return False
        if end > p and buf[end - 1] == 93:  # ']'
            end -= 1
        ev.count = <uint32_t> count
        return classify_sshd(ev, buf, p + 10, end)
    return False


cdef inline bint classify_pam(auth_event* ev, const uint8_t* buf, Py_ssize_t p,
                              Py_ssize_t end) noexcept nogil:
    # The text after "pam_unix(service:type): ", or after "service(pam_unix)[pid]: ".
    cdef Py_ssize_t at, q
    if starts(buf, p, end, b"authentication failure;", 23):
        ev.kind = AUTH_PAM_FAILURE
        at = find(buf, p, end, b" rhost=", 7)
        if at >= 0:
            q = token_end(buf, at + 7, end)
            set_src(ev, buf, at + 7, q)
        at = find(buf, p, end, b" user=", 6)
        if at >= 0:
            q = token_end(buf, at + 6, end)
            set_user(ev, buf, at + 6, q)
        return True
    if starts(buf, p, end, b"session opened for user ", 24) or \
            starts(buf, p, end, b"session closed for user ", 24):
        ev.kind = AUTH_SESSION_OPEN if buf[p + 8] == 111 else AUTH_SESSION_CLOSE
        p += 24
        q = p
        # Newer PAM writes "user root(uid=0) by alice(uid=1000)".
        while q < end and buf[q] != 32 and buf[q] != 40:
            q += 1
        set_user(ev, buf, p, q)
        return True
    return False


cdef inline bint classify_sudo(auth_event* ev, const uint8_t* buf, Py_ssize_t p,
                               Py_ssize_t end) noexcept nogil:
    # "alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/sh"
    # "alice : 3 incorrect password attempts ; TTY=... ; USER=root ; COMMAND=..."
    cdef Py_ssize_t sep, at, q, count = 0
    while p < end and buf[p] == 32:
        p += 1
    sep = find(buf, p, end, b" : ", 3)
    if sep < 0:
        return False
    set_user(ev, buf, p, sep)
    ev.flags &= ~_FLAG_PRIVILEGED  # the invoking user; privilege comes from USER=
    p = sep + 3
    at = find(buf, p, end, b"USER=", 5)
    if at < 0:
        return False
    q = at + 5
    while q < end and buf[q] != 32 and buf[q] != 59:
        q += 1
    if q - at - 5 == 4 and memcmp(buf + at + 5, b"root", 4) == 0:
        ev.flags |= _FLAG_PRIVILEGED
    if find(buf, p, at, b"incorrect password attempt", 26) >= 0:
        while p < end and is_digit(buf[p]) and count < 1000000:
            count = count * 10 + (buf[p] - 48)
            p += 1
        ev.kind = AUTH_FAILURE
        ev.count = <uint32_t> (count if count > 0 else 1)
    elif find(buf, p, at, b"NOT in sudoers", 14) >= 0 or find(buf, p, at, b"command not allowed", 19) >= 0:
        ev.kind = AUTH_FAILURE
    else:
        ev.kind = AUTH_SUDO
    return True


cdef inline int classify_line(auth_event* ev, const uint8_t* buf, Py_ssize_t p, Py_ssize_t end,
                              scan_state* state) noexcept nogil:
    # 0: malformed, 1: header parsed but not an auth event, 2: event written.
    cdef Py_ssize_t after = 0, host_end, colon, name_end, q
    cdef int64_t ts
    cdef int pid = -1
    cdef bint pam_ident = False, is_sshd, is_sudo, found
    cdef Py_ssize_t service_start, service_len

    if p < end and buf[p] == 60:  # "<PRI>"
        q = p + 1
        while q < end and q < p + 5 and is_digit(buf[q]):
            q += 1
        if q >= end or buf[q] != 62:
            return 0
        p = q + 1
    if p >= end:
        return 0
    if buf[p] == 64:  # '@'
        ts = parse_epoch_time(buf, p, end, &after)
    elif is_digit(buf[p]):
        ts = parse_rfc3339_time(buf, p, end, &after)
    else:
        ts = parse_bsd_time(buf, p, end, state)
        after = p + 16
    if ts < 0:
        return 0

    host_end = token_end(buf, after, end)
    if host_end == after or host_end >= end:
        return 0
    colon = find(buf, host_end + 1, end, b": ", 2)
    if colon < 0:
        if end - 1 > host_end and buf[end - 1] == 58:  # ident with an empty message
            return 1
        return 0

    name_end = host_end + 1
    while name_end < colon and buf[name_end] != 91 and buf[name_end] != 40:  # '[' '('
        name_end += 1
    q = name_end
    while q < colon:
        if buf[q] == 91:
            pid = 0
            q += 1
            while q < colon and is_digit(buf[q]):
                pid = pid * 10 + (buf[q] - 48)
                q += 1
        elif buf[q] == 40 and starts(buf, q, colon, b"(pam_unix)", 10):
            pam_ident = True
            q += 10
        else:
            q += 1

    ev.ts_us = ts
    ev.host_start = <uint32_t> after
    ev.host_len = <uint16_t> min(host_end - after, MAX_FIELD_LEN)
    ev.host_hash = fnv1a(buf + after, host_end - after)
    ev.pid = pid
    ev.count = 1
    service_start = host_end + 1
    service_len = name_end - service_start
    ev.service_start = <uint32_t> service_start
    ev.service_len = <uint16_t> min(service_len, MAX_FIELD_LEN)
    p = colon + 2

    # OpenSSH 9.8 and later log from "sshd-session" (and "sshd-auth") processes.
    is_sshd = service_len >= 4 and memcmp(buf + service_start, b"sshd", 4) == 0 and \
        (service_len == 4 or buf[service_start + 4] == 45)
    is_sudo = service_len == 4 and memcmp(buf + service_start, b"sudo", 4) == 0
    if pam_ident:
        found = classify_pam(ev, buf, p, end)
    elif starts(buf, p, end, b"pam_unix(", 9):
        # "pam_unix(su:session): ...": the PAM service names the program.
        q = p + 9
        while q < end and buf[q] != 58 and buf[q] != 41:
            q += 1
        ev.service_start = <uint32_t> (p + 9)
        ev.service_len = <uint16_t> min(q - p - 9, MAX_FIELD_LEN)
        q = find(buf, q, end, b"): ", 3)
        found = q >= 0 and classify_pam(ev, buf, q + 3, end)
    elif is_sshd:
        found = classify_sshd(ev, buf, p, end)
    elif is_sudo:
        found = classify_sudo(ev, buf, p, end)
    else:
        found = False
    return 2 if found else 1


def scan_lines(const uint8_t[::1] buf, int64_t first_line_no, int64_t year,
               int64_t previous_month=0, int64_t utc_offset_s=0, bint final=False,
               Py_ssize_t max_malformed=1000):
    """Scan whole lines of `buf` for authentication events.

    Returns (events, consumed, counters, malformed_line_numbers, year,
    previous_month): `consumed` bytes end at the last newline (or at the end
    of `buf` when `final`), so a partial last line is left for the next call;
    counters follow COUNTER_NAMES; at most `max_malformed` malformed line
    numbers are listed, while the counter counts them all; year and
    previous_month are the BSD timestamp state to pass to the next call.
    """
    cdef Py_ssize_t n = buf.shape[0]
    cdef const uint8_t* data = &buf[0] if n > 0 else NULL
    cdef Py_ssize_t pos = 0, end, line_end, capacity = 1
    cdef const uint8_t* newline
    cdef int64_t line_no = first_line_no
    cdef int64_t lines = 0, blank = 0, malformed = 0, nevents = 0, ignored = 0
    cdef Py_ssize_t nmalformed_listed = 0
    cdef int outcome
    cdef scan_state state
    cdef auth_event* ev

    if n > 0xFFFFFFFF:
        raise ValueError(f"buffer of {n} bytes is too large; pass at most 4 GiB per call")
    state.year = year
    state.previous_month = previous_month
    state.utc_offset_s = utc_offset_s

    # One event per line at most, so the line count bounds the output.
    while pos < n:
        newline = <const uint8_t*> memchr(data + pos, 10, n - pos)
        if newline == NULL:
            break
        capacity += 1
        pos = newline - data + 1
    events_array = np.zeros(capacity, dtype=event_dtype())
    malformed_array = np.zeros(max_malformed, dtype=np.int64)
    cdef auth_event[::1] events = events_array
    cdef int64_t[::1] malformed_lines = malformed_array

    pos = 0
    with nogil:
        while pos < n:
            newline = <const uint8_t*> memchr(data + pos, 10, n - pos)
            if newline == NULL:
                if not final:
                    break
                end = n
            else:
                end = newline - data
            line_end = end
            if line_end > pos and data[line_end - 1] == 13:  # CRLF
                line_end -= 1
            lines += 1
            if line_end == pos:
                blank += 1
            else:
                ev = &events[nevents]
                ev.line_no = line_no
                ev.line_start = <uint32_t> pos
                outcome = classify_line(ev, data, pos, line_end, &state)
                if outcome == 2:
                    nevents += 1
                else:
                    memset(ev, 0, sizeof(auth_event))
                    if outcome == 1:
                        ignored += 1
                    else:
                        malformed += 1
                        if nmalformed_listed < max_malformed:
                            malformed_lines[nmalformed_listed] = line_no
                            nmalformed_listed += 1
            line_no += 1
            pos = end + 1
    if pos > n:
        pos = n
    counters = (lines, blank, malformed, nevents, ignored)
    return (events_array[:nevents], pos, counters, malformed_array[:nmalformed_listed],
            state.year, state.previous_month)
