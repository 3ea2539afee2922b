"""Published ports and slirp4netns, for real: network namespaces, a port proxy, slirp4netns.

The proxy tests run echo servers inside a fresh network namespace (``unshare -n``) and talk to
them through the proxy from the host namespace, so they need root.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from soute.container.network import (
    SLIRP_DNS,
    SLIRP_GUEST_IP,
    Slirp,
    available,
    resolv_conf_for_slirp,
    resolv_conf_with,
)
from soute.container.ports import (
    PortBinding,
    PortProxy,
    exposed_ports,
    format_ports,
    parse_publish,
    port_lines,
)
from soute.errors import SouteError

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="network namespaces need root")
needs_slirp = pytest.mark.skipif(not available(), reason="slirp4netns is not installed")

B = PortBinding

# --- parse_publish -------------------------------------------------------------------------------

VALID = [
    ("80", [B("0.0.0.0", 0, 80, "tcp")]),
    ("80/tcp", [B("0.0.0.0", 0, 80, "tcp")]),
    ("53/udp", [B("0.0.0.0", 0, 53, "udp")]),
    ("53/UDP", [B("0.0.0.0", 0, 53, "udp")]),
    ("8080:80", [B("0.0.0.0", 8080, 80, "tcp")]),
    ("0:80", [B("0.0.0.0", 0, 80, "tcp")]),
    (":80", [B("0.0.0.0", 0, 80, "tcp")]),  # empty parts are defaults, as with docker
    ("::80", [B("0.0.0.0", 0, 80, "tcp")]),
    ("5353:53/udp", [B("0.0.0.0", 5353, 53, "udp")]),
    ("127.0.0.1:8080:80", [B("127.0.0.1", 8080, 80, "tcp")]),
    ("127.0.0.1::80", [B("127.0.0.1", 0, 80, "tcp")]),
    ("127.0.0.1::53/udp", [B("127.0.0.1", 0, 53, "udp")]),
    ("[::1]:8080:80", [B("::1", 8080, 80, "tcp")]),
    ("[::]::80", [B("::", 0, 80, "tcp")]),
    ("[0:0::1]:8080:80/udp", [B("::1", 8080, 80, "udp")]),
    ("::1:8080:80", [B("::1", 8080, 80, "tcp")]),  # unbracketed, still unambiguous
    ("65535:65535", [B("0.0.0.0", 65535, 65535, "tcp")]),
    (
        "8000-8001:80-81",
        [B("0.0.0.0", 8000, 80, "tcp"), B("0.0.0.0", 8001, 81, "tcp")],
    ),
    (
        "127.0.0.1:8000-8002:90-92/udp",
        [B("127.0.0.1", 8000 + i, 90 + i, "udp") for i in range(3)],
    ),
    ("80-82", [B("0.0.0.0", 0, 80 + i, "tcp") for i in range(3)]),
    ("127.0.0.1::80-81", [B("127.0.0.1", 0, 80, "tcp"), B("127.0.0.1", 0, 81, "tcp")]),
    ("8080-8080:80-80", [B("0.0.0.0", 8080, 80, "tcp")]),
]

INVALID = [
    ("", "container port is missing"),
    ("80:abc", "not a port"),
    ("abc", "not a port"),
    ("8080:", "container port is missing"),
    ("0", "out of range"),
    ("65536", "out of range"),
    ("8080:65536", "out of range"),
    ("70000:80", "out of range"),
    ("-1:80", "not a port"),
    ("+80", "not a port"),
    (" 80", "not a port"),
    ("80/sctp", "protocol"),
    ("80/", "protocol"),
    ("80/tcp/udp", "protocol"),
    ("81-80", "ends before"),
    ("80-", "not a port"),
    ("8000-8001:80", "picking one host port"),
    ("8000:80-81", "same length"),
    ("8000-8002:80-81", "same length"),
    ("1.2.3:8080:80", "not an IP"),
    ("localhost:8080:80", "not an IP"),
    ("[::1:8080:80", "not an IP"),
    ("::8080:80", "not an IP"),
    ("1.2.3.4:::80", "not an IP"),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_parse_publish_valid(text: str, expected: list[PortBinding]) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize(("text", "why"), INVALID, ids=[repr(t) for t, _ in INVALID])
def test_parse_publish_invalid(text: str, why: str | None) -> None:
    with pytest.raises(SouteError) as caught:
        parse_publish(text)
    message = str(caught.value)
    assert message.startswith(
        f'invalid publish spec "{text}": expected [IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]'
    )
    if why is not None:
        assert why in message


def test_parse_publish_message_example() -> None:
    with pytest.raises(SouteError) as caught:
        parse_publish("80:abc")
    assert caught.value.message == (
        'invalid publish spec "80:abc": expected [IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]'
    )


# --- exposed_ports -------------------------------------------------------------------------------


def test_exposed_ports_dict_and_list() -> None:
    config = {"80/tcp": {}, "53/udp": {}, "8080": {}, "443/TCP": {}}
    assert exposed_ports(config) == [(53, "udp"), (80, "tcp"), (443, "tcp"), (8080, "tcp")]
    assert exposed_ports(["80/tcp", "80/udp", "80"]) == [(80, "tcp"), (80, "udp")]
    assert exposed_ports({}) == []
    assert exposed_ports([]) == []


def test_exposed_ports_ranges_and_other_protocols() -> None:
    assert exposed_ports(["8000-8002/tcp"]) == [(8000, "tcp"), (8001, "tcp"), (8002, "tcp")]
    # sctp cannot be proxied: skipped, not an error that would stop the container.
    assert exposed_ports(["132/sctp", "80/tcp"]) == [(80, "tcp")]


@pytest.mark.parametrize("key", ["http/tcp", "0/tcp", "70000", "", "90-80/tcp", "-1"])
def test_exposed_ports_invalid(key: str) -> None:
    with pytest.raises(SouteError, match="invalid exposed port"):
        exposed_ports([key])


# --- display -------------------------------------------------------------------------------------


def test_format_ports() -> None:
    bindings = [B("0.0.0.0", 18080, 80, "tcp"), B("0.0.0.0", 32768, 443, "tcp")]
    assert format_ports(bindings) == "0.0.0.0:18080->80/tcp, 0.0.0.0:32768->443/tcp"
    assert format_ports([]) == ""
    ranged = [B("0.0.0.0", 8000, 80, "tcp"), B("0.0.0.0", 8001, 81, "tcp"),
              B("0.0.0.0", 8002, 81, "udp"), B("::1", 9000, 90, "udp")]
    assert format_ports(ranged) == (
        "0.0.0.0:8000-8001->80-81/tcp, 0.0.0.0:8002->81/udp, [::1]:9000->90/udp"
    )


def test_port_lines() -> None:
    bindings = [B("0.0.0.0", 32768, 443, "tcp"), B("0.0.0.0", 18080, 80, "tcp"),
                B("::", 18080, 80, "tcp"), B("127.0.0.1", 5353, 53, "udp")]
    assert port_lines(bindings) == [
        "53/udp -> 127.0.0.1:5353",
        "80/tcp -> 0.0.0.0:18080",
        "80/tcp -> [::]:18080",
        "443/tcp -> 0.0.0.0:32768",
    ]


# --- the proxy, against echo servers in a real network namespace --------------------------------

TCP_PORT = 7000
UDP_PORT = 7001
DEAD_PORT = 7002  # nothing listens there

ECHO_SERVERS = textwrap.dedent(
    f"""
    import socket, sys, threading

    def echo(conn):
        # Echo until EOF, then close: shows half-close works end to end.
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    tcp = socket.create_server(("127.0.0.1", {TCP_PORT}))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", {UDP_PORT}))

    def serve_udp():
        while True:
            data, peer = udp.recvfrom(65536)
            udp.sendto(b"udp:" + data, peer)

    threading.Thread(target=serve_udp, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
    """
)


@pytest.fixture
def echo_netns() -> Iterator[int]:
    """The pid of a process in a fresh network namespace running echo servers on 127.0.0.1."""
    script = 'ip link set lo up && exec "$0" -c "$1"'
    proc = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", script, sys.executable, ECHO_SERVERS],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", "the echo servers did not start"
        yield proc.pid  # `exec` twice: the pid is python's, in the new namespace
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def listening_ports() -> set[tuple[str, int]]:
    """(proto, port) of every listening TCP socket and bound UDP socket of the host namespace."""
    found: set[tuple[str, int]] = set()
    for proto, name in (("tcp", "tcp"), ("tcp", "tcp6"), ("udp", "udp"), ("udp", "udp6")):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                state = fields[3]
                if proto == "udp" or state == "0A":  # 0A: LISTEN
                    found.add((proto, int(fields[1].rsplit(":", 1)[1], 16)))
    return found


def open_sockets() -> set[str]:
    """This process's open sockets (``socket:[inode]``)."""
    links = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone already
            links.add(os.readlink(f"/proc/self/fd/{fd}"))
    return {link for link in links if link.startswith("socket:")}


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def proxy(echo_netns: int) -> Iterator[tuple[PortProxy, dict[int, int]]]:
    """A started proxy to the echo servers; also maps container port → allocated host port."""
    proxy = PortProxy(
        [
            B("127.0.0.1", 0, TCP_PORT, "tcp"),
            B("127.0.0.1", 0, UDP_PORT, "udp"),
            B("127.0.0.1", 0, DEAD_PORT, "tcp"),
        ],
        udp_timeout=2.0,
    )
    bound = proxy.bind()
    try:
        assert all(b.host_port != 0 for b in bound)
        assert [b.container_port for b in bound] == [TCP_PORT, UDP_PORT, DEAD_PORT]
        proxy.start(f"/proc/{echo_netns}/ns/net")
        yield proxy, {b.container_port: b.host_port for b in bound}
    finally:
        proxy.close()


@needs_root
def test_proxy_tcp_round_trip_and_half_close(proxy: tuple[PortProxy, dict[int, int]]) -> None:
    _, ports = proxy
    with socket.create_connection(("127.0.0.1", ports[TCP_PORT]), timeout=10) as conn:
        conn.sendall(b"hello")
        assert conn.recv(100) == b"hello"
        # Half-close: everything sent before our EOF still comes back, then the server's EOF.
        payload = os.urandom(3 * 1024 * 1024)
        sender = threading.Thread(target=lambda: (conn.sendall(payload),
                                                  conn.shutdown(socket.SHUT_WR)))
        sender.start()
        assert recv_all(conn) == payload
        sender.join()


@needs_root
def test_proxy_concurrent_tcp(proxy: tuple[PortProxy, dict[int, int]]) -> None:
    _, ports = proxy
    conns = [socket.create_connection(("127.0.0.1", ports[TCP_PORT]), timeout=10)
             for _ in range(20)]
    try:
        # All open at once, answered in reverse order: no connection waits on another.
        for i, conn in enumerate(conns):
            conn.sendall(f"message {i}".encode())
        for i, conn in reversed(list(enumerate(conns))):
            assert conn.recv(100) == f"message {i}".encode()
        for conn in conns:
            conn.shutdown(socket.SHUT_WR)
            assert recv_all(conn) == b""
    finally:
        for conn in conns:
            conn.close()


@needs_root
def test_proxy_udp_round_trip(proxy: tuple[PortProxy, dict[int, int]]) -> None:
    _, ports = proxy
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for round_ in range(2):
            for i, client in enumerate(clients):
                client.settimeout(5)
                client.sendto(f"ping {i} {round_}".encode(), ("127.0.0.1", ports[UDP_PORT]))
            # Each reply goes back to the client that asked.
            for i, client in enumerate(clients):
                data, peer = client.recvfrom(100)
                assert data == f"udp:ping {i} {round_}".encode()
                assert peer == ("127.0.0.1", ports[UDP_PORT])
    finally:
        for client in clients:
            client.close()


@needs_root
def test_proxy_udp_flow_survives_idle_timeout(proxy: tuple[PortProxy, dict[int, int]]) -> None:
    _, ports = proxy
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(b"one", ("127.0.0.1", ports[UDP_PORT]))
        assert client.recv(100) == b"udp:one"
        time.sleep(2.5)  # past udp_timeout: the flow is dropped, a new one is made on demand
        client.sendto(b"two", ("127.0.0.1", ports[UDP_PORT]))
        assert client.recv(100) == b"udp:two"


@needs_root
def test_proxy_no_listener_inside_closes_client(
    proxy: tuple[PortProxy, dict[int, int]],
) -> None:
    _, ports = proxy
    with (
        socket.create_connection(("127.0.0.1", ports[DEAD_PORT]), timeout=5) as conn,
        contextlib.suppress(ConnectionResetError),  # a reset is a close too
    ):
        assert conn.recv(100) == b""


@needs_root
def test_proxy_close_frees_ports(echo_netns: int) -> None:
    proxy = PortProxy([B("127.0.0.1", 0, TCP_PORT, "tcp"), B("127.0.0.1", 0, UDP_PORT, "udp")])
    tcp, udp = proxy.bind()
    proxy.start(f"/proc/{echo_netns}/ns/net")
    conn = socket.create_connection(("127.0.0.1", tcp.host_port), timeout=5)
    conn.sendall(b"x")
    assert conn.recv(10) == b"x"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(b"y", ("127.0.0.1", udp.host_port))
        assert client.recv(10) == b"udp:y"
    # Only the socket factory thread moved into the container's namespace.
    container_ns = os.readlink(f"/proc/{echo_netns}/ns/net")
    host_ns = os.readlink("/proc/self/ns/net")
    assert container_ns != host_ns
    where = {t.name: os.readlink(f"/proc/self/task/{t.native_id}/ns/net")
             for t in threading.enumerate() if t.is_alive()}
    assert {name for name, ns in where.items() if ns == container_ns} == {
        f"soute-netns /proc/{echo_netns}/ns/net"
    }
    assert all(ns in (host_ns, container_ns) for ns in where.values())
    proxy.close()
    proxy.close()  # idempotent
    # The open connection was ended by close(), not left dangling.
    conn.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        assert recv_all(conn) == b""
    conn.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("soute-") and t.is_alive()]
    # SO_REUSEADDR as any server (and the proxy) would: the closed connection may be in TIME_WAIT.
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", tcp.host_port))
        again.listen()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", udp.host_port))


