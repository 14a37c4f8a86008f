"""A TLS terminator in front of a plaintext broker, for the Kafka TLS tests.

The bundled Tansu 0.6.0 cannot serve TLS itself (its CLI rejects ``--cert`` together with ``--key``), so
the tests put this in front of it, as deployments do with stunnel, HAProxy or Envoy: clients speak TLS
(with a client certificate when required) to this port, the broker advertises this port, and bytes are
piped unchanged to the broker. Only transport is added; every Kafka request is answered by the real broker.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass, field

from cityops.localproc import free_port


@dataclass
class TlsTerminator:
    upstream_port: int
    context: ssl.SSLContext
    port: int = field(default_factory=free_port)
    handshakes: int = 0          # TLS sessions accepted (client certificate verified when required)
    peers: set[str] = field(default_factory=set)  # client certificate subjects seen
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def start(self) -> "TlsTerminator":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.set_exception_handler(lambda _loop, _ctx: None)  # failed handshakes are counted, not logged
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                                  ssl=self.context, ssl_handshake_timeout=5))
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.run_until_complete(server.wait_closed())
                loop.close()

        self._thread = threading.Thread(target=run, name="tls-terminator", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        cert = writer.get_extra_info("peercert")
        if cert:
            self.peers.add(str(dict(x[0] for x in cert.get("subject", ()))))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
