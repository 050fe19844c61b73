"""Serve the review app with uvicorn on a socket bound here, so the port (and the Host check) is known first."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
from pathlib import Path

import uvicorn

from quallm.core.errors import ConfigError
from quallm.outputs.review.app import create_app
from quallm.outputs.review.session import ReviewSession

LOOPBACK = "127.0.0.1"


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class ReviewServer:
    """A review session on a bound socket: ``url`` (with the token), then ``run()`` or ``start()``/``stop()``."""

    def __init__(self, run_dir: str | Path, reviewer: str, *, host: str = LOOPBACK, port: int = 0) -> None:
        self.session = ReviewSession(run_dir, reviewer)
        self.token = secrets.token_urlsafe(24)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
        self.sock.listen(64)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        names = {"127.0.0.1", "localhost", "[::1]"}
        if host != LOOPBACK:
            names.add(f"[{host}]" if ":" in host else host)
            if _is_wildcard(host):
                names |= {socket.gethostname(), socket.getfqdn()}
        self.hosts = sorted(f"{n}:{self.port}".lower() for n in names)
        shown = LOOPBACK if host == LOOPBACK or _is_wildcard(host) else (f"[{host}]" if ":" in host else host)
        self.url = f"http://{shown}:{self.port}/?token={self.token}"
        app = create_app(self.session, self.token, self.hosts, cookie=f"quallm_review_{self.port}")
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def exposed(self) -> bool:
        """True when the server listens beyond this machine's loopback."""
        return self.host not in (LOOPBACK, "::1", "localhost")

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        self.server.run(sockets=[self.sock])

    def start(self) -> None:
        """Serve in a background thread (tests, notebooks); returns once it accepts requests."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise ConfigError("the review server did not start")
            threading.Event().wait(0.02)

    def stop(self) -> None:
        """Stop a server started with :meth:`start`."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()