@needs_root
def test_proxy_port_in_use(echo_netns: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        before = open_sockets()
        # The first binding succeeds, the second fails: the first must be closed again.
        proxy = PortProxy([B("127.0.0.1", free_port, TCP_PORT, "tcp"),
                           B("127.0.0.1", port, TCP_PORT, "tcp")])
        with pytest.raises(SouteError) as caught:
            proxy.bind()
        assert str(caught.value) == f"Bind for 127.0.0.1:{port} failed: port is already allocated"
        assert ("tcp", free_port) not in listening_ports()
        assert open_sockets() == before
        proxy.close()


@needs_root
def test_proxy_bad_namespace() -> None:
    with PortProxy([B("127.0.0.1", 0, 80, "tcp")]) as proxy:
        proxy.bind()
        with pytest.raises(SouteError, match="cannot open the network namespace"):
            proxy.start("/proc/999999999/ns/net")
        # A file that is not a network namespace: setns refuses it.
        with pytest.raises(SouteError, match="cannot enter the network namespace"):
            proxy.start("/proc/self/ns/uts")


def test_proxy_bind_error_other_than_in_use() -> None:
    # 192.0.2.0/24 is TEST-NET-1... but may be configured; 203.0.113.0/24 (TEST-NET-3) is not.
    proxy = PortProxy([B("203.0.113.77", 0, 80, "tcp")])
    with pytest.raises(SouteError, match=r"Bind for 203\.0\.113\.77:0 failed: "):
        proxy.bind()
    proxy.close()


# --- slirp4netns ---------------------------------------------------------------------------------


@pytest.fixture
def netns_pid(lone_netns: subprocess.Popen[bytes]) -> int:
    """The pid of a process alone in a fresh network namespace."""
    return lone_netns.pid


def in_netns(pid: int, code: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=timeout,
    )


def host_address() -> str | None:
    """The host's own non-loopback IPv4 address, from the default route."""
    route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True,
                           text=True)
    words = route.stdout.split()
    return words[words.index("src") + 1] if "src" in words else None


