# Compiled Reader for the protocol parsers in engine.inspect.
#
# Same contract as engine.inspect.wire.PyReader, which stays as the
# reference implementation and the fallback when this module is not built:
# every read checks its length against the captured bytes and raises
# Truncated (engine.inspect.wire) instead of reading past the end, or
# Malformed for a negative length.

from engine.inspect.wire import Malformed, Truncated


cdef class Reader:
    """Cursor over bytes that raises Truncated instead of reading past the end."""

    cdef public bytes buffer
    cdef public Py_ssize_t position
    cdef public Py_ssize_t end
    cdef public bint cut  # set by callers when the capture ended inside this structure

    def __init__(self, bytes buffer, Py_ssize_t position=0, end=None):
        self.buffer = buffer
        self.position = position
        if end is None or end > len(buffer):
            self.end = len(buffer)
        else:
            self.end = end
        self.cut = False

    @property
    def remaining(self):
        return self.end - self.position

    cdef Py_ssize_t _advance(self, Py_ssize_t count) except -1:
        cdef Py_ssize_t start = self.position
        if count < 0:
            raise Malformed(f"negative length {count}")
        if start + count > self.end:
            raise Truncated(f"need {count} bytes, {self.end - start} captured")
        self.position = start + count
        return start

    def take(self, Py_ssize_t count):
        cdef Py_ssize_t start = self._advance(count)
        return self.buffer[start:start + count]

    def skip(self, Py_ssize_t count):
        self._advance(count)

    def u8(self):
        cdef Py_ssize_t start = self._advance(1)
        cdef const unsigned char* data = self.buffer
        return data[start]

    def u16(self):
        cdef Py_ssize_t start = self._advance(2)
        cdef const unsigned char* data = self.buffer
        return (data[start] << 8) | data[start + 1]

    def u24(self):
        cdef Py_ssize_t start = self._advance(3)
        cdef const unsigned char* data = self.buffer
        return (data[start] << 16) | (data[start + 1] << 8) | data[start + 2]

    def u32(self):
        cdef Py_ssize_t start = self._advance(4)
        cdef const unsigned char* data = self.buffer
        return ((<unsigned long>data[start] << 24) | (data[start + 1] << 16)
                | (data[start + 2] << 8) | data[start + 3])

    def u16le(self):
        cdef Py_ssize_t start = self._advance(2)
        cdef const unsigned char* data = self.buffer
        return data[start] | (data[start + 1] << 8)

    def u32le(self):
        cdef Py_ssize_t start = self._advance(4)
        cdef const unsigned char* data = self.buffer
        return (data[start] | (data[start + 1] << 8) | (data[start + 2] << 16)
                | (<unsigned long>data[start + 3] << 24))

    def sub(self, Py_ssize_t count):
        """Return a reader over the next `count` bytes and move past them."""
        cdef Py_ssize_t start = self._advance(count)
        return Reader(self.buffer, start, start + count)
