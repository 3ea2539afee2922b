"""Published ports: ``-p``/``-P`` parsing, docker-style display and the user-space port proxy.

A container's network namespace has only loopback (plus slirp4netns's tap0), and there is no
bridge nor iptables. So a published port is a socket the monitor process listens on in the host
namespace; each connection (or UDP client) is forwarded to ``127.0.0.1:<container port>`` through
a socket created *inside* the container's namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import math
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, replace

from soute._threads import start_without_signals
from soute.errors import SouteError

__all__ = [
    "PortBinding",
    "PortProxy",
    "exposed_ports",
    "format_ports",
    "parse_publish",
    "port_lines",
]

PROTOCOLS = ("tcp", "udp")
_PUBLISH_FORM = "[IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]"
_CLONE_NEWNET = 0x40000000
_BUFSIZE = 65536
_CONNECT_TIMEOUT = 10.0
_FACTORY_TIMEOUT = 10.0
_JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class PortBinding:
    """One published port: ``host_ip:host_port`` on the host to ``container_port`` inside.

    ``host_port`` 0 means "any free port" until :meth:`PortProxy.bind` resolves it.
    """

    host_ip: str
    host_port: int
    container_port: int
    proto: str  # "tcp" | "udp"


# --- parsing -------------------------------------------------------------------------------------


def _bad_publish(text: str, why: str | None = None) -> SouteError:
    message = f'invalid publish spec "{text}": expected {_PUBLISH_FORM}'
    return SouteError(message, why)


def _port_range(part: str, text: str, *, allow_zero: bool) -> tuple[int, int]:
    """``"80"`` → (80, 80), ``"8000-8001"`` → (8000, 8001); raises naming the whole spec."""
    low_text, dash, high_text = part.partition("-")
    bounds: list[int] = []
    for piece in (low_text, high_text) if dash else (low_text,):
        # isdecimal() rejects signs, spaces and non-ASCII digits that int() would accept.
        if not (piece.isascii() and piece.isdecimal()):
            raise _bad_publish(text, f'"{part}" is not a port or port range')
        value = int(piece)
        if value > 65535 or (value == 0 and not allow_zero):
            raise _bad_publish(text, f"port {piece} is out of range 1-65535")
        bounds.append(value)
    low, high = bounds[0], bounds[-1]
    if low > high:
        raise _bad_publish(text, f'range "{part}" ends before it starts')
    if dash and low == 0:
        raise _bad_publish(text, "port 0 cannot start a range")
    return low, high


def _host_ip(part: str, text: str) -> str:
    """The host address, IPv6 possibly in brackets, normalised (``[::1]`` → ``::1``)."""
    raw = part[1:-1] if part.startswith("[") and part.endswith("]") else part
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise _bad_publish(text, f'"{part}" is not an IP address') from None


def parse_publish(text: str) -> list[PortBinding]:
    """Parses one ``-p`` value into its bindings (several for a port range).

    Forms, each optionally ending in ``/tcp`` or ``/udp``: ``CONTAINERPORT``,
    ``HOSTPORT:CONTAINERPORT``, ``IP:HOSTPORT:CONTAINERPORT``, ``IP::CONTAINERPORT``; IPv6
    addresses in brackets (``[::1]:8080:80``). Ranges must have equal lengths on both sides;
    a lone container range gets a free host port for each of its ports.
    """
    ports, slash, proto = text.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in PROTOCOLS:
        raise _bad_publish(text, f'protocol "{proto}" is not supported')
    # The container port is after the last colon, the host port before it, the address is
    # everything earlier: an unbracketed IPv6 address still parses as long as it is followed by
    # both the host and the container port. Empty parts are defaults (":80" and "::80" = "80").
    parts = ports.split(":")
    container_part = parts[-1]
    host_part = parts[-2] if len(parts) >= 2 else ""
    ip_part = ":".join(parts[:-2]) if len(parts) >= 3 else ""
    if not container_part:
        raise _bad_publish(text, "the container port is missing")
    host_ip = _host_ip(ip_part, text) if ip_part else "0.0.0.0"
    c_low, c_high = _port_range(container_part, text, allow_zero=False)
    count = c_high - c_low + 1
    if host_part:
        h_low, h_high = _port_range(host_part, text, allow_zero=True)
        if h_high - h_low + 1 != count:
            hint = (
                "picking one host port from a range is not supported: give a single host port"
                if count == 1
                else "the host and container ranges must have the same length"
            )
            raise _bad_publish(text, hint)
        # "0:80-81" would be one free port for several container ports: each needs its own.
        host_ports = [0] * count if h_low == 0 else list(range(h_low, h_high + 1))
    else:
        host_ports = [0] * count
    return [
        PortBinding(host_ip, host_port, c_low + i, proto)
        for i, host_port in enumerate(host_ports)
    ]


def exposed_ports(config_exposed: dict[str, object] | list[str]) -> list[tuple[int, str]]:
    """The ``(port, proto)`` pairs of an image config's ``ExposedPorts`` keys, sorted.

    Keys look like ``"80/tcp"``, ``"53/udp"`` or ``"8080"`` (tcp); ranges (``"8000-8001/tcp"``)
    are expanded. For ``-P`` each gets host port 0 on 0.0.0.0.
    """
    found: set[tuple[int, str]] = set()
    for key in config_exposed:
        port_text, slash, proto = str(key).partition("/")
        proto = proto.lower() if slash else "tcp"
        if proto not in PROTOCOLS:
            # sctp and the like cannot be proxied here: skipping beats refusing the whole image.
            continue
        low_text, dash, high_text = port_text.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise SouteError(
                f'invalid exposed port "{key}" in the image config', "expected PORT[/tcp|udp]"
            ) from None
        if not 1 <= low <= high <= 65535:
            raise SouteError(
                f'invalid exposed port "{key}" in the image config', "ports are 1-65535"
            )
        found.update((port, proto) for port in range(low, high + 1))
    return sorted(found)


# --- display -------------------------------------------------------------------------------------


def _host_address(ip: str, port: int) -> str:
    # Brackets keep an IPv6 address and its port apart (docker's newer output does the same).
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def format_ports(bindings: Iterable[PortBinding]) -> str:
    """``docker ps``'s PORTS column: ``0.0.0.0:18080->80/tcp, 0.0.0.0:8000-8001->80-81/tcp``.

    Runs of bindings where both ports go up by one (a published range) are shown as one range.
    """
    runs: list[list[PortBinding]] = []
    for binding in bindings:
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and last.host_ip == binding.host_ip
            and last.proto == binding.proto
            and binding.host_port == last.host_port + 1
            and binding.container_port == last.container_port + 1
        ):
            runs[-1].append(binding)
        else:
            runs.append([binding])
    shown = []
    for run in runs:
        first, last = run[0], run[-1]
        host = _host_address(first.host_ip, 0).rsplit(":", 1)[0]
        shown.append(
            f"{host}:{_span(first.host_port, last.host_port)}"
            f"->{_span(first.container_port, last.container_port)}/{first.proto}"
        )
    return ", ".join(shown)


def port_lines(bindings: Iterable[PortBinding]) -> list[str]:
    """``docker port``'s lines, by container port: ``80/tcp -> 0.0.0.0:18080``."""
    ordered = sorted(bindings, key=lambda b: (b.container_port, b.proto))
    return [
        f"{b.container_port}/{b.proto} -> {_host_address(b.host_ip, b.host_port)}"
        for b in ordered
    ]