@needs_root
@needs_slirp
def test_slirp_configures_tap0_and_stops(netns_pid: int) -> None:
    marker_r, marker_w = os.pipe()
    os.set_inheritable(marker_r, True)
    slirp = Slirp()
    slirp.start(netns_pid)
    try:
        assert slirp.process is not None and slirp.process.poll() is None
        shown = subprocess.run(["nsenter", "-t", str(netns_pid), "-n", "ip", "-4", "addr",
                                "show", "tap0"], capture_output=True, text=True, check=True)
        assert f"inet {SLIRP_GUEST_IP}/24" in shown.stdout
        assert "mtu 65520" in shown.stdout
        # The child got the ready and exit fds and nothing else of ours, inheritable or not.
        theirs = {os.readlink(f"/proc/{slirp.process.pid}/fd/{fd}")
                  for fd in os.listdir(f"/proc/{slirp.process.pid}/fd")}
        assert os.readlink(f"/proc/self/fd/{marker_r}") not in theirs
    finally:
        slirp.stop()
        os.close(marker_r)
        os.close(marker_w)
    assert slirp.process.returncode is not None
    slirp.stop()  # idempotent


@needs_root
@needs_slirp
def test_slirp_outbound_tcp(netns_pid: int) -> None:
    address = host_address()
    if address is None or address.startswith("127."):
        pytest.skip("the host has no non-loopback IPv4 address to connect to")
    server = socket.create_server(("0.0.0.0", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(b"hi from the host")

    threading.Thread(target=answer, daemon=True).start()
    try:
        with Slirp() as slirp:
            slirp.start(netns_pid)
            connect = (
                "import socket\n"
                "c = socket.create_connection(({!r}, {}), timeout=5)\n"
                "print(c.recv(100).decode())\n"
            )
            result = in_netns(netns_pid, connect.format(address, port))
            assert result.stdout.strip() == "hi from the host", result.stderr
            # By design the host's loopback is not reachable through the gateway 10.0.2.2.
            result = in_netns(netns_pid, connect.format("10.0.2.2", port))
            assert result.returncode != 0
    finally:
        server.close()


def host_dns_answers() -> bool:
    """Whether the host's first nameserver answers a query (CI may have no DNS at all)."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return False
    servers = [line.split()[1] for line in lines if line.startswith("nameserver ")]
    if not servers:
        return False
    with socket.socket(socket.AF_INET6 if ":" in servers[0] else socket.AF_INET,
                       socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        try:
            sock.sendto(DNS_QUERY, (servers[0], 53))
            return sock.recv(2048)[:2] == DNS_QUERY[:2]
        except OSError:
            return False


# A query for "example.org" A: any answer (even NXDOMAIN) shows the forwarding works.
DNS_QUERY = struct.pack(">HHHHHH", 0x5E7A, 0x0100, 1, 0, 0, 0) + b"\x07example\x03org\x00" + \
    struct.pack(">HH", 1, 1)


@needs_root
@needs_slirp
def test_slirp_dns_forwarder(netns_pid: int) -> None:
    if not host_dns_answers():
        pytest.skip("the host's DNS server does not answer: nothing to forward to")
    with Slirp() as slirp:
        slirp.start(netns_pid)
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.settimeout(5)\n"
            f"s.sendto({DNS_QUERY!r}, ({SLIRP_DNS!r}, 53))\n"
            "print(s.recv(2048)[:2].hex())\n"
        )
        result = in_netns(netns_pid, code)
        assert result.stdout.strip() == DNS_QUERY[:2].hex(), result.stderr


@needs_slirp
def test_slirp_invalid_pid() -> None:
    with pytest.raises(SouteError, match="no such process"):
        Slirp().start(999999999)


def fake_slirp(tmp_path: Path, body: str) -> str:
    """A stand-in for slirp4netns, to reach the failures the real one seldom shows."""
    fake = tmp_path / "slirp4netns"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    return str(fake)


def test_slirp_failure_includes_stderr(tmp_path: Path) -> None:
    binary = fake_slirp(tmp_path, "echo 'open(/proc/1/ns/net): Permission denied' >&2; exit 1")
    with pytest.raises(SouteError) as caught:
        Slirp(binary=binary).start(os.getpid())
    message = str(caught.value)
    assert "exited with status 1" in message
    assert "open(/proc/1/ns/net): Permission denied" in message


def test_slirp_ready_timeout(tmp_path: Path) -> None:
    binary = fake_slirp(tmp_path, "echo 'still thinking' >&2; exec sleep 30")
    slirp = Slirp(binary=binary, ready_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(SouteError, match=r"did not set up .* within 0\.5s: still thinking"):
        slirp.start(os.getpid())
    assert time.monotonic() - started < 10
    # The stuck process was ended, not left behind.
    assert slirp.process is not None and slirp.process.returncode is not None


def test_slirp_missing_binary() -> None:
    slirp = Slirp(binary="soute-no-such-slirp4netns")
    assert not slirp.available()
    with pytest.raises(SouteError, match="not found"):
        slirp.start(os.getpid())


def test_resolv_conf_for_slirp(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text(
        "# from DHCP\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n"
        "search example.com corp.example\noptions edns0 trust-ad\n"
    )
    assert resolv_conf_for_slirp(host) == (
        b"nameserver 10.0.2.3\nsearch example.com corp.example\noptions edns0 trust-ad\n"
    )
    assert resolv_conf_for_slirp(tmp_path / "missing") == b"nameserver 10.0.2.3\n"


def test_resolv_conf_with_options(tmp_path: Path) -> None:
    """docker's file with --dns, --dns-search or --dns-option: search, nameservers, options;
    what is not given comes from the file the container would get (nameservers) or from the
    host's last search and options lines."""
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 192.0.2.53\nsearch old.example\nsearch corp.example lan\n"
                    "domain corp.example\noptions edns0\noptions ndots:3 timeout:2\n")
    base = b"nameserver 10.0.2.3\nsearch corp.example lan\n"
    assert resolv_conf_with(base, servers=["192.0.2.1"], host_resolv=host) == (
        b"search corp.example lan\nnameserver 192.0.2.1\noptions ndots:3 timeout:2\n")
    assert resolv_conf_with(base, search=["a.example"], options=["debug"], host_resolv=host) == (
        b"search a.example\nnameserver 10.0.2.3\noptions debug\n")
    assert resolv_conf_with(base, search=["."], host_resolv=host) == (
        b"nameserver 10.0.2.3\noptions ndots:3 timeout:2\n")
    assert resolv_conf_with(b"", options=["ndots:1"], host_resolv=tmp_path / "missing") == (
        b"options ndots:1\n")
