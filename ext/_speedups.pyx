# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, auto_pickle=False
"""Accelerated core of p2psync: line splitting and socket<->file copy loops.

The behaviour is specified by p2psync/_twin.py (same names, same results, same
errors); read that module for the full docstrings. Here: memchr over one
malloc'd buffer with a read offset for lines, and recv/write/sendfile loops that
release the GIL around every blocking system call.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.errno cimport EAGAIN, EINTR, EINVAL, ENOSYS, errno
from libc.math cimport ceil
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.stdio cimport snprintf
from libc.string cimport memchr, memcmp, memcpy, memmove, strerror
from posix.types cimport off_t
from posix.unistd cimport pread, write

from p2psync import chunking as _chunking
from p2psync.errors import ConnectionClosed, ProtocolError, TransferError, send_failed

__all__ = [
    "MAX_LINE_BYTES",
    "RECV_BUFFER_BYTES",
    "Buffer",
    "Chunker",
    "LineSplitter",
    "chunk_lengths",
    "link_new_files",
    "read_small_file",
    "recv_to_file",
    "send_from_file",
]

MAX_LINE_BYTES = 64 * 1024
RECV_BUFFER_BYTES = 1024 * 1024

cdef enum:
    QUOTED_BYTES = 100  # how much of an overlong line an error quotes
    SENDFILE_CHUNK = 16 * 1024 * 1024  # bounded so signals get a look in between calls


cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT

cdef extern from *:
    """
    #include <errno.h>
    #if defined(__linux__)
    #include <sys/sendfile.h>
    static ssize_t p2p_sendfile(int out_fd, int in_fd, off_t *offset, size_t count) {
        return sendfile(out_fd, in_fd, offset, count);
    }
    #else
    static ssize_t p2p_sendfile(int out_fd, int in_fd, off_t *offset, size_t count) {
        (void)out_fd; (void)in_fd; (void)offset; (void)count;
        errno = ENOSYS;
        return -1;
    }
    #endif
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    """
    ssize_t p2p_sendfile(int out_fd, int in_fd, off_t *offset, size_t count) nogil
    int MSG_NOSIGNAL
    int EWOULDBLOCK

cdef extern from *:
    """
    #include <fcntl.h>
    #include <stdio.h>
    #include <sys/stat.h>
    #include <unistd.h>
    /* Linking an anonymous file by its fd (AT_EMPTY_PATH) skips the /proc lookup;
       kernels that want CAP_DAC_READ_SEARCH for it say ENOENT, and from then
       on the /proc name is used. A hint shared by threads, so atomic. */
    static int p2p_link_by_proc = 0;
    static int p2p_link_anonymous(int fd, int dir_fd, const char *name) {
        char path[64];
        if (!__atomic_load_n(&p2p_link_by_proc, __ATOMIC_RELAXED)) {
            if (linkat(fd, "", dir_fd, name, AT_EMPTY_PATH) == 0) return 0;
            if (errno != ENOENT && errno != EPERM && errno != EINVAL) return -1;
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        if (linkat(AT_FDCWD, path, dir_fd, name, AT_SYMLINK_FOLLOW) < 0) return -1;
        __atomic_store_n(&p2p_link_by_proc, 1, __ATOMIC_RELAXED);
        return 0;
    }
    /* One file of link_new_files (see p2psync/_twin.py): its inode, 0 when the
       name is taken, -errno on failure. The anonymous file vanishes with its fd
       unless linked, so every path but success leaves nothing behind. Created
       with `mode` already, it needs a chmod only where the umask took bits off. */
    static long long p2p_link_new_file(int dir_fd, const char *name, const char *data, size_t n, long long mtime, int mode) {
    #if defined(__linux__) && defined(O_TMPFILE)
        struct timespec times[2];
        struct stat st;
        ssize_t wrote;
        int fd, err;
        fd = openat(dir_fd, ".", O_RDWR | O_TMPFILE | O_CLOEXEC, mode >= 0 ? (mode_t)mode : 0666);
        if (fd < 0) return -errno;
        while (n) {
            wrote = write(fd, data, n);
            if (wrote < 0) {
                if (errno == EINTR) continue;
                goto fail;
            }
            data += wrote;
            n -= (size_t)wrote;
        }
        times[0].tv_sec = times[1].tv_sec = (time_t)mtime;
        times[0].tv_nsec = times[1].tv_nsec = 0;
        if (futimens(fd, times) < 0 || fstat(fd, &st) < 0) goto fail;
        if (mode >= 0 && (int)(st.st_mode & 07777) != mode && fchmod(fd, (mode_t)mode) < 0) goto fail;
        if (p2p_link_anonymous(fd, dir_fd, name) < 0) {
            if (errno == EEXIST) {
                close(fd);
                return 0;
            }
            goto fail;
        }
        close(fd);
        return (long long)st.st_ino;
    fail:
        err = errno;
        close(fd);
        return -err;
    #else
        (void)dir_fd; (void)name; (void)data; (void)n; (void)mtime; (void)mode;
        return -ENOSYS;
    #endif
    }
    """
    long long p2p_link_new_file(int dir_fd, const char *name, const char *data, size_t n, long long mtime, int mode) nogil


cdef extern from *:
    """
    #include <fcntl.h>
    #include <sys/stat.h>
    #include <unistd.h>
    /* What read_small_file needs of a file's stat, the same on every system. */
    typedef struct { long long size, mtime_ns, inode; int regular; } p2p_stat;
    static void p2p_fill_stat(const struct stat *st, p2p_stat *out) {
        out->size = (long long)st->st_size;
    #if defined(__APPLE__)
        out->mtime_ns = (long long)st->st_mtimespec.tv_sec * 1000000000LL + st->st_mtimespec.tv_nsec;
    #else
        out->mtime_ns = (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
    #endif
        out->inode = (long long)st->st_ino;
        out->regular = S_ISREG(st->st_mode);
    }
    /* Open `name` in `dir_fd` to serve it (never through a symlink, never waiting on
       a FIFO) and stat it: the fd, or -errno. */
    static int p2p_open_to_serve(int dir_fd, const char *name, p2p_stat *out) {
        struct stat st;
        int err, fd = openat(dir_fd, name, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) return -errno;
        if (fstat(fd, &st) < 0) {
            err = errno;
            close(fd);
            return -err;
        }
        p2p_fill_stat(&st, out);
        return fd;
    }
    /* Read `n` bytes from the start of `fd` in one pread (retried on EINTR) and stat
       it again: bytes read, or -errno. */
    static long long p2p_read_and_restat(int fd, char *into, size_t n, p2p_stat *out) {
        struct stat st;
        ssize_t got;
        do got = pread(fd, into, n, 0); while (got < 0 && errno == EINTR);
        if (got < 0 || fstat(fd, &st) < 0) return -errno;
        p2p_fill_stat(&st, out);
        return (long long)got;
    }
    """
    ctypedef struct p2p_stat:
        long long size
        long long mtime_ns
        long long inode
        int regular
    int p2p_open_to_serve(int dir_fd, const char *name, p2p_stat *out) nogil
    long long p2p_read_and_restat(int fd, char *into, size_t n, p2p_stat *out) nogil


cdef extern from "<unistd.h>" nogil:
    int close(int fd)


cdef inline object _too_long(const char *start, Py_ssize_t available, Py_ssize_t max_line):
    head = PyBytes_FromStringAndSize(start, min(available, QUOTED_BYTES))
    return ProtocolError(f"line longer than {max_line} bytes without a newline (starts {head!r})")


cdef class LineSplitter:
    """Splits a byte stream into `\\n`-terminated lines, sans-IO (see p2psync._twin)."""

    cdef char *_buf
    cdef Py_ssize_t _cap, _start, _end, _scan
    cdef public Py_ssize_t max_line

    def __cinit__(self, *args, **kwargs):
        self._buf = NULL
        self._cap = self._start = self._end = self._scan = 0

    def __init__(self, Py_ssize_t max_line=MAX_LINE_BYTES):
        if max_line < 1:
            raise ValueError(f"max_line must be positive, got {max_line}")
        self.max_line = max_line

    def __dealloc__(self):
        free(self._buf)

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self._end + extra
        cdef Py_ssize_t cap = self._cap
        cdef char *grown
        if need <= cap:
            return 0
        cap = max(need, 2 * cap, 4096)
        grown = <char *>realloc(self._buf, cap)
        if grown == NULL:
            raise MemoryError()
        self._buf = grown
        self._cap = cap
        return 0

    def feed(self, data):
        """Append received bytes (compacting consumed ones first, once per feed)."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self._start:
                memmove(self._buf, self._buf + self._start, self._end - self._start)
                self._end -= self._start
                self._scan -= self._start
                self._start = 0
            if view.len:
                self._reserve(view.len)
                memcpy(self._buf + self._end, view.buf, view.len)
                self._end += view.len
        finally:
            PyBuffer_Release(&view)

    cdef object _next(self):
        cdef const char *nl = NULL
        cdef Py_ssize_t end, start = self._start
        if self._scan < self._end:
            nl = <const char *>memchr(self._buf + self._scan, b'\n', self._end - self._scan)
        if nl == NULL:
            self._scan = self._end
            if self._end - start > self.max_line:
                raise _too_long(self._buf + start, self._end - start, self.max_line)
            return None
        end = nl - self._buf
        if end - start > self.max_line:
            raise _too_long(self._buf + start, end - start, self.max_line)
        self._start = self._scan = end + 1
        return PyBytes_FromStringAndSize(self._buf + start, end - start)

    def next_line(self):
        """The next complete line without its `\\n`, or None if none is buffered."""
        return self._next()

    def lines(self):
        """Every complete line buffered now, as `next_line()` would return them."""
        cdef list out = []
        while True:
            line = self._next()
            if line is None:
                return out
            out.append(line)

    def take(self, Py_ssize_t limit):
        """Remove and return up to `limit` buffered bytes not yet returned as lines."""
        cdef Py_ssize_t n = min(max(limit, 0), self._end - self._start)
        chunk = PyBytes_FromStringAndSize(self._buf + self._start, n)
        self._start += n
        self._scan = max(self._scan, self._start)
        return chunk

    @property
    def pending(self):
        """Bytes received but not yet returned as a line."""
        return PyBytes_FromStringAndSize(self._buf + self._start, self._end - self._start)

    @property
    def pending_bytes(self):
        """How many bytes `pending` holds, without copying them."""
        return self._end - self._start


cdef class Buffer:
    """The classic `Buffer(sock, size)`: lines read from a socket (see p2psync._twin)."""

    cdef public object sock
    cdef public Py_ssize_t size
    cdef LineSplitter _splitter

    def __init__(self, sock, Py_ssize_t size=8192, Py_ssize_t max_line=MAX_LINE_BYTES):
        self.sock = sock
        self.size = size
        self._splitter = LineSplitter(max_line)

    @property
    def buffer(self):
        """Bytes received past the last line returned."""
        return self._splitter.pending

    @buffer.setter
    def buffer(self, data):
        self._splitter = LineSplitter(self._splitter.max_line)
        self._splitter.feed(data)

    def poll_line(self):
        """The next line if it is already received, else None; never touches the socket."""
        return self._splitter._next()

    def read_line(self):
        """The next line as bytes, without its `\\n`."""
        return self._read_line()

    cdef object _read_line(self):
        cdef LineSplitter splitter = self._splitter
        cdef Py_ssize_t held
        while True:
            line = splitter._next()
            if line is not None:
                return line
            data = self.sock.recv(self.size)
            if not data:
                held = splitter._end - splitter._start
                if held:
                    raise ProtocolError(
                        f"connection closed in the middle of a line ({held} bytes without a newline)"
                    )
                raise ConnectionClosed("connection closed by the other side")
            splitter.feed(data)

    def get_line(self):
        """The next line as `str`, without its `\\n`."""
        line = self.read_line()
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"line is not UTF-8: {line[:QUOTED_BYTES]!r}") from None

    def take(self, Py_ssize_t limit):
        """Remove and return up to `limit` bytes received past the last line."""
        return self._splitter.take(limit)

    def read_replies(self, sizes, list bodies):
        """Pipelined replies while each is exactly `Content-Length: N` and its N
        bytes, each body appended to `bodies` (see p2psync._twin): None when all
        came, else the first other reply line."""
        cdef LineSplitter splitter = self._splitter
        cdef char header[48]
        cdef Py_ssize_t n, held, length
        cdef int hlen
        for size in sizes:
            n = size
            if n < 0:
                raise ValueError(f"negative reply size {n}")
            hlen = snprintf(header, sizeof(header), b"Content-Length: %zd", n)
            line = self._read_line()
            length = PyBytes_GET_SIZE(line)
            if length != hlen or memcmp(PyBytes_AS_STRING(line), header, hlen) != 0:
                return line
            held = splitter._end - splitter._start
            while held < n:
                try:
                    data = self.sock.recv(max(self.size, n - held))
                except TimeoutError:
                    raise TransferError(f"timed out after {held} of {n} bytes") from None
                except OSError as exc:
                    raise TransferError(f"receive failed after {held} of {n} bytes: {exc.strerror or exc}") from None
                if not data:
                    raise TransferError(f"connection closed after {held} of {n} bytes")
                splitter.feed(data)
                held = splitter._end - splitter._start
            bodies.append(PyBytes_FromStringAndSize(splitter._buf + splitter._start, n))
            splitter._start += n
            if splitter._scan < splitter._start:
                splitter._scan = splitter._start
        return None


# ------------------------------------------------------------------ copy loops

cdef int _timeout_ms(sock) except? -2:
    timeout = sock.gettimeout()
    if timeout is None:
        return -1  # a blocking fd: the system call itself waits
    return <int>min(ceil(timeout * 1000.0), 2147483647.0)


cdef ssize_t _wait_fd(int fd, short events, int timeout_ms) noexcept nogil:
    """1 when ready, 0 on timeout, -1 with errno set (EINTR included)."""
    cdef pollfd pfd
    pfd.fd = fd
    pfd.events = events
    pfd.revents = 0
    return poll(&pfd, 1, timeout_ms)


cdef ssize_t _recv_some(int fd, char *buf, size_t want, int timeout_ms) noexcept nogil:
    """Bytes received (> 0), 0 at end of stream, -1 with errno set, -2 on timeout.

    A socket with a Python timeout is non-blocking at the fd, so EAGAIN means
    "wait with poll", as CPython's own sock_recv does.
    """
    cdef ssize_t got
    cdef ssize_t ready
    while True:
        got = recv(fd, buf, want, 0)
        if got >= 0:
            return got
        if errno != EAGAIN and errno != EWOULDBLOCK:
            return -1
        ready = _wait_fd(fd, POLLIN, timeout_ms)
        if ready == 0:
            return -2
        if ready < 0:
            return -1


cdef int _write_all(int fd, const char *data, size_t n) except -1:
    cdef ssize_t wrote
    while n:
        with nogil:
            wrote = write(fd, data, n)
        if wrote < 0:
            if errno == EINTR:
                PyErr_CheckSignals()
                continue
            PyErr_SetFromErrno(OSError)
            return -1
        data += wrote
        n -= wrote
    return 0


cdef str _strerror(int err):
    return (<bytes>strerror(err)).decode("utf-8", "replace")


def recv_to_file(sock, int fd, long long nbytes, pending=None, hasher=None, Py_ssize_t buffer_size=RECV_BUFFER_BYTES):
    """Receive exactly `nbytes` from `sock` into file descriptor `fd` (see p2psync._twin)."""
    cdef long long done = 0
    cdef Py_ssize_t size, want
    cdef ssize_t got
    cdef int sockfd, timeout_ms, err
    cdef char *buf
    cdef const char *head_ptr
    if nbytes < 0:
        raise ValueError(f"negative byte count {nbytes}")
    if pending is not None and nbytes:
        head = pending.take(nbytes)
        if head:
            head_ptr = head
            _write_all(fd, head_ptr, len(head))
            if hasher is not None:
                hasher.update(head)
            done = len(head)
    if done == nbytes:
        return nbytes
    sockfd = sock.fileno()
    timeout_ms = _timeout_ms(sock)
    size = <Py_ssize_t>min(<long long>max(buffer_size, 1), nbytes - done)
    store = bytearray(size)  # the one buffer of this transfer
    buf = PyByteArray_AS_STRING(store)
    view = memoryview(store) if hasher is not None else None
    while done < nbytes:
        want = <Py_ssize_t>min(<long long>size, nbytes - done)
        with nogil:
            got = _recv_some(sockfd, buf, want, timeout_ms)
            err = errno
        if got > 0:
            _write_all(fd, buf, got)
            if hasher is not None:
                hasher.update(view if got == size else view[:got])
            done += got
        elif got == 0:
            raise TransferError(f"connection closed after {done} of {nbytes} bytes")
        elif got == -2:
            raise TransferError(f"timed out after {done} of {nbytes} bytes")
        elif err == EINTR:
            PyErr_CheckSignals()
        else:
            raise TransferError(f"receive failed after {done} of {nbytes} bytes: {_strerror(err)}")
    return nbytes


cdef ssize_t _send_some(int sockfd, const char *buf, size_t n, int timeout_ms) noexcept nogil:
    """Bytes sent (> 0), -1 with errno set, -2 on timeout."""
    cdef ssize_t sent
    cdef ssize_t ready
    while True:
        sent = send(sockfd, buf, n, MSG_NOSIGNAL)
        if sent >= 0:
            return sent
        if errno != EAGAIN and errno != EWOULDBLOCK:
            return -1
        ready = _wait_fd(sockfd, POLLOUT, timeout_ms)
        if ready == 0:
            return -2
        if ready < 0:
            return -1


cdef ssize_t _sendfile_some(int sockfd, int fd, off_t *offset, size_t n, int timeout_ms) noexcept nogil:
    """Like _send_some, through sendfile(2); 0 when the file has ended."""
    cdef ssize_t sent
    cdef ssize_t ready
    while True:
        sent = p2p_sendfile(sockfd, fd, offset, n)
        if sent >= 0:
            return sent
        if errno != EAGAIN and errno != EWOULDBLOCK:
            return -1
        ready = _wait_fd(sockfd, POLLOUT, timeout_ms)
        if ready == 0:
            return -2
        if ready < 0:
            return -1


cdef long long _send_by_copy(int sockfd, int fd, long long offset, long long nbytes, int timeout_ms) except -1:
    """pread + send, for platforms and files where sendfile(2) does not work."""
    cdef long long sent = 0
    cdef Py_ssize_t size = <Py_ssize_t>min(<long long>RECV_BUFFER_BYTES, nbytes)
    cdef ssize_t got, out, pos
    cdef int err
    store = bytearray(size)
    cdef char *buf = PyByteArray_AS_STRING(store)
    while sent < nbytes:
        with nogil:
            got = pread(fd, buf, <size_t>min(<long long>size, nbytes - sent), offset + sent)
            err = errno
        if got < 0:
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            raise TransferError(f"reading the file failed after {sent} of {nbytes} bytes: {_strerror(err)}")
        if got == 0:
            raise TransferError(f"file ended after {sent} of {nbytes} bytes (changed while being sent?)")
        pos = 0
        while pos < got:
            with nogil:
                out = _send_some(sockfd, buf + pos, got - pos, timeout_ms)
                err = errno
            if out == -2:
                raise TransferError(f"timed out sending {nbytes} bytes")
            if out < 0:
                if err == EINTR:
                    PyErr_CheckSignals()
                    continue
                raise send_failed(err, _strerror(err))
            pos += out
        sent += got
    return sent


def send_from_file(sock, int fd, long long offset, long long nbytes):
    """Send exactly `nbytes` of file descriptor `fd`, from `offset`, to `sock` (see p2psync._twin)."""
    cdef long long sent = 0
    cdef off_t position = offset
    cdef ssize_t out
    cdef int sockfd, timeout_ms, err
    if nbytes < 0 or offset < 0:
        raise ValueError(f"negative offset {offset} or byte count {nbytes}")
    if not nbytes:
        return 0
    sockfd = sock.fileno()
    timeout_ms = _timeout_ms(sock)
    while sent < nbytes:
        with nogil:
            out = _sendfile_some(sockfd, fd, &position, <size_t>min(<long long>SENDFILE_CHUNK, nbytes - sent), timeout_ms)
            err = errno
        if out > 0:
            sent += out
        elif out == 0:
            raise TransferError(f"file ended after {sent} of {nbytes} bytes (changed while being sent?)")
        elif out == -2:
            raise TransferError(f"timed out sending {nbytes} bytes")
        elif err == EINTR:
            PyErr_CheckSignals()
        elif sent == 0 and (err == EINVAL or err == ENOSYS):
            # No sendfile for this platform or file: copy through a buffer.
            return _send_by_copy(sockfd, fd, offset, nbytes, timeout_ms)
        else:
            raise send_failed(err, _strerror(err))
    return nbytes


def link_new_files(int dir_fd, files):
    """Create each `(name, data, mtime[, mode])` in `dir_fd`, complete or not at all (see p2psync/_twin.py).

    The whole batch runs without the GIL: one release for many files.
    """
    cdef Py_ssize_t count = len(files)
    cdef Py_ssize_t i, done = 0
    cdef const char **names = NULL
    cdef const char **datas = NULL
    cdef size_t *sizes = NULL
    cdef long long *mtimes = NULL
    cdef int *modes = NULL
    cdef long long *results = NULL
    held = [tuple(item) for item in files]  # keeps every buffer alive while the GIL is released
    if not count:
        return []
    names = <const char **>malloc(count * sizeof(char *))
    datas = <const char **>malloc(count * sizeof(char *))
    sizes = <size_t *>malloc(count * sizeof(size_t))
    mtimes = <long long *>malloc(count * sizeof(long long))
    modes = <int *>malloc(count * sizeof(int))
    results = <long long *>malloc(count * sizeof(long long))
    try:
        if not (names and datas and sizes and mtimes and modes and results):
            raise MemoryError()
        for i in range(count):
            item = held[i]
            if len(item) == 3:
                name, data, mtime = item
                mode = -1
            else:
                name, data, mtime, mode = item
            if not isinstance(name, bytes) or not isinstance(data, bytes):
                raise TypeError("link_new_files wants (bytes name, bytes data, int mtime[, int mode]) tuples")
            names[i] = <bytes>name
            datas[i] = <bytes>data
            sizes[i] = len(<bytes>data)
            mtimes[i] = mtime
            modes[i] = mode
        with nogil:
            while done < count:
                results[done] = p2p_link_new_file(dir_fd, names[done], datas[done], sizes[done], mtimes[done], modes[done])
                done += 1
                if results[done - 1] < 0:
                    break
        return [results[i] for i in range(done)]
    finally:
        free(names)
        free(datas)
        free(sizes)
        free(mtimes)
        free(modes)
        free(results)



def read_small_file(int dir_fd, bytes name, long long max_bytes):
    """The whole reply to a request for a small file, read in one piece (see p2psync/_twin.py)."""
    cdef p2p_stat st, now
    cdef const char *path = name
    cdef char header[40]
    cdef int fd, hlen
    cdef long long got
    cdef char *body
    with nogil:
        fd = p2p_open_to_serve(dir_fd, path, &st)
    if fd < 0:
        raise OSError(-fd, strerror(-fd).decode(), name)
    try:
        if not st.regular or st.size > max_bytes:
            return None
        hlen = snprintf(header, sizeof(header), b"Content-Length: %lld\n", st.size)
        reply = PyBytes_FromStringAndSize(NULL, hlen + st.size)
        body = PyBytes_AS_STRING(reply)
        memcpy(body, header, hlen)
        with nogil:
            got = p2p_read_and_restat(fd, body + hlen, <size_t>st.size, &now)
        if got < 0:
            raise OSError(-got, strerror(<int>-got).decode())
        if got != st.size or now.size != st.size or now.mtime_ns != st.mtime_ns:
            raise TransferError("file changed while being sent; stopped after 0 bytes")
        return reply, st.size, st.mtime_ns, st.inode
    finally:
        close(fd)



# ---------------------------------------------------------------- chunking
# FastCDC as p2psync.chunking specifies it (and p2psync/_twin.py spells out):
# the same constants, loaded from that module once, and the same loop in C.

cdef uint64_t _GEAR[256]
cdef uint64_t _GEAR_LS[256]
cdef uint64_t _MASK_S = _chunking.MASK_S
cdef uint64_t _MASK_L = _chunking.MASK_L
cdef uint64_t _MASK_S_LS = _MASK_S << 1
cdef uint64_t _MASK_L_LS = _MASK_L << 1
cdef Py_ssize_t _MIN_CHUNK = _chunking.MIN_CHUNK
cdef Py_ssize_t _AVG_CHUNK = _chunking.AVG_CHUNK
cdef Py_ssize_t _MAX_CHUNK = _chunking.MAX_CHUNK

for _i in range(256):
    _GEAR[_i] = _chunking.GEAR[_i]
    _GEAR_LS[_i] = _GEAR[_i] << 1


cdef Py_ssize_t _cut(const uint8_t *data, Py_ssize_t remaining) noexcept nogil:
    """The length of the chunk at `data`, given `remaining` bytes from there."""
    cdef Py_ssize_t center = _AVG_CHUNK
    cdef Py_ssize_t pos, limit
    cdef uint64_t h = 0
    if remaining <= _MIN_CHUNK:
        return remaining
    if remaining > _MAX_CHUNK:
        remaining = _MAX_CHUNK
    elif remaining < center:
        center = remaining
    pos = _MIN_CHUNK // 2 * 2
    limit = center // 2 * 2
    while pos < limit:
        h = (h << 2) + _GEAR_LS[data[pos]]
        if not (h & _MASK_S_LS):
            return pos
        h = h + _GEAR[data[pos + 1]]
        if not (h & _MASK_S):
            return pos + 1
        pos += 2
    limit = remaining // 2 * 2
    while pos < limit:
        h = (h << 2) + _GEAR_LS[data[pos]]
        if not (h & _MASK_L_LS):
            return pos
        h = h + _GEAR[data[pos + 1]]
        if not (h & _MASK_L):
            return pos + 1
        pos += 2
    return remaining


cdef list _cut_all(const uint8_t *data, Py_ssize_t n, bint final):
    """Cut `n` bytes at `data` without the GIL: every chunk when `final`, else only
    those decided (while `MAX_CHUNK` bytes are ahead). Returns the lengths."""
    cdef Py_ssize_t most = n // _MIN_CHUNK + 2  # every chunk but the last is at least MIN_CHUNK
    cdef Py_ssize_t *lengths = <Py_ssize_t *>malloc(most * sizeof(Py_ssize_t))
    cdef Py_ssize_t count = 0, start = 0, length
    if lengths == NULL:
        raise MemoryError()
    try:
        with nogil:
            while start < n and (final or n - start >= _MAX_CHUNK):
                length = _cut(data + start, n - start)
                lengths[count] = length
                count += 1
                start += length
        return [lengths[i] for i in range(count)]
    finally:
        free(lengths)


def chunk_lengths(data):
    """The lengths of the chunks `data` is cut into, as a whole (see p2psync/_twin.py)."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _cut_all(<const uint8_t *>view.buf, view.len, True)
    finally:
        PyBuffer_Release(&view)


cdef class Chunker:
    """Cuts a stream fed in pieces exactly as `chunk_lengths` cuts it whole (see p2psync/_twin.py)."""

    cdef uint8_t *_buf
    cdef Py_ssize_t _cap, _start, _end

    def __cinit__(self):
        self._buf = NULL
        self._cap = self._start = self._end = 0

    def __dealloc__(self):
        free(self._buf)

    cdef int _append(self, const uint8_t *data, Py_ssize_t n) except -1:
        cdef Py_ssize_t held = self._end - self._start
        cdef uint8_t *grown
        if self._start:  # what was cut is dropped before growing
            memmove(self._buf, self._buf + self._start, held)
            self._start, self._end = 0, held
        if held + n > self._cap:
            grown = <uint8_t *>realloc(self._buf, held + n)
            if grown == NULL:
                raise MemoryError()
            self._buf, self._cap = grown, held + n
        memcpy(self._buf + held, data, n)
        self._end = held + n
        return 0

    cdef list _take(self, bint final):
        lengths = _cut_all(self._buf + self._start, self._end - self._start, final)
        for length in lengths:
            self._start += <Py_ssize_t>length
        return lengths

    def feed(self, data):
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._append(<const uint8_t *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return self._take(False)

    def finish(self):
        lengths = self._take(True)
        self._start = self._end = 0
        return lengths
