"""What the per-call gRPC metrics cost: GetPattern calls/s with them on and off.

Two servers on the same machine in the same run, driven alternately by h2load (L1 hits
on one stored id, so every call succeeds and h2load's count is the server's), several
rounds each; prints the medians and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("server", "client", "loadtest"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

from h2load_driver import frame, run_h2load  # noqa: E402
from patternstore import Pattern, PatternStoreClient  # noqa: E402
from patternstore.v1 import patternstore_pb2 as pb  # noqa: E402
from procs import start_patternstore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="patternstore-metrics-"))
    procs = []
    try:
        targets = {}
        for name in ("on", "off"):
            proc, target, _ = start_patternstore(work, "--grpc-metrics", name, name=name)
            procs.append(proc)
            targets[name] = target
            with PatternStoreClient(target) as c:
                c.store_pattern(Pattern(id="hot", type="t", data=b'{"steps": [1, 2, 3]}' * 20))
                c.get_pattern("hot")
        body = frame(pb.GetPatternRequest(id="hot"))
        rates: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.rounds):
            for name in ("on", "off"):
                r = run_h2load(
                    targets[name], "GetPattern", body, requests=args.requests, clients=4, streams=32
                )
                rates[name].append(r.http_succeeded / r.seconds)
        on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
        print(
            f"GetPattern calls/s, median of {args.rounds} alternating rounds of "
            f"{args.requests} calls:"
        )
        print(f"  metrics on   {on:10,.0f}   rounds: {', '.join(f'{x:,.0f}' for x in rates['on'])}")
        print(
            f"  metrics off  {off:10,.0f}   rounds: {', '.join(f'{x:,.0f}' for x in rates['off'])}"
        )
        print(
            f"  on / off     {on / off:10.3f}   (cost of the per-call metrics: "
            f"{100 * (1 - on / off):.1f}%)"
        )
    finally:
        for proc in procs:
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
