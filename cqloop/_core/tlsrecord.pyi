class TLSSession:
    """The record layer of one TLS session (compiled; see tlsrecord.pyx)."""