# --- the proxy -----------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _setns_net(fd: int) -> None:
    """Moves the *calling thread* into the network namespace ``fd`` refers to."""
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


_SocketRequest = tuple[socket.SocketKind, Future[socket.socket]]


class _NetnsSocketFactory:
    """A thread that lives in the container's network namespace and only creates sockets there.

    setns(CLONE_NEWNET) moves just the calling thread and a socket keeps the namespace it was
    created in, so sockets made here connect inside the container even when other threads use
    them. This thread never does anything else (and never starts threads: they would inherit
    its namespace).
    """

    def __init__(self, netns: str) -> None:
        try:
            self._fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise SouteError(
                f"cannot open the network namespace {netns}: {err.strerror}",
                "is the container still running?",
            ) from None
        self._netns = netns
        self._requests: queue.Queue[_SocketRequest | None] = queue.Queue()
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=f"soute-netns {netns}", daemon=True
        )
        start_without_signals(self._thread)
        try:
            ready.result(timeout=_FACTORY_TIMEOUT)
        except OSError as err:
            self._thread.join(_JOIN_TIMEOUT)
            os.close(self._fd)
            raise SouteError(
                f"cannot enter the network namespace {netns}: {err.strerror or 'timed out'}"
            ) from None

    def _serve(self, ready: Future[None]) -> None:
        try:
            _setns_net(self._fd)
        except OSError as err:
            ready.set_exception(err)
            return
        ready.set_result(None)
        while (request := self._requests.get()) is not None:
            kind, result = request
            try:
                result.set_result(socket.socket(socket.AF_INET, kind))
            except OSError as err:
                result.set_exception(err)

    def socket(self, kind: socket.SocketKind) -> socket.socket:
        """A new IPv4 socket of ``kind`` in the container's namespace."""
        if not self._thread.is_alive():
            raise OSError(errno.ESHUTDOWN, "the namespace socket factory has stopped")
        result: Future[socket.socket] = Future()
        self._requests.put((kind, result))
        return result.result(timeout=_FACTORY_TIMEOUT)

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(_JOIN_TIMEOUT)
        os.close(self._fd)


