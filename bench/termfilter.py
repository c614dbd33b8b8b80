"""Cost of what issue 9 added on the log paths, each against a baseline run in the same process.

    .venv/bin/python bench/termfilter.py [--mb 8] [--chunk 65536]

1. ``submit --follow`` on a terminal: TerminalFilter over build-like output (plain lines,
   colour-heavy lines, a few hostile sequences), fed in chunks;
   baseline = what ``--raw`` costs (none) plus the UTF-8 decode and encode a text filter
   cannot avoid: ``bytes.decode().encode()`` of the same chunks.
2. A task log past its cap: LogStream.write of the same chunks once the log is truncated
   (counted and dropped);
   baseline = LogStream.write below the cap (redacted with one secret, buffered).

Prints MB/s and the ratio. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from buildworker.termfilter import TerminalFilter
from buildworker.worker.logs import LogStreamer
from buildworker.worker.redact import NeedleSet


class NullSink:
    def send_chunk(self, log: str, offset: int, data: bytes) -> None:
        pass


def sample(megabytes: float) -> bytes:
    plain = b"gcc -O2 -Wall -c src/module/file.c -o build/module/file.o\n"
    colour = b"\x1b[1;32m   Compiling\x1b[0m serde v1.0.200 \x1b[2m(registry)\x1b[0m\n"
    hostile = b"\x1b]0;title\x07\x1b[6n\x1b[2J"
    block = plain * 40 + colour * 20 + hostile
    return block * int(megabytes * 1e6 / len(block) + 1)


def rate(run: Callable[[], None], size: int) -> float:
    start = time.perf_counter()
    run()
    return size / (time.perf_counter() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=8.0, help="output size in MB")
    parser.add_argument("--chunk", type=int, default=65536, help="bytes per feed")
    args = parser.parse_args()
    data = sample(args.mb)
    chunks = [data[i : i + args.chunk] for i in range(0, len(data), args.chunk)]

    def filtered() -> None:
        terminal = TerminalFilter()
        for chunk in chunks:
            terminal.feed(chunk)

    def recoded() -> None:
        for chunk in chunks:
            chunk.decode("utf-8", "replace").encode()

    ours, base = rate(filtered, len(data)), rate(recoded, len(data))
    print(
        f"terminal filter  {ours:8.1f} MB/s   decode+encode {base:8.1f} MB/s   ratio {base / ours:.1f}x"
    )

    needles = NeedleSet()
    needles.add("sup3r-s3cret-value", "token")

    def write_all(max_bytes: int) -> Callable[[], None]:
        def run() -> None:
            streamer = LogStreamer(NullSink(), needles, max_bytes=max_bytes)
            stream = streamer.open("build")
            for chunk in chunks:
                stream.write(chunk)
            streamer.close()

        return run

    kept = rate(write_all(len(data) * 2), len(data))
    dropped = rate(write_all(1), len(data))
    print(
        f"log past its cap {dropped:8.1f} MB/s   below the cap {kept:8.1f} MB/s   ratio {dropped / kept:.1f}x faster"
    )


if __name__ == "__main__":
    main()
