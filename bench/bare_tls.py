"""The baseline: a bare aiohttp HTTPS "hello" with the gateway's TLS settings, in its own process."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

import uvloop
from aiohttp import web


async def hello(_: web.Request) -> web.Response:
    return web.Response(text="hello")


def main() -> None:
    cert, key, port_file = sys.argv[1], sys.argv[2], sys.argv[3]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE+AESGCM")
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/", hello)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = runner.addresses[0][1]
        with open(port_file + ".tmp", "w") as fh:
            fh.write(str(port))
        os.replace(port_file + ".tmp", port_file)
        await asyncio.Event().wait()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
