#!/usr/bin/env python3
"""The ephemeral-port knee: CPU per connect() as connections from one local address to one
destination accumulate (what edge-lb's tunnels to one core node do), against the same from
several source addresses (edge-lb's `source_addresses`). docs/edge-lb.md, "Source addresses".

    edge-lb/bench/connect-knee.py [--connections 19000] [--sources 0] [--port 25500]

--sources 0 connects from the kernel's choice (127.0.0.1); N > 0 binds each socket to one of
127.32.0.1..N in turn with IP_BIND_ADDRESS_NO_PORT, as edge-lb does. A listener process on
127.0.0.1 accepts and holds every connection; both stop by themselves (bounded count, 120 s).
Prints, per 1 000 connects, the connecting process's CPU µs per connect().
"""
import argparse
import os
import resource
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h


def listener(port: int, n: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    s.settimeout(120)
    held = []
    try:
        while len(held) < n:
            held.append(s.accept()[0])
        time.sleep(2)
    except OSError:
        pass
    os._exit(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=19000)
    ap.add_argument("--sources", type=int, default=0)
    ap.add_argument("--port", type=int, default=25500)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if a.connections + 64 > hard:
        sys.exit(f"--connections {a.connections}: this process may open {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pid = os.fork()
    if pid == 0:
        listener(a.port, a.connections)
    time.sleep(0.3)
    print(f"# {a.connections} connects to 127.0.0.1:{a.port}, sources {a.sources or '127.0.0.1'}")
    print(f"# ephemeral range {open('/proc/sys/net/ipv4/ip_local_port_range').read().split()}")
    held = []
    cpu = time.process_time()
    deadline = time.monotonic() + 120
    try:
        for i in range(1, a.connections + 1):
            s = socket.socket()
            if a.sources:
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((f"127.32.0.{1 + i % a.sources}", 0))
            s.connect(("127.0.0.1", a.port))
            held.append(s)
            if i % 1000 == 0:
                now = time.process_time()
                print(f"{i:6d} connections: {(now - cpu) * 1e3:8.1f} us CPU per connect", flush=True)
                cpu = now
            if time.monotonic() > deadline:
                print("stopped: 120 s")
                break
    finally:
        for s in held:
            s.close()
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
