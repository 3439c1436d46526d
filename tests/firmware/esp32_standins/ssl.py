"""Stand-in for ``ssl``: records each context (``contexts``); wrapping refuses an unverified one."""

PROTOCOL_TLS_CLIENT = 0
CERT_NONE = 0
CERT_REQUIRED = 2
contexts = []


class SSLContext:
    def __init__(self, proto):
        self.proto = proto
        self.verify_mode = CERT_NONE
        self.ca = None
        self.chain = None
        self.hostname = None
        contexts.append(self)

    def load_verify_locations(self, cafile=None, cadata=None):
        self.ca = cadata

    def load_cert_chain(self, cert, key):
        self.chain = (cert, key)

    def wrap_socket(self, sock, server_hostname=None):
        if self.verify_mode != CERT_REQUIRED:
            raise ValueError("would not verify")
        self.hostname = server_hostname
        return sock
