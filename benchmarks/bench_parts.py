"""What an image in a message costs the stores: MessagePack ``bin`` against a plain copy of the
bytes, and against the JSON wire format (base64).

Run: ``python -m benchmarks.bench_parts``

For each image size, one message holding the image is packed and unpacked the way every store
does (MessagePack, bytes as ``bin``), encoded and decoded in the JSON wire format (backups,
``promptstate show --json``), and loaded from a SQLite store. Ratios are against copying the
image's bytes once (``bytes(bytearray(image))``), the least work any store must do; a ratio
near 1 means the image is not re-encoded. Nothing here is asserted: the numbers are printed.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import anyio

from benchmarks._timing import fmt_us, machine, time_sync
from promptstate import ImagePart, Message, SQLiteStore, State, decode_state, encode_state
from promptstate.serialization import pack, unpack_message

SIZES = (100_000, 1_000_000, 4_000_000)


def message_with(size: int) -> Message:
    image = random.Random(size).randbytes(size)
    return Message("user", "What is this?", parts=(ImagePart(data=image, media_type="image/png"),))


async def _sqlite_load(message: Message, budget: float) -> float:
    with tempfile.TemporaryDirectory() as folder:
        async with SQLiteStore(Path(folder) / "parts.db") as store:
            await store.append("s", [message])
            samples: list[float] = []
            deadline = anyio.current_time() + budget
            while len(samples) < 5 or anyio.current_time() < deadline:
                start = anyio.current_time()
                await store.load("s")
                samples.append(anyio.current_time() - start)
    return sorted(samples)[len(samples) // 2]


def measure(size: int, budget: float) -> dict[str, float]:
    message = message_with(size)
    image = message.parts[0].data  # type: ignore[union-attr]
    assert image is not None
    packed = pack(message)
    state = State(conversation_id="c", messages=[message])
    wire = encode_state(state)
    copy = time_sync(lambda: bytes(bytearray(image)), budget=budget).median
    return {
        "copy": copy,
        "msgpack": time_sync(lambda: unpack_message(pack(message)), budget=budget).median,
        "json": time_sync(lambda: decode_state(encode_state(state)), budget=budget).median,
        "sqlite": anyio.run(_sqlite_load, message, budget),
        "msgpack_bytes": len(packed) / size,
        "json_bytes": len(wire) / size,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    args = parser.parse_args(argv)
    print(f"# message parts: {machine()}")
    print(
        "| image bytes | copy us | msgpack pack+unpack us (ratio) | JSON encode+decode us "
        "(ratio) | SQLite load us (ratio) | stored size (msgpack / JSON) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        r = measure(size, args.budget)
        copy = r["copy"]
        print(
            f"| {size:,} | {fmt_us(copy)} | {fmt_us(r['msgpack'])} ({r['msgpack'] / copy:.1f}x)"
            f" | {fmt_us(r['json'])} ({r['json'] / copy:.1f}x)"
            f" | {fmt_us(r['sqlite'])} ({r['sqlite'] / copy:.1f}x)"
            f" | {r['msgpack_bytes']:.3f}x / {r['json_bytes']:.3f}x |"
        )


if __name__ == "__main__":
    main()