class _UdpFlow:
    """One UDP client of a published port and its upstream socket in the container."""

    def __init__(self, upstream: socket.socket) -> None:
        self.upstream = upstream
        self.last = time.monotonic()


class PortProxy:
    """Forwards published host ports into a container's network namespace.

    :meth:`bind` opens the listening sockets (in the caller's namespace, normally the host's),
    :meth:`start` forwards them to ``127.0.0.1:<container port>`` inside ``netns`` from daemon
    threads, :meth:`close` stops it all and frees the host ports.
    """

    def __init__(self, bindings: list[PortBinding], *, udp_timeout: float = 90.0) -> None:
        self.bindings = list(bindings)
        self.udp_timeout = udp_timeout  # idle UDP clients are forgotten after this long
        self._listeners: list[tuple[PortBinding, socket.socket]] = []
        self._factory: _NetnsSocketFactory | None = None
        # Closing the write end makes the read end readable for good: every wait polls it too,
        # so one close wakes every thread.
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()  # live forwarded connections' sockets
        self._closed = False

    def __enter__(self) -> PortProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lifecycle

    def bind(self) -> list[PortBinding]:
        """Listens on every binding's host address; returns them with port 0 resolved."""
        if self._closed or self._listeners:
            raise RuntimeError("PortProxy.bind() is called once, before close()")
        bound: list[PortBinding] = []
        try:
            for binding in self.bindings:
                sock = self._listen(binding)
                real = replace(binding, host_port=sock.getsockname()[1])
                self._listeners.append((real, sock))
                bound.append(real)
        except BaseException:
            self._close_listeners()
            raise
        self.bindings = bound
        return list(bound)

    def _listen(self, binding: PortBinding) -> socket.socket:
        family = _family(binding.host_ip)
        kind = socket.SOCK_STREAM if binding.proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        try:
            if family == socket.AF_INET6:
                # "::" must not also take the IPv4 port: 0.0.0.0 is a binding of its own.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:
                # Lets the port be reused at once while old connections sit in TIME_WAIT.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((binding.host_ip, binding.host_port))
            if kind == socket.SOCK_STREAM:
                sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)  # readiness comes from poll; a lost race must not block
        except OSError as err:
            sock.close()
            where = _host_address(binding.host_ip, binding.host_port)
            if err.errno == errno.EADDRINUSE:
                raise SouteError(
                    f"Bind for {binding.host_ip}:{binding.host_port} failed: "
                    "port is already allocated"
                ) from None
            raise SouteError(f"Bind for {where} failed: {err.strerror}") from None
        return sock

    def start(self, netns: str) -> None:
        """Forwards the bound ports into the network namespace at path ``netns``."""
        if self._closed:
            raise RuntimeError("PortProxy is closed")
        if self._factory is not None:
            raise RuntimeError("PortProxy.start() is called once")
        if len(self._listeners) != len(self.bindings):
            self.bind()
        self._factory = _NetnsSocketFactory(netns)
        for binding, sock in self._listeners:
            serve = self._serve_tcp if binding.proto == "tcp" else self._serve_udp
            self._spawn(serve, f"soute-proxy {binding.proto}/{binding.host_port}", binding, sock)

    def close(self) -> None:
        """Stops forwarding, closes every socket; the host ports are free when this returns."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._sockets)
        os.close(self._stop_w)
        for sock in live:
            # Wakes threads blocked in sendall() to a peer that stopped reading.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + _JOIN_TIMEOUT
        while True:
            with self._lock:
                pending = [t for t in self._threads if t is not threading.current_thread()]
            if not pending or time.monotonic() >= deadline:
                break
            pending[0].join(max(0.0, deadline - time.monotonic()))
        self._close_listeners()
        if self._factory is not None:
            self._factory.close()
        if not pending:
            # Threads stuck past the deadline may still use these: leaking beats an fd reuse.
            with self._lock:
                leftovers, self._sockets = self._sockets, set()
            for sock in leftovers:
                sock.close()
            os.close(self._stop_r)

    def _close_listeners(self) -> None:
        for _, sock in self._listeners:
            sock.close()
        self._listeners = []

    # -- plumbing

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> bool:
        """Starts a tracked daemon thread; False when stopping (nothing started)."""
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            if self._closed:
                return False
            self._threads.add(thread)
        try:
            start_without_signals(thread)
        except RuntimeError:  # out of threads: this one connection fails, the proxy goes on
            with self._lock:
                self._threads.discard(thread)
            return False
        return True

    def _wait(self, sock: socket.socket, events: int, timeout: float | None = None) -> bool:
        """True when ``sock`` is ready (or failed), False on stop or timeout."""
        poller = select.poll()
        poller.register(sock, events)
        poller.register(self._stop_r, select.POLLIN)
        # Rounded up: rounding down would spin on the last sub-millisecond.
        ready = poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        fds = {fd for fd, _ in ready}
        return self._stop_r not in fds and sock.fileno() in fds

    def _track(self, *socks: socket.socket) -> bool:
        """Registers sockets for close() to shut down; False (and closes them) when stopping."""
        with self._lock:
            if not self._closed:
                self._sockets.update(socks)
                return True
        for sock in socks:
            sock.close()
        return False

    def _untrack_close(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.difference_update(socks)
        for sock in socks:
            sock.close()

    # -- TCP

    def _serve_tcp(self, binding: PortBinding, listener: socket.socket) -> None:
        while self._wait(listener, select.POLLIN):
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # the client gave up between poll and accept
            except OSError:
                return
            client.setblocking(True)
            if self._track(client):
                self._spawn(self._connect_tcp, "soute-proxy tcp conn", binding, client)

    def _connect_tcp(self, binding: PortBinding, client: socket.socket) -> None:
        assert self._factory is not None
        try:
            upstream = self._factory.socket(socket.SOCK_STREAM)
        except OSError:  # TimeoutError included
            self._untrack_close(client)
            return
        if not self._track(upstream):
            self._untrack_close(client)
            return
        if not self._connect(upstream, ("127.0.0.1", binding.container_port)):
            # Nothing listens inside (or it is gone): the client sees its connection close.
            self._untrack_close(client, upstream)
            return
        done = threading.Semaphore(0)
        if not self._spawn(self._pump, "soute-proxy tcp out", upstream, client, done):
            self._untrack_close(client, upstream)  # stopping, or out of threads
            return
        self._pump(client, upstream, done)
        # Both directions finished: nobody uses the sockets any more.
        done.acquire()
        done.acquire()
        self._untrack_close(client, upstream)

    def _connect(self, sock: socket.socket, address: tuple[str, int]) -> bool:
        # Non-blocking so that close() does not wait out a connect that hangs.
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code == errno.EINPROGRESS:
            if not self._wait(sock, select.POLLOUT, _CONNECT_TIMEOUT):
                return False
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        sock.setblocking(True)
        return code == 0

    def _pump(self, src: socket.socket, dst: socket.socket, done: threading.Semaphore) -> None:
        """Copies one direction of a connection, then releases ``done``."""
        try:
            if not self._copy(src, dst):
                # A reset or a stop: the other direction cannot go on either.
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        finally:
            done.release()

    def _copy(self, src: socket.socket, dst: socket.socket) -> bool:
        """Copies ``src`` to ``dst``: True at EOF (passed on as a half-close), False otherwise."""
        try:
            while self._wait(src, select.POLLIN):
                data = src.recv(_BUFSIZE)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return True
                dst.sendall(data)
        except OSError:
            pass
        return False

    # -- UDP

    def _serve_udp(self, binding: PortBinding, listener: socket.socket) -> None:
        flows: dict[tuple[object, ...], _UdpFlow] = {}
        flows_lock = threading.Lock()
        while self._wait(listener, select.POLLIN):
            try:
                data, client = listener.recvfrom(_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            # Twice at most: the flow may expire between lookups, then a new one is made.
            for _ in range(2):
                # Under the lock: a flow is expired (and its socket closed) under it too.
                with flows_lock:
                    flow = flows.get(client)
                    if flow is not None:
                        flow.last = time.monotonic()
                        # Refused (nothing listens yet) or a full buffer: UDP may drop, so do we.
                        with contextlib.suppress(OSError):
                            flow.upstream.send(data)
                        break
                if not self._new_udp_flow(binding, listener, client, flows, flows_lock):
                    break

    def _new_udp_flow(
        self,
        binding: PortBinding,
        listener: socket.socket,
        client: tuple[object, ...],
        flows: dict[tuple[object, ...], _UdpFlow],
        flows_lock: threading.Lock,
    ) -> bool:
        """Opens the container-side socket for a new UDP client; False if that failed."""
        assert self._factory is not None
        try:
            upstream = self._factory.socket(socket.SOCK_DGRAM)
        except OSError:
            return False
        if not self._track(upstream):
            return False
        try:
            upstream.connect(("127.0.0.1", binding.container_port))
        except OSError:
            self._untrack_close(upstream)
            return False
        upstream.setblocking(False)
        flow = _UdpFlow(upstream)
        with flows_lock:
            flows[client] = flow
        self._spawn(
            self._udp_replies, "soute-proxy udp flow", listener, client, flow, flows, flows_lock
        )
        return True

    def _udp_replies(
        self,
        listener: socket.socket,
        client: tuple[object, ...],
        flow: _UdpFlow,
        flows: dict[tuple[object, ...], _UdpFlow],
        flows_lock: threading.Lock,
    ) -> None:
        """Sends the container's replies back to ``client`` until the flow is idle too long."""
        try:
            while True:
                with flows_lock:
                    idle_left = flow.last + self.udp_timeout - time.monotonic()
                    if idle_left <= 0:
                        # Expired in the same critical section as the check: no datagram can
                        # be sent on this flow after it was found idle.
                        del flows[client]
                        return
                if self._wait(flow.upstream, select.POLLIN, idle_left):
                    try:
                        data = flow.upstream.recv(_BUFSIZE)
                    except (BlockingIOError, InterruptedError, ConnectionRefusedError):
                        continue  # ICMP port unreachable from inside: keep the flow
                    except OSError:
                        return
                    flow.last = time.monotonic()
                    with contextlib.suppress(OSError):
                        listener.sendto(data, client)
                elif self._closing():
                    return
        finally:
            with flows_lock:
                if flows.get(client) is flow:
                    del flows[client]
            self._untrack_close(flow.upstream)

    def _closing(self) -> bool:
        with self._lock:
            return self._closed
