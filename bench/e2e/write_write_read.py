#!/usr/bin/python3
"""Round trips of a client that writes a request in two small writes and waits for the answer
(write-write-read), through acr-egress's connect listener: what Nagle's algorithm on the proxy's
sockets costs (bench/e2e/PROFILE.md section 11). The upstream is a server this script starts on
127.0.0.1; the tunnel starts with a real ClientHello capture. Prints the seconds for --rounds.

  build/bench/proxy/acr-egress --connect 127.0.0.1:3999 --allow-cidr 127.0.0.1/32 --port 8443 &
  bench/e2e/write_write_read.py --proxy 127.0.0.1:3999 --port 8443 --rounds 200
"""
import argparse
import os
import socket
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REQUEST = (100, 200)  # the two writes
ANSWER = 2000


def serve(listener, hello_length):
    conn, _ = listener.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = -hello_length  # the hello is read and dropped first
        while True:
            data = conn.recv(65536)
            if not data:
                return
            pending += len(data)
            while pending >= sum(REQUEST):
                pending -= sum(REQUEST)
                conn.sendall(b"a" * ANSWER)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", default="127.0.0.1:3999")
    parser.add_argument("--port", type=int, default=8443, help="the upstream's port (allowed)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--hello", default=os.path.join(
        HERE, "..", "..", "..", "shared", "data", "clienthello", "openssl-nosni.bin"))
    args = parser.parse_args()
    with open(args.hello, "rb") as f:
        hello = f.read()
    listener = socket.create_server(("127.0.0.1", args.port))
    threading.Thread(target=serve, args=(listener, len(hello)), daemon=True).start()
    host, port = args.proxy.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    target = f"127.0.0.1:{args.port}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 4096:
        head += sock.recv(1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"CONNECT refused: {head!r}")
    sock.sendall(hello)
    started = time.monotonic()
    for _ in range(max(1, min(args.rounds, 100_000))):
        for size in REQUEST:
            sock.sendall(b"r" * size)
        got = 0
        while got < ANSWER:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the tunnel closed")
            got += len(chunk)
    print(f"{args.rounds} write-write-read round trips: {time.monotonic() - started:.3f} s")


if __name__ == "__main__":
    main()
