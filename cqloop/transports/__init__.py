"""cqloop.transports: TCP, Unix, datagram, pipe, TLS and subprocess transports (issues 3 and 4)."""
