#!/usr/bin/env python3
"""Send a line through a hopchain network with the Python API, print the answer.

    python docs/examples/api_echo.py --authority 127.0.0.1:PORT=KEY \\
        --test-network 127.0.0.1 8000 "GET / HTTP/1.0"

Run ``hopchain demo`` first: it prints the authority line to use.
"""

import argparse

import trio
from hopchain.client.api import connect


async def main(args: argparse.Namespace) -> None:
    async with connect([args.authority], test_network=args.test_network) as net:
        stream = await net.open_stream(args.host, args.port, isolation="example")
        async with stream:
            await stream.send_all(args.line.encode() + b"\r\n\r\n")
            await stream.send_eof()  # half-close; the answer still arrives
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
        print(answer.decode(errors="replace"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authority", required=True, metavar="HOST:PORT=KEY")
    parser.add_argument("--test-network", action="store_true")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("line")
    trio.run(main, parser.parse_args())
