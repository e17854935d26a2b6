"""A minimal client for Jasmin's jCli (its telnet management console): log in, run a command, read up to
the prompt, add an object (`user -a` ... `ok`). Stdlib only (telnetlib is gone from newer Pythons)."""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import time

HOST = "127.0.0.1"  # Jasmin refuses IPv6 peers (::1); everything here is IPv4 loopback


class InteropError(RuntimeError):
    """The chain could not be set up; the message says which part and where its log is."""


def log(msg: str) -> None:
    print(f"[jasmin-interop] {msg}", file=sys.stderr, flush=True)


class JCli:
    """A minimal jCli (telnet) client: refuses every telnet option, reads up to the prompt."""

    PROMPT = re.compile(rb"(jcli : |> )$")
    ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")

    # Jasmin's built-in jCli admin (its documented default), reachable on loopback only.
    def __init__(self, port: int, user: str = "jcliadmin", password: str = "jclipwd",  # noqa: S107
                 timeout: float = 20.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.timeout = timeout
        self._read_until(b"Authentication required.")
        self._send("")  # jCli draws the Username prompt after the first line
        self._read_until(b"Username: ")
        self._send(user)
        self._read_until(b"Password: ")
        self._send(password)
        if b"Incorrect" in self._read_prompt():
            raise InteropError("jCli refused its admin credentials")

    def _send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise InteropError("jCli closed the connection")
        out = bytearray()
        i = 0
        while i < len(data):  # strip telnet negotiation, answering DO -> WONT and WILL -> DONT
            if data[i] == 255 and i + 2 < len(data) and data[i + 1] in (251, 252, 253, 254):
                verb, opt = data[i + 1], data[i + 2]
                if verb in (251, 253):
                    self.sock.sendall(bytes([255, 254 if verb == 251 else 252, opt]))
                i += 3
            elif data[i] == 255 and i + 1 < len(data):
                i += 2
            else:
                out.append(data[i])
                i += 1
        return bytes(out)

    def _read_until(self, marker: bytes) -> bytes:
        buf = b""
        end = time.monotonic() + self.timeout
        while marker not in buf:
            if time.monotonic() > end:
                raise InteropError(f"jCli: expected {marker!r}, got {buf[-200:]!r}")
            buf += self._recv()
        return buf

    def _read_prompt(self) -> bytes:
        buf = b""
        end = time.monotonic() + self.timeout
        while not self.PROMPT.search(self.ANSI.sub(b"", buf)):
            if time.monotonic() > end:
                raise InteropError(f"jCli: no prompt, got {buf[-300:]!r}")
            buf += self._recv()
        return self.ANSI.sub(b"", buf)

    def cmd(self, line: str) -> str:
        self._send(line)
        return self._read_prompt().decode(errors="replace")

    def add(self, kind: str, lines: list[str], optional: tuple[str, ...] = ()) -> None:
        """`kind -a`, its lines, `ok`; a line in `optional` this Jasmin does not know is skipped."""
        self.cmd(f"{kind} -a")
        for line in lines:
            out = self.cmd(line)
            if re.search(r"Unknown|[Ee]rror|[Ii]nvalid", out):
                if line in optional:
                    log(f"jCli: this Jasmin has no '{line}' (skipped)")
                    continue
                self.cmd("ko")
                raise InteropError(f"jCli {kind}: {line!r} -> {out.strip()}")
        out = self.cmd("ok")
        if "Successfully added" not in out:
            raise InteropError(f"jCli {kind} add failed: {out.strip()}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send("quit")
        self.sock.close()
