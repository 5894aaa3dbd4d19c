# cython: freethreading_compatible=False
"""SocketEnds: what a stream transport knows of its socket, the base of StreamTransport.

Owns the connected socket's fd from the transport's construction until connection_lost
closes it (`_open`), the socket object (asyncio's `_sock`; an accepted connection makes
none until asked, acceptor.pyx), and the extra info asyncio records about the socket:
"socket", "sockname" and "peername". asyncio fills these when the transport is made;
here they are made when get_extra_info first asks (SocketTransport.get_extra_info calls
fill_socket_info). Before the fd closes, the addresses nobody asked for are read raw
(_keep_socket_info, two getsockname-style calls and a small bytes object each, no
formatting), so that asked later they are what they were while it was open, as asyncio's
are; sockaddr.pyx formats them. Formatting both addresses at close cost 2,500
instructions of a connection that lives for one request.

The read and write paths (stream.pyx) use the fd; nothing here runs per message.
"""

import socket
from asyncio.trsock import TransportSocket

from cqloop._core.includes.system cimport close
from cqloop._core.watchers cimport FdWatcher
from cqloop._core.sockaddr cimport format_sockaddr, formats, raw_socket_name

cdef object _socket_class = socket.socket


cdef class SocketEnds(FdWatcher):
    """The socket of a stream transport, and its ends (see the module docstring)."""

    cdef int _close_socket(self) except -1:
        # The socket object, if one was made, closes the fd (and says it is closed to
        # whoever holds it); an accepted connection that never made one closes its fd.
        self._open = False
        sock = self._sock
        if sock is not None:
            self._sock = None
            self._closed_sock = sock
            sock.close()
        else:
            close(self.fd)
        return 0

    cdef int _keep_socket_info(self) except -1:
        # The fd is about to close: read the addresses get_extra_info has not been asked
        # for yet, raw (sockaddr.pyx formats them if they ever are), as asyncio's
        # transports keep them after close. A family sockaddr.pyx does not format is
        # asked of the socket object now.
        cdef dict extra = self._extra
        if "sockname" not in extra and self._sockname_raw is None:
            self._sockname_raw = raw_socket_name(self.fd, False)
            if self._sockname_raw is None:
                extra["sockname"] = None
        if "peername" not in extra and self._peername is None and self._peer_raw is None:
            self._peer_raw = raw_socket_name(self.fd, True)
            if self._peer_raw is None:
                extra["peername"] = None
        raw = self._sockname_raw if self._sockname_raw is not None else self._peer_raw
        if raw is not None and not formats(raw):
            self.fill_socket_info()
        return 0

    def socket_object(self):
        """The transport's socket.socket (asyncio's `_sock`), None once closed. An accepted
        connection has none until asked for (acceptor.pyx): it is made here, non-blocking,
        on the open fd."""
        if not self._open:
            return None
        return self._socket_object()

    cdef object _socket_object(self):
        # Open: the socket (made on first need for an accepted connection). Closed: the
        # closed socket object, made closed (detached from the old fd number) if there was
        # none, as asyncio's "socket" extra info names a closed socket after close.
        if self._sock is not None:
            return self._sock
        if not self._open:
            if self._closed_sock is None:
                # A socket object cannot be made on a closed fd: a new socket of the same
                # kind, closed at once, is what asyncio's closed one looks like (fd -1).
                # Out of fds, there is none to show (get_extra_info gives its default).
                try:
                    sock = _socket_class(self._family, self._type, self._proto)
                except OSError:
                    return None
                sock.close()
                self._closed_sock = sock
            return self._closed_sock
        sock = _socket_class(self._family, self._type, self._proto, self.fd)
        sock.setblocking(False)
        self._sock = sock
        return sock

    def fill_socket_info(self):
        """Put asyncio's "socket", "sockname" and "peername" in the extra info, those not
        there yet. The public transport asks when one is first wanted; until then the
        addresses stay raw (see sockaddr.pyx), read before the fd closes
        (_keep_socket_info), so that they outlive it as asyncio's do."""
        cdef dict extra = self._extra
        if "socket" not in extra:
            sock = self._socket_object()
            if sock is not None:
                extra["socket"] = TransportSocket(sock)
        if "sockname" not in extra:
            extra["sockname"] = self._address(False)
        if "peername" not in extra:
            if self._peername is not None:
                extra["peername"] = self._peername
                self._peername = None
            else:
                extra["peername"] = self._address(True)

    cdef object _address(self, bint peer):
        raw = self._peer_raw if peer else self._sockname_raw
        if raw is None and self._open:
            raw = raw_socket_name(self.fd, peer)
        if raw is not None:
            address = format_sockaddr(raw)
            if address is not NotImplemented:
                if peer:
                    self._peer_raw = None
                else:
                    self._sockname_raw = None
                return address
        # A family formatted by the socket module only (its transports hold a socket).
        sock = self._sock
        if sock is None:
            return None
        try:
            return sock.getpeername() if peer else sock.getsockname()
        except OSError:
            return None
