"""Is a host one of this network's own? The one check behind live jobs'
callbacks (the server) and HLS pulls (the live worker): neither may reach
private, loopback, link-local, reserved, multicast or unspecified addresses
unless the deployment allows it."""
from __future__ import annotations

import ipaddress
import socket


def private_address(host: str, port: int | None = None) -> str | None:
    """The first address `host` resolves to that is not public, or None;
    OSError when it does not resolve."""
    for info in socket.getaddrinfo(host, port):
        addr = ipaddress.ip_address(info[4][0])
        if addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved or addr.is_multicast \
                or addr.is_unspecified:
            return str(addr)
    return None
