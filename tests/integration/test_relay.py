"""The relay through a CONNECT tunnel (THREATS 6.6 D1/D4/D5/D6/D9, 6.5 F9).

acr-egress runs a connect listener with --allow-non-tls so the tunnel can carry test streams;
the upstream is a plain TCP server on 127.0.0.2 whose per-test handler plays the other end.
Streams are generated from a seeded pool (never held whole in memory) and compared by sha256
and length on both ends.
"""

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

import harness

HOST = "relay.azurecr.io"
UPSTREAM_IP = "127.0.0.2"
GIB = 1 << 30
MIB = 1 << 20
CHUNK = 256 * 1024


class Stream:
    """A deterministic byte stream of `total` bytes drawn from a 4 MiB pool seeded by `seed`;
    consecutive chunks start at unrelated pool offsets, so a lost, repeated or reordered chunk
    changes the digest."""

    _pools = {}
    POOL = 4 * MIB

    def __init__(self, seed, total, chunk=CHUNK):
        assert chunk <= MIB
        if seed not in Stream._pools:
            data = random.Random(seed).randbytes(self.POOL + MIB)
            Stream._pools[seed] = memoryview(data)
        self.pool = Stream._pools[seed]
        self.total = total
        self.chunk = chunk

    def chunks(self):
        sent, k = 0, 0
        while sent < self.total:
            size = min(self.chunk, self.total - sent)
            offset = (k * 1_000_003) % self.POOL
            yield self.pool[offset:offset + size]
            sent += size
            k += 1

    def digest(self):
        h = hashlib.sha256()
        for c in self.chunks():
            h.update(c)
        return h.hexdigest()


def send_stream(sock, stream, result, key, shut=True):
    """Sends `stream` on `sock`, recording {key: (bytes, sha256)} in `result`; then SHUT_WR."""
    h, n = hashlib.sha256(), 0
    try:
        for c in stream.chunks():
            sock.sendall(c)
            h.update(c)
            n += len(c)
        if shut:
            sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        result[key + "_error"] = e
    result[key] = (n, h.hexdigest())


def recv_stream(sock, result, key, limit=None, slow=0.0):
    """Reads `sock` until EOF or reset, recording {key: (bytes, sha256, how)}; tunnel bytes
    that arrived with the proxy's 200 (`sock.acr_early`) come first."""
    early = getattr(sock, "acr_early", b"")
    h, n, how = hashlib.sha256(early), len(early), "fin"
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 16384 if slow else CHUNK
    while limit is None or n < limit:
        try:
            got = sock.recv_into(view[:size])
        except ConnectionResetError:
            how = "rst"
            break
        except socket.timeout:
            how = "timeout"
            break
        if not got:
            break
        h.update(view[:got])
        n += got
        if slow:
            time.sleep(slow)
    result[key] = (n, h.hexdigest(), how)


class RelayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Everything here is loopback; a private namespace (when root) also keeps the ports
        # clear of anything else running on the machine.
        harness.isolate_in_netns(cls)
        cls.port = harness.free_port(UPSTREAM_IP)
        cls.handler = None  # set per test: handler(conn, index, record)
        cls.upstream = harness.RawServer(UPSTREAM_IP, cls.port,
                                         handler=lambda c, i, r: cls.handler(c, i, r))
        cls.addClassCleanup(cls.upstream.stop)
        cls.dns = harness.Dnsmasq({HOST: [UPSTREAM_IP]})
        cls.dns.start()
        cls.addClassCleanup(cls.dns.stop)
        cls.proxy_addr = f"127.0.0.1:{harness.free_port()}"
        cls.admin_addr = f"127.0.0.1:{harness.free_port()}"
        cls.proxy = harness.Proxy(["--connect", cls.proxy_addr, "--allow-host", HOST,
                                   "--allow-cidr", f"{UPSTREAM_IP}/32", "--port", str(cls.port),
                                   "--dns-server", cls.dns.address, "--allow-non-tls",
                                   "--workers", "2", "--admin", cls.admin_addr])
        cls.proxy.start()
        cls.addClassCleanup(cls.proxy.stop)

    def setUp(self):
        self.server_result = {}
        self.server_done = threading.Event()

    def serve(self, handler):
        """Installs `handler(conn, result)` for the next upstream connection; it runs in the
        server's connection thread and signals `server_done` when it returns."""
        def wrapped(conn, index, record):
            conn.settimeout(120)
            try:
                handler(conn, self.server_result)
            finally:
                self.server_done.set()
        type(self).handler = staticmethod(wrapped)

    def tunnel(self, first=b"", timeout=120):
        # Its access-log line comes after every line written before it was opened: log_for looks
        # only there, as an earlier test's tunnel may have had the same client port.
        since = len(self.proxy.stdout_lines())
        status, headers, body, sock = harness.connect_via_proxy(self.proxy_addr,
                                                                f"{HOST}:{self.port}",
                                                                payload=first)
        self.addCleanup(sock.close)
        self.assertEqual(status, 200, (headers, body))
        sock.settimeout(timeout)
        sock.acr_log_since = since
        return sock

    def spliced_bytes(self):
        """acr_egress_relay_spliced_bytes_total from the proxy's /metrics."""
        text = harness.curl("-s", "--max-time", "5", f"http://{self.admin_addr}/metrics").stdout
        for line in text.splitlines():
            if line.startswith("acr_egress_relay_spliced_bytes_total "):
                return int(float(line.split()[1]))
        self.fail("no acr_egress_relay_spliced_bytes_total in /metrics")

    def log_for(self, sock, timeout=15):
        return self.proxy.wait_for_log(lambda e: e.get("client") == sock.acr_client, timeout,
                                       since=sock.acr_log_since)

    # ---------------------------------------------------------------- D1

    def test_one_gib_each_way_at_once_is_byte_exact(self):
        """D1: 1 GiB in each direction at the same time through one tunnel arrives complete and
        unaltered (sha256 and length equal on both ends), and the log counts every byte."""
        up, down = Stream(1, GIB), Stream(2, GIB)

        def handler(conn, result):
            sender = threading.Thread(target=send_stream, args=(conn, down, result, "sent"))
            sender.start()
            recv_stream(conn, result, "received")
            sender.join(timeout=280)

        self.serve(handler)
        started = time.monotonic()
        sock = self.tunnel()
        client = {}
        sender = threading.Thread(target=send_stream, args=(sock, up, client, "sent"))
        sender.start()
        recv_stream(sock, client, "received")
        sender.join(timeout=280)
        self.assertTrue(self.server_done.wait(60), "upstream did not finish")
        elapsed = time.monotonic() - started
        self.assertNotIn("sent_error", client)
        self.assertNotIn("sent_error", self.server_result)
        n_up, h_up = client["sent"]
        self.assertEqual(self.server_result["received"], (n_up, h_up, "fin"), "upstream received")
        n_down, h_down = self.server_result["sent"]
        self.assertEqual(client["received"][:2], (n_down, h_down), "client received")
        self.assertEqual(client["received"][2], "fin")
        self.assertEqual(n_up, GIB)
        self.assertEqual(n_down, GIB)
        entry = self.log_for(sock)
        self.assertEqual(entry["bytes_up"], GIB, entry)
        self.assertEqual(entry["bytes_down"], GIB, entry)
        print(f"\n  D1: 2 GiB relayed in {elapsed:.1f} s ({2 * GIB / elapsed / 1e6:.0f} MB/s)",
              file=sys.stderr)

    def test_one_gib_up_digest_matches_generator(self):
        """D1 (independent check): what the upstream received hashes to the generator's own
        digest of the stream, so sender-side hashing cannot hide a generator bug."""
        stream = Stream(3, 64 * MIB)

        def handler(conn, result):
            recv_stream(conn, result, "received")

        self.serve(handler)
        sock = self.tunnel()
        client = {}
        send_stream(sock, stream, client, "sent")
        harness.recv_until_closed(sock, 30)
        self.assertTrue(self.server_done.wait(30))
        self.assertEqual(self.server_result["received"][:2], (64 * MIB, stream.digest()))

    def test_bulk_is_spliced_and_small_answers_are_not(self):
        """A layer-sized answer (64 MiB) moves socket to socket with splice(2): all but the
        first reads (copied until one fills the relay's 64 KiB buffer) show in
        acr_egress_relay_spliced_bytes_total, byte-exact. A request and answer of a few KiB
        never splice (a splice costs a system call more than a copy)."""
        small = Stream(8, 3000)

        def small_handler(conn, result):
            result["request"] = conn.recv(5)
            send_stream(conn, small, result, "sent")

        self.serve(small_handler)
        before = self.spliced_bytes()
        sock = self.tunnel(first=b"fetch")
        client = {}
        recv_stream(sock, client, "received")
        self.assertTrue(self.server_done.wait(30))
        self.assertEqual(client["received"], (3000, small.digest(), "fin"))
        sock.close()  # the client's FIN ends the half-closed tunnel
        self.log_for(sock)
        self.assertEqual(self.spliced_bytes(), before, "a small answer was spliced")

        self.server_done.clear()
        layer = Stream(9, 64 * MIB)

        def bulk_handler(conn, result):
            result["request"] = conn.recv(5)
            send_stream(conn, layer, result, "sent")

        self.serve(bulk_handler)
        sock = self.tunnel(first=b"fetch")
        recv_stream(sock, client, "received")
        self.assertTrue(self.server_done.wait(60))
        self.assertEqual(client["received"], (64 * MIB, layer.digest(), "fin"))
        sock.close()
        entry = self.log_for(sock)
        self.assertEqual(entry["bytes_down"], 64 * MIB, entry)
        spliced = self.spliced_bytes() - before
        self.assertGreaterEqual(spliced, 60 * MIB, "the layer was copied, not spliced")
        self.assertLessEqual(spliced, 64 * MIB)

    # ---------------------------------------------------------------- D4

    def test_client_half_close_then_upstream_answers(self):
        """D4: the client sends a request and SHUT_WR; the upstream sees EOF after the request,
        then answers 10 MB, all of which reaches the client before its EOF."""
        request = b"GET /after-fin\n" * 1000
        answer = Stream(4, 10 * MIB)

        def handler(conn, result):
            recv_stream(conn, result, "received")
            send_stream(conn, answer, result, "sent")

        self.serve(handler)
        sock = self.tunnel()
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        client = {}
        recv_stream(sock, client, "received")
        self.assertTrue(self.server_done.wait(30))
        self.assertEqual(self.server_result["received"][:2],
                         (len(request), hashlib.sha256(request).hexdigest()))
        self.assertEqual(client["received"], (10 * MIB, answer.digest(), "fin"))

    def test_upstream_half_close_then_client_keeps_sending(self):
        """D4 reverse: the upstream sends a banner and SHUT_WR; the client sees EOF, keeps
        sending 10 MB, and the upstream receives all of it before the client's FIN."""
        banner = b"upstream done writing\n"
        body = Stream(5, 10 * MIB)

        def handler(conn, result):
            result["first"] = conn.recv(3)
            conn.sendall(banner)
            conn.shutdown(socket.SHUT_WR)
            recv_stream(conn, result, "received")

        self.serve(handler)
        sock = self.tunnel(first=b"go!")
        data, how = harness.recv_until_closed(sock, 10)
        self.assertEqual((sock.acr_early + data, how), (banner, "fin"))
        client = {}
        send_stream(sock, body, client, "sent")
        self.assertNotIn("sent_error", client)
        self.assertTrue(self.server_done.wait(30))
        self.assertEqual(self.server_result["received"][:2], (10 * MIB, body.digest()))
        self.assertEqual(self.server_result["received"][2], "fin")
        entry = self.log_for(sock)
        self.assertEqual(entry["bytes_up"], 3 + 10 * MIB)
        self.assertEqual(entry["bytes_down"], len(banner))

    # ---------------------------------------------------------------- D5

    def test_upstream_writes_64mb_and_closes_slow_client_gets_all(self):
        """D5: the upstream writes 64 MB and closes at once; a client that starts reading 1 s
        later and reads slowly still gets all 64 MB, then a FIN (never a reset)."""
        data = Stream(6, 64 * MIB)

        def handler(conn, result):
            result["request"] = conn.recv(5)
            send_stream(conn, data, result, "sent", shut=False)
            conn.close()

        self.serve(handler)
        sock = self.tunnel(first=b"fetch")
        time.sleep(1)
        client = {}
        started = time.monotonic()
        recv_stream(sock, client, "received", slow=0.0005)
        self.assertTrue(self.server_done.wait(30))
        self.assertEqual(self.server_result["request"], b"fetch")
        self.assertEqual(client["received"], (64 * MIB, data.digest(), "fin"))
        sock.close()  # the tunnel is half-open until the client closes too
        entry = self.log_for(sock)
        self.assertEqual(entry["bytes_down"], 64 * MIB, entry)
        self.assertEqual(entry["closed_by"], "upstream", entry)
        self.assertLess(time.monotonic() - started, 120)

    # ---------------------------------------------------------------- R7

    def test_slow_reader_keeps_proxy_memory_bounded(self):
        """R7: while the client reads nothing for 3 s, an upstream pushing 256 MB is stalled by
        backpressure: the proxy's resident memory grows by less than 32 MB, and once the client
        reads, all 256 MB arrive intact."""
        data = Stream(7, 256 * MIB)

        def handler(conn, result):
            result["request"] = conn.recv(5)
            send_stream(conn, data, result, "sent")

        def rss():
            with open(f"/proc/{self.proxy.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
            raise AssertionError("no VmRSS")

        self.serve(handler)
        before = rss()
        sock = self.tunnel(first=b"fetch")
        time.sleep(3)
        grown = rss() - before
        client = {}
        recv_stream(sock, client, "received")
        self.assertTrue(self.server_done.wait(60))
        self.assertEqual(client["received"], (256 * MIB, data.digest(), "fin"))
        self.assertLess(grown, 32 * MIB, f"proxy RSS grew by {grown / MIB:.1f} MiB")

    # ---------------------------------------------------------------- D6

    def test_killed_client_closes_upstream_promptly(self):
        """D6: a client killed (SIGKILL) mid-download makes the proxy close the upstream side
        within 5 s, logs closed_by client, and leaves no CLOSE_WAIT socket behind."""
        def handler(conn, result):
            result["request"] = conn.recv(5)
            chunk = b"x" * CHUNK
            sent = 0
            try:
                while sent < 8 * GIB:  # bounded; the kill ends it long before
                    conn.sendall(chunk)
                    sent += len(chunk)
            except OSError as e:
                result["error_at"] = time.monotonic()
                result["error"] = e
            result["sent"] = sent

        self.serve(handler)
        code = (
            "import socket,sys,time\n"
            f"s=socket.create_connection(('127.0.0.1',{self.proxy_addr.split(':')[1]}))\n"
            f"s.sendall(b'CONNECT {HOST}:{self.port} HTTP/1.1\\r\\nHost: {HOST}:{self.port}"
            "\\r\\n\\r\\nfetch')\n"
            "n=0\n"
            "while n<4<<20:\n"
            "    n+=len(s.recv(65536))\n"
            "print('reading',flush=True)\n"
            "time.sleep(60)\n")
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        line = child.stdout.readline()
        child.stdout.close()
        self.assertEqual(line.strip(), b"reading")
        killed = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        self.assertTrue(self.server_done.wait(10), "the upstream was not closed")
        self.assertIn("error_at", self.server_result)
        self.assertLess(self.server_result["error_at"] - killed, 5.0)
        entry = self.proxy.wait_for_log(lambda e: e.get("bytes_up") == 5
                                        and e.get("closed_by") == "client")
        self.assertEqual(entry["decision"], "allow")
        time.sleep(0.5)
        ss = subprocess.run(["ss", "-Htan", "state", "close-wait"], capture_output=True,
                            text=True, timeout=10).stdout
        leaks = [l for l in ss.splitlines()
                 if f":{self.port} " in l or f":{self.proxy_addr.split(':')[1]} " in l]
        self.assertEqual(leaks, [], "sockets left in CLOSE_WAIT")

    # ---------------------------------------------------------------- F9

    def test_upstream_reset_reaches_client_as_reset(self):
        """F9: an upstream that sends 1 MB and then resets (SO_LINGER 0) makes the client's
        read end in ECONNRESET, not in a clean EOF that would hide the truncation."""
        def handler(conn, result):
            result["request"] = conn.recv(5)
            conn.sendall(b"y" * MIB)
            time.sleep(0.2)
            harness.set_rst_on_close(conn)
            conn.close()

        self.serve(handler)
        sock = self.tunnel(first=b"fetch")
        data, how = harness.recv_until_closed(sock, 15)
        self.assertTrue(self.server_done.wait(10))
        self.assertEqual(how, "rst", f"client saw {how} after {len(data)} bytes")
        self.assertLessEqual(len(sock.acr_early + data), MIB)
        entry = self.log_for(sock)
        self.assertEqual(entry["closed_by"], "upstream", entry)

    def test_reset_right_behind_a_small_answer_reaches_client_at_once(self):
        """F9 with no pause: an upstream that writes a small answer and resets in the same breath
        (both are in the proxy's socket before it reads, one edge that libevent reports as plain
        read and write readiness, and no later edge) still ends the client's read in ECONNRESET
        within seconds, after the answer: not at the idle timeout (15 min by default)."""
        answer = bytes(range(256)) * 4

        def handler(conn, result):
            result["request"] = conn.recv(5)
            harness.set_rst_on_close(conn)
            conn.sendall(answer)
            conn.close()

        self.serve(handler)
        sock = self.tunnel(first=b"fetch")
        data, how = harness.recv_until_closed(sock, 10)
        self.assertTrue(self.server_done.wait(10))
        self.assertEqual(how, "rst", f"client saw {how} after {len(data)} bytes")
        got = sock.acr_early + data
        self.assertEqual(got, answer[:len(got)])
        entry = self.log_for(sock)
        self.assertEqual(entry["closed_by"], "upstream", entry)
        self.assertEqual(entry["bytes_down"], len(answer), entry)

    def test_client_reset_right_behind_its_bytes_reaches_upstream_at_once(self):
        """The other way: a client that writes a request and resets at once makes the upstream's
        read end in ECONNRESET after the request within seconds, while the upstream waits."""
        def handler(conn, result):
            data, how = harness.recv_until_closed(conn, 10)
            result["data"], result["how"] = data, how

        self.serve(handler)
        sock = self.tunnel()
        harness.set_rst_on_close(sock)
        sock.sendall(b"request")
        sock.close()
        self.assertTrue(self.server_done.wait(15))
        self.assertEqual(self.server_result["how"], "rst", self.server_result)
        self.assertEqual(self.server_result["data"], b"request"[:len(self.server_result["data"])])
        entry = self.log_for(sock)
        self.assertEqual(entry["closed_by"], "client", entry)

    # ---------------------------------------------------------------- D9

    def test_many_concurrent_tunnels_keep_their_own_bytes(self):
        """D9: 40 tunnels echoing 2 MB each with random pauses, all at once, each get back
        exactly their own stream (no cross-talk between connections)."""
        def handler(conn, result):
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

        self.serve(handler)
        results, errors = {}, []

        def one(i):
            try:
                stream = Stream(100 + i % 8, 2 * MIB, chunk=32768 + i * 512)
                sock = self.tunnel(first=b"")
                rnd = random.Random(i)
                out = {}
                reader = threading.Thread(target=recv_stream, args=(sock, out, "echo"))
                reader.start()
                h = hashlib.sha256()
                for c in stream.chunks():
                    sock.sendall(c)
                    h.update(c)
                    if rnd.random() < 0.05:
                        time.sleep(rnd.random() * 0.05)
                sock.shutdown(socket.SHUT_WR)
                reader.join(timeout=120)
                results[i] = (out.get("echo"), (2 * MIB, h.hexdigest(), "fin"))
            except Exception as e:  # reported below
                errors.append((i, e))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 40)
        for i, (got, expected) in sorted(results.items()):
            self.assertEqual(got, expected, f"tunnel {i}")


if __name__ == "__main__":
    unittest.main()
