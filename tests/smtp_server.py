"""A small real SMTP server on loopback for the tests (Python 3.12 has no smtpd; aiosmtpd is not installed):
EHLO, STARTTLS with a throwaway self-signed certificate, AUTH PLAIN, MAIL, RCPT, DATA, QUIT, over a socket
in a thread. It keeps every message it accepted, with whether the session was encrypted and who logged in."""
from __future__ import annotations

import base64
import socketserver
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Optional


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    data: bytes
    tls: bool
    user: Optional[str]

    @property
    def message(self):
        return message_from_bytes(self.data, policy=policy.default)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key (openssl), valid one day."""
    cert, key = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@dataclass
class SmtpServer:
    tls: Optional[ssl.SSLContext] = None          # offer STARTTLS with this context
    users: dict = field(default_factory=dict)      # user -> password; empty: no AUTH offered
    refuse: set = field(default_factory=set)       # recipients answered 550
    received: list = field(default_factory=list)

    def start(self) -> "SmtpServer":
        srv = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, text: str) -> None:
                self.wfile.write(text.encode() + b"\r\n")
                self.wfile.flush()

            def handle(self) -> None:
                secure, user, mail_from, rcpt = False, None, "", []
                self.reply("220 localhost callqa-test ESMTP")
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd, _, arg = line.decode().rstrip("\r\n").partition(" ")
                    cmd = cmd.upper()
                    if cmd in ("EHLO", "HELO"):
                        caps = ["localhost"] + (["STARTTLS"] if srv.tls and not secure else []) + (
                            ["AUTH PLAIN"] if srv.users else []) + ["8BITMIME"]
                        for c in caps[:-1]:
                            self.wfile.write(f"250-{c}\r\n".encode())
                        self.reply(f"250 {caps[-1]}")
                    elif cmd == "STARTTLS" and srv.tls and not secure:
                        self.reply("220 go ahead")
                        self.request = srv.tls.wrap_socket(self.request, server_side=True)
                        self.rfile = self.request.makefile("rb")
                        self.wfile = self.request.makefile("wb")
                        secure = True
                    elif cmd == "AUTH" and srv.users:
                        mech, _, initial = arg.partition(" ")
                        try:
                            _, name, password = base64.b64decode(initial).decode().split("\0")
                        except ValueError:
                            self.reply("501 bad AUTH PLAIN")
                            continue
                        if mech.upper() == "PLAIN" and srv.users.get(name) == password:
                            user = name
                            self.reply("235 ok")
                        else:
                            self.reply("535 authentication failed")
                    elif cmd == "MAIL":
                        if srv.users and user is None:
                            self.reply("530 log in first")
                            continue
                        mail_from, rcpt = arg.split(":", 1)[1].strip().strip("<>").split(">")[0], []
                        self.reply("250 ok")
                    elif cmd == "RCPT":
                        to = arg.split(":", 1)[1].strip().strip("<>")
                        if to in srv.refuse:
                            self.reply("550 no such user")
                        else:
                            rcpt.append(to)
                            self.reply("250 ok")
                    elif cmd == "DATA":
                        if not rcpt:
                            self.reply("554 no valid recipients")
                            continue
                        self.reply("354 end with .")
                        data = b""
                        while True:
                            chunk = self.rfile.readline()
                            if chunk in (b".\r\n", b""):
                                break
                            data += chunk[1:] if chunk.startswith(b"..") else chunk
                        srv.received.append(Received(mail_from, rcpt, data, secure, user))
                        self.reply("250 queued")
                    elif cmd in ("RSET", "NOOP"):
                        self.reply("250 ok")
                    elif cmd == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not implemented")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
