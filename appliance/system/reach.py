"""Why a TCP peer (the PLC) or a local port (the bus, OPC UA, metrics) cannot be used, in words.

pymodbus says only "cannot connect"; the operating system knows whether the address refused,
timed out or has no route, and that decides the fix (the PLC's Modbus server is off, the address
or cable is wrong, the subnet is not routed). Ports are tried by binding them the way the
service will, so "in use" means what `run` would meet.
"""

from __future__ import annotations

import errno
import socket

#: what each connect error usually means on a plant network, and where to look
_CONNECT_HINTS = {
    errno.ECONNREFUSED: "the address answers but nothing listens on that port: is the PLC's Modbus/TCP server "
                        "enabled, and is the port right (502 unless changed)?",
    errno.EHOSTUNREACH: "no route to the address: check the IP address, the cable and this PC's subnet",
    errno.ENETUNREACH: "the network is unreachable: this PC has no address on the PLC's subnet",
    errno.ETIMEDOUT: "no answer: a wrong IP address, a cable unplugged, or a firewall dropping the packets",
}


def connect_problem(host: str, port: int, timeout_s: float) -> str | None:
    """Why a TCP connection to host:port fails (None: it connects)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.gaierror as exc:
        return f"the name {host!r} does not resolve ({exc.strerror}): use the PLC's IP address"
    except TimeoutError:
        return f"no answer within {timeout_s:g} s: {_CONNECT_HINTS[errno.ETIMEDOUT]}"
    except OSError as exc:
        hint = _CONNECT_HINTS.get(exc.errno or 0, "")
        return f"{exc.strerror or exc}" + (f": {hint}" if hint else "")


def bind_problem(host: str, port: int) -> str | None:
    """Why the service could not listen on host:port (None: it can). `*` or an empty host is every address."""
    host = "0.0.0.0" if host in ("*", "") else host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"the address {host!r} does not resolve ({exc.strerror})"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            sock.bind(addr)
            sock.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} is in use (another program, or this station already running: "
                        f"`ss -ltnp 'sport = :{port}'` names it)")
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine (`ip -brief address` lists them)"
            if exc.errno == errno.EACCES:
                return f"port {port} needs privileges the service does not have: use a port above 1023"
            return f"cannot bind {host}:{port}: {exc.strerror or exc}"
    return None
