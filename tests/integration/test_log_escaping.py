"""Text access log against forged names (issue 10 defect 2, THREATS: log injection).

With --log-format text a client-chosen name (the SNI on the sni and transparent listeners, the
CONNECT target) must not be able to end its line or write another one: every byte outside
printable ASCII, and the backslash, is escaped. Clients are real sockets on loopback; forged
ClientHellos are real Python/OpenSSL hellos whose SNI bytes are replaced in place (same length,
so every length field stays right).
"""

import re
import socket
import time
import unittest

import harness

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ \S+ -> \S*:\d+ (allow|deny|incomplete) \S+ "
                  r"up=\d+ down=\d+ closed_by=\S* phase=\S+ ")
# CR, LF, ESC (an ANSI colour), a backslash and non-ASCII (é in UTF-8, and a lone 0xff), then a
# whole forged "allow" line after the LF.
FORGED = (b"evil\r\n2026-01-01T00:00:00.000Z sni 10.0.0.1:1 -> myreg.azurecr.io:443 allow "
          b"host_allowed up=0 down=0 closed_by=client phase=relay x\x1b[31m\\\xc3\xa9\xff")


def forged_hello(sni_bytes):
    """A real ClientHello whose SNI is `sni_bytes` (any bytes but NUL)."""
    body = len(sni_bytes) - 4  # labels of at most 40 bytes, then ".com"
    labels = [40] * (body // 41) + ([body % 41] if body % 41 else [])
    if labels[-1] == 0 or body % 41 == 0:
        labels = [40] * (body // 41 - 1) + [39, 1] if body % 41 == 0 else labels
    placeholder = ".".join("a" * n for n in labels) + ".com"
    hello = harness.client_hello(placeholder)
    assert hello.count(placeholder.encode()) == 1
    return hello.replace(placeholder.encode(), sni_bytes)


class TextLogEscapingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.port = harness.free_port()
        cls.sni_port = harness.free_port()
        cls.transparent_port = harness.free_port()
        cls.proxy = harness.Proxy(["--connect", f"127.0.0.1:{cls.port}",
                                   "--sni", f"127.0.0.1:{cls.sni_port}",
                                   "--transparent", f"127.0.0.1:{cls.transparent_port}",
                                   "--log-format", "text", "--workers", "1",
                                   "--dns-server", "127.0.0.1:9"]).start()
        cls.addClassCleanup(cls.proxy.stop)

    def lines_for(self, client, count=1, timeout=10):
        """The stdout lines naming `client`, once at least `count` arrived."""
        def found():
            lines = [l for l in self.proxy.stdout_lines() if f" {client} " in l]
            return lines if len(lines) >= count else None
        return harness.wait_until(found, timeout, 0.05, f"log line for {client}")

    def assert_every_line_is_one_record(self):
        for line in self.proxy.stdout_lines():
            self.assertRegex(line, LINE)
            self.assertTrue(all(0x20 <= ord(c) < 0x7f for c in line), line)

    def assert_forged_name_escaped(self, line):
        self.assertIn("evil\\x0d\\x0a2026-01-01T00:00:00.000Z\\x20sni", line)
        self.assertIn("x\\x1b[31m\\\\\\xc3\\xa9\\xff", line)

    def send_hello(self, port, hello):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        client = "%s:%d" % sock.getsockname()[:2]
        sock.sendall(hello)
        return client

    def test_sni_listener_escapes_forged_sni(self):
        """An SNI with CR, LF, ESC, a backslash and non-ASCII bytes writes exactly one line on
        the sni listener, with those bytes escaped (no forged allow line)."""
        client = self.send_hello(self.sni_port, forged_hello(FORGED))
        lines = self.lines_for(client)
        time.sleep(0.3)
        self.assertEqual(len([l for l in self.proxy.stdout_lines() if "host_allowed up=0" in l
                              and "evil" not in l]), 0)
        self.assertEqual(len(lines), 1, lines)
        self.assert_forged_name_escaped(lines[0])
        self.assert_every_line_is_one_record()

    def test_transparent_listener_escapes_forged_sni(self):
        """The same forged SNI on the transparent listener (a direct connection, refused
        not_redirected after the hello was read) is escaped the same way."""
        client = self.send_hello(self.transparent_port, forged_hello(FORGED))
        lines = self.lines_for(client)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("not_redirected", lines[0])
        self.assert_forged_name_escaped(lines[0])
        self.assert_every_line_is_one_record()

    def test_connect_target_with_control_and_non_ascii_bytes(self):
        """CONNECT targets and methods carrying ESC, CR, DEL and non-ASCII bytes, refused or
        not, never put a raw control byte or a second line into the text log (the CONNECT
        parser refuses such targets before they are logged; this guards the text log if it ever
        lets one through)."""
        heads = [b"CONNECT ev\x1bil\xc3\xa9.azurecr.io:443 HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"CONNECT evil\rx.azurecr.io:443 HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"CONNECT \xff\x7f:443 HTTP/1.1\r\n\r\n",
                 b"G\x1bET / HTTP/1.1\r\nHost: x\r\n\r\n"]
        clients = []
        for head in heads:
            _, _, _, sock = harness.connect_via_proxy(("127.0.0.1", self.port), "", head=head)
            clients.append(sock.acr_client)
            sock.close()
        for client in clients:
            self.assertEqual(len(self.lines_for(client)), 1)
        self.assert_every_line_is_one_record()


if __name__ == "__main__":
    unittest.main()
