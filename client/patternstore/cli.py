"""``patternstore``: the command line of the client.

Patterns are read and printed as JSON in protobuf's JSON mapping (field names as in the
.proto, ``data`` as base64). For convenience ``put`` and ``import`` also accept ``data``
as a JSON object or list, which is stored as its compact JSON text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from patternstore_server.errors import StorageError
from patternstore_server.storage import DataDirLock
from patternstore_server.storage.backup import check_copy

from .client import PatternStoreClient
from .v1 import patternstore_pb2 as pb

__all__ = ["main"]

_IMPORT_BATCH = 500
_IMPORT_BATCH_BYTES = 4 * 1024 * 1024
# Codes that say a call was refused, so nothing in it was stored. Any other error (a
# deadline, a dropped connection) leaves it unknown whether the batch was applied.
_REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def _to_json(p: pb.Pattern) -> str:
    body = json_format.MessageToDict(p, preserving_proto_field_name=True)
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def _pattern_from(obj: Any) -> pb.Pattern:
    if not isinstance(obj, dict):
        raise ValueError("a pattern must be a JSON object")
    obj = dict(obj)
    data = obj.pop("data", None)
    p = json_format.ParseDict(obj, pb.Pattern(), ignore_unknown_fields=False)
    if isinstance(data, str):
        p.MergeFrom(json_format.ParseDict({"data": data}, pb.Pattern()))
    elif data is not None:
        p.data = json.dumps(data, separators=(",", ":")).encode()
    return p


def _read_patterns(stream: TextIO) -> Iterator[pb.Pattern]:
    """One JSON object per line, or one JSON document (an object or a list of them).

    JSON lines are read a line at a time (an export of millions of patterns must not be
    held in memory); the input is one document when its first line is not a whole JSON
    value (a pretty-printed object or list).
    """
    lines = enumerate(stream, 1)
    n, first = next(((i, line) for i, line in lines if line.strip()), (0, ""))
    if not n:
        return
    try:
        value = json.loads(first)
    except json.JSONDecodeError:
        value = json.loads(first + stream.read())
        for obj in value if isinstance(value, list) else [value]:
            yield _pattern_from(obj)
        return
    for obj in value if isinstance(value, list) else [value]:
        yield _numbered(n, obj)
    for n, line in lines:
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {n}: {exc}") from None
            yield _numbered(n, obj)


def _numbered(n: int, obj: Any) -> pb.Pattern:
    try:
        return _pattern_from(obj)
    except (ValueError, json_format.ParseError) as exc:
        raise ValueError(f"line {n}: {exc}") from None


def _open_in(path: str) -> contextlib.AbstractContextManager[TextIO]:
    # stdin is the caller's: read it, never close it.
    if path == "-":
        return contextlib.nullcontext(sys.stdin)
    return open(path, encoding="utf-8")


class _Progress:
    """A one-line counter on stderr, only when stderr is a terminal."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.count = 0
        self.enabled = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self.count += n
        if self.enabled:
            print(f"\r{self.verb} {self.count} patterns", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _batches(items: Iterable[pb.Pattern], size: int, max_bytes: int) -> Iterator[list[pb.Pattern]]:
    """Up to ``size`` patterns, closed early at about ``max_bytes`` of message: 500 large
    patterns would pass the server's max_receive_bytes (16 MiB by default)."""
    batch: list[pb.Pattern] = []
    total = 0
    for item in items:
        n = item.ByteSize()
        if batch and total + n > max_bytes:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += n
        if len(batch) == size:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _cmd_get(c: PatternStoreClient, a: argparse.Namespace) -> None:
    for pid in a.ids:
        print(_to_json(c.get_pattern(pid)))


def _cmd_put(c: PatternStoreClient, a: argparse.Namespace) -> None:
    with _open_in(a.file) as f:
        patterns = list(_read_patterns(f))
    for p in patterns:
        r = c.store_pattern(p, expected_version=a.expected_version, create_only=a.create_only)
        print(
            json.dumps(
                {"id": r.id, "version": r.version, "sequence": r.sequence, "created": r.created}
            )
        )


def _cmd_update(c: PatternStoreClient, a: argparse.Namespace) -> None:
    r = c.update_confidence(a.id, a.outcome, weight=a.weight, request_id=a.request_id)
    print(
        json.dumps({"confidence": r.confidence, "sequence": r.sequence, "duplicate": r.duplicate})
    )


def _cmd_query(c: PatternStoreClient, a: argparse.Namespace) -> None:
    consistency = pb.CONSISTENCY_STRONG if a.strong else pb.CONSISTENCY_BOUNDED
    page = c.query_patterns(
        a.type,
        min_confidence=a.min_confidence,
        order_by=a.order_by,
        limit=a.limit,
        page_token=a.page_token,
        consistency=consistency,
        seed=a.seed,
    )
    for p in page.patterns:
        print(_to_json(p))
    if page.next_page_token:
        print(f"next page: --page-token {page.next_page_token}", file=sys.stderr)


def _cmd_flush(c: PatternStoreClient, a: argparse.Namespace) -> None:
    r = c.flush()
    print(json_format.MessageToJson(r, preserving_proto_field_name=True, indent=None))


def _cmd_stats(c: PatternStoreClient, a: argparse.Namespace) -> None:
    print(json_format.MessageToJson(c.get_stats(), preserving_proto_field_name=True, indent=2))


def _cmd_health(c: PatternStoreClient, a: argparse.Namespace) -> int:
    status = c.health(a.service)
    print(status)
    return 0 if status == "SERVING" else 1


def _cmd_backup(c: PatternStoreClient, a: argparse.Namespace) -> None:
    header = c.backup(a.out)
    check_copy(Path(a.out))
    print(
        json.dumps(
            {
                "out": a.out,
                "bytes": header.total_bytes,
                "durable_sequence": header.durable_sequence,
                "integrity": "ok",
            }
        )
    )


def _restore(a: argparse.Namespace) -> int:
    """Copy a backup into a data directory no server is using."""
    source = Path(a.source)
    check_copy(source)
    dest = Path(a.data_dir) / "patterns.db"
    # Held until the copy is in place: a server running on this directory (or starting
    # meanwhile) is refused, rather than having its database replaced under it.
    lock = DataDirLock(a.data_dir, "patternstore restore")
    lock.acquire()
    try:
        if dest.exists() and not a.force:
            print(f"patternstore: {dest} exists; pass --force to replace it", file=sys.stderr)
            return 2
        _replace_database(source, dest)
    finally:
        lock.release()
    print(json.dumps({"restored": str(dest), "from": str(source)}))
    return 0


def _replace_database(source: Path, dest: Path) -> None:
    """Copy, sync and check beside ``dest`` first; only then drop the old database's
    WAL (after a crash it holds committed data) and swap the copy in. A failure before
    the swap leaves the old database as it was."""
    tmp = dest.with_name(dest.name + ".restoring")
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        check_copy(tmp)
        for suffix in ("-wal", "-shm"):
            Path(f"{dest}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename and the unlinks, durable
    finally:
        os.close(directory)


def _cmd_export(c: PatternStoreClient, a: argparse.Namespace) -> None:
    progress = _Progress("exported")
    if a.file == "-":
        try:
            _export_to(c, a, sys.stdout, progress)
        finally:
            progress.done()
        return
    # Like backup: written beside the file and renamed once complete, so a failed export
    # leaves no partial file that looks like a whole one.
    partial = Path(a.file + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            _export_to(c, a, out, progress)
        partial.replace(a.file)
    finally:
        partial.unlink(missing_ok=True)
        progress.done()


def _export_to(
    c: PatternStoreClient, a: argparse.Namespace, out: TextIO, progress: _Progress
) -> None:
    # By id: the one ordering in which a pattern updated meanwhile cannot be skipped.
    for p in c.iter_patterns(a.type, order_by="id", consistency=pb.CONSISTENCY_STRONG):
        out.write(_to_json(p) + "\n")
        progress.add(1)


def _cmd_import(c: PatternStoreClient, a: argparse.Namespace) -> None:
    progress = _Progress("imported")
    batch: list[pb.Pattern] = []
    try:
        with _open_in(a.file) as f:
            for batch in _batches(_read_patterns(f), _IMPORT_BATCH, _IMPORT_BATCH_BYTES):
                c.store_patterns(batch)
                progress.add(len(batch))
    except grpc.RpcError as exc:
        # A batch is stored whole or not at all ("item i" in the error counts from its
        # first record); the batches before it are stored: say which records are which.
        first = progress.count + 1
        records = f"records {first}-{first + len(batch) - 1} (item 0 is record {first})"
        if exc.code() in _REFUSED:
            fate = "were not stored"
        else:
            fate = "may or may not have been stored; importing again is safe (stores replace)"
        print(
            f"patternstore: {records} {fate}; the {progress.count} before them were stored",
            file=sys.stderr,
        )
        raise
    finally:
        progress.done()
        print(json.dumps({"imported": progress.count}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patternstore", description=__doc__)
    parser.add_argument(
        "--target",
        default=os.environ.get("PATTERNSTORE_TARGET", "127.0.0.1:50051"),
        help="server address host:port [env PATTERNSTORE_TARGET]",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    parser.add_argument(
        "--token",
        default=os.environ.get("PATTERNSTORE_TOKEN"),
        help="bearer token [env PATTERNSTORE_TOKEN]",
    )
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("PATTERNSTORE_TLS_CA"),
        help="PEM CA to trust: connect with TLS [env PATTERNSTORE_TLS_CA]",
    )
    parser.add_argument(
        "--tls-cert",
        default=os.environ.get("PATTERNSTORE_TLS_CERT"),
        help="PEM client certificate for mutual TLS",
    )
    parser.add_argument(
        "--tls-key", default=os.environ.get("PATTERNSTORE_TLS_KEY"), help="PEM key of --tls-cert"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("get", help="print patterns by id as JSON lines")
    p.add_argument("ids", nargs="+")
    p.set_defaults(run=_cmd_get)

    p = sub.add_parser("put", help="store patterns from a JSON file or - for stdin")
    p.add_argument("file", nargs="?", default="-")
    p.add_argument("--expected-version", type=int, default=0)
    p.add_argument("--create-only", action="store_true")
    p.set_defaults(run=_cmd_put)

    p = sub.add_parser("update", help="report an outcome for a pattern")
    p.add_argument("id")
    p.add_argument("outcome", choices=["success", "failure", "partial"])
    p.add_argument("--weight", type=float, default=0.0)
    p.add_argument("--request-id", default="", help="makes a retry safe")
    p.set_defaults(run=_cmd_update)

    p = sub.add_parser("query", help="print the top patterns as JSON lines")
    p.add_argument("--type", default="")
    p.add_argument("--min-confidence", type=float, default=0.0)
    p.add_argument(
        "--order-by",
        default="confidence",
        choices=["confidence", "usage", "recent", "lower_bound", "thompson", "id"],
    )
    p.add_argument(
        "--seed", type=int, default=0, help="thompson: the draws' seed (0 = the server picks)"
    )
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--page-token", default="")
    p.add_argument("--strong", action="store_true", help="reflect every acknowledged write")
    p.set_defaults(run=_cmd_query)

    p = sub.add_parser("flush", help="make every queued write durable")
    p.set_defaults(run=_cmd_flush)
    p = sub.add_parser("stats", help="print the server's figures")
    p.set_defaults(run=_cmd_stats)

    p = sub.add_parser("health", help="exit 0 when the server reports SERVING (gRPC health)")
    p.add_argument("--service", default="patternstore.v1.PatternStore")
    p.set_defaults(run=_cmd_health)

    p = sub.add_parser("backup", help="copy the server's database online into a local file")
    p.add_argument("--out", required=True)
    p.set_defaults(run=_cmd_backup)

    p = sub.add_parser("restore", help="put a backup into an empty data directory (offline)")
    p.add_argument("source")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--force", action="store_true", help="replace an existing database")
    p.set_defaults(run=None)

    p = sub.add_parser("export", help="write every pattern as JSON lines")
    p.add_argument("file", nargs="?", default="-")
    p.add_argument("--type", default="")
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser(
        "import",
        help="store patterns from JSON lines (learned fields are not"
        " imported: the server maintains them)",
    )
    p.add_argument("file", nargs="?", default="-")
    p.set_defaults(run=_cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.run is None:
            return _restore(args)
        with PatternStoreClient(
            args.target,
            timeout=args.timeout,
            token=args.token,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        ) as client:
            code = args.run(client, args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``export | head``): stop quietly, as a tool killed by
        # SIGPIPE would; stdout goes to devnull so the interpreter's final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except grpc.RpcError as exc:
        print(f"patternstore: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError, json_format.ParseError, StorageError) as exc:
        print(f"patternstore: {exc}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
