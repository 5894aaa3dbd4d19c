# Linux system calls the standard library does not expose: signalfd and inotify (for
# cqloop.signal and cqloop.notify). Only declarations live here; see osext.pyx.

from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t


cdef extern from "<string.h>" nogil:
    size_t strnlen(const char *s, size_t maxlen)


cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    int sigemptyset(sigset_t *set)
    int sigaddset(sigset_t *set, int signum)


cdef extern from "<sys/signalfd.h>" nogil:
    struct signalfd_siginfo:
        uint32_t ssi_signo
        int32_t ssi_errno
        int32_t ssi_code
        uint32_t ssi_pid
        uint32_t ssi_uid
        int32_t ssi_fd
        uint32_t ssi_tid
        uint32_t ssi_band
        uint32_t ssi_overrun
        uint32_t ssi_trapno
        int32_t ssi_status
        int32_t ssi_int
        uint64_t ssi_ptr
        uint64_t ssi_utime
        uint64_t ssi_stime
        uint64_t ssi_addr
        uint16_t ssi_addr_lsb

    enum:
        SFD_CLOEXEC
        SFD_NONBLOCK

    int signalfd(int fd, const sigset_t *mask, int flags)


cdef extern from "<sys/inotify.h>" nogil:
    struct inotify_event:
        int wd
        uint32_t mask
        uint32_t cookie
        uint32_t len
        char name[1]

    enum:
        IN_CLOEXEC
        IN_NONBLOCK
        IN_ACCESS
        IN_MODIFY
        IN_ATTRIB
        IN_CLOSE_WRITE
        IN_CLOSE_NOWRITE
        IN_OPEN
        IN_MOVED_FROM
        IN_MOVED_TO
        IN_MOVE
        IN_CREATE
        IN_DELETE
        IN_DELETE_SELF
        IN_MOVE_SELF
        IN_UNMOUNT
        IN_Q_OVERFLOW
        IN_IGNORED
        IN_ONLYDIR
        IN_DONT_FOLLOW
        IN_EXCL_UNLINK
        IN_MASK_ADD
        IN_ISDIR
        IN_ONESHOT

    int inotify_init1(int flags)
    int inotify_add_watch(int fd, const char *pathname, uint32_t mask)
    int inotify_rm_watch(int fd, int wd)
