"""systemd's service notifications (sd_notify(3)): READY=1, STOPPING=1, STATUS= and the watchdog's
WATCHDOG=1, sent as datagrams to $NOTIFY_SOCKET.

The protocol is one datagram of `KEY=VALUE` lines to a unix socket, so it is written here rather
than taken from a package: sdnotify, the one on PyPI, has not been released since 2017 and adds
nothing but these lines. Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("bridge.service.notify")


class Notifier:
    """Sends notifications to the socket systemd named in the environment, if any."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # A leading @ names a socket in the abstract namespace: a NUL byte on the wire.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (systemd set $NOTIFY_SOCKET)."""
        return bool(self.address)

    def send(self, *lines: str) -> None:
        """Send one notification of these `KEY=VALUE` lines; a failure is logged once."""
        if not self.address:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)  # never hold the event loop up
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at $NOTIFY_SOCKET: %s", exc.strerror or exc)

    async def keep_alive(self) -> None:
        """Send WATCHDOG=1 at half the watchdog's interval, from the event loop: when the loop
        stalls, the pings stop and systemd restarts the service. Runs until cancelled."""
        if self.watchdog is None or not self.address:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog / 2)

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    # systemd sets WATCHDOG_USEC (and WATCHDOG_PID, the process it means) with WatchdogSec=.
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None
