"""The `patternstore` command line against a real server."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from patternstore import Pattern, PatternStoreClient

from .conftest import RunningServer


def _cli(server: RunningServer, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "patternstore.cli", "--target", server.target, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_put_get_update_query_flush_stats(server: RunningServer) -> None:
    doc = {
        "id": "p1",
        "type": "plan",
        "name": "n",
        "data": {"steps": ["a", "b"]},
        "metadata": {"k": "v"},
    }
    r = _cli(server, "put", stdin=json.dumps(doc))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["created"] is True
    got = json.loads(_cli(server, "get", "p1").stdout)
    assert got["metadata"] == {"k": "v"} and got["type"] == "plan"
    r = _cli(server, "update", "p1", "success", "--request-id", "x")
    assert json.loads(r.stdout)["confidence"] == 2 / 3
    lines = _cli(server, "query", "--type", "plan", "--strong").stdout.splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["p1"]
    assert "durable_sequence" in _cli(server, "flush").stdout
    assert json.loads(_cli(server, "stats").stdout)["patterns"] == "1"  # int64 is a JSON string
    r = _cli(server, "health")
    assert (r.returncode, r.stdout.strip()) == (0, "SERVING")


def test_errors_are_one_line_with_the_status(server: RunningServer) -> None:
    r = _cli(server, "get", "missing")
    assert r.returncode == 1
    assert r.stderr.strip() == "patternstore: NOT_FOUND: pattern 'missing' does not exist"


def test_a_failed_import_says_what_was_stored(
    server: RunningServer, client: PatternStoreClient
) -> None:
    """Imports go in batches of 500: a bad record in the second batch leaves the first
    stored, and the CLI says so (it once reported only the server's "item 2: ...;
    nothing in this call was stored")."""
    records = [{"id": f"p{i}", "type": "t"} for i in range(600)]
    records[502]["type"] = "Bad Type"
    r = _cli(server, "import", stdin="\n".join(json.dumps(x) for x in records))
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"imported": 500}
    assert "records 501-600 (item 0 is record 501) were not stored" in r.stderr
    assert "item 2:" in r.stderr and "INVALID_ARGUMENT" in r.stderr
    assert len(client.get_patterns([f"p{i}" for i in range(600)]).patterns) == 500


def test_export_then_import_round_trips(server: RunningServer, tmp_path: Path) -> None:
    lines = "\n".join(
        json.dumps({"id": f"p{i}", "type": "t", "data": {"i": i}}) for i in range(1200)
    )
    r = _cli(server, "import", stdin=lines)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"imported": 1200}
    out = tmp_path / "export.jsonl"
    assert _cli(server, "export", str(out)).returncode == 0
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["id"] for x in exported) == sorted(f"p{i}" for i in range(1200))
    by_id = {x["id"]: x for x in exported}
    assert all(by_id[f"p{i}"]["type"] == "t" for i in range(1200))
    # data is bytes: exported as proto JSON (base64) of the JSON the import stored.
    assert all(base64.b64decode(by_id[f"p{i}"]["data"]) == b'{"i":%d}' % i for i in range(1200))
    r = _cli(server, "import", str(out))
    assert json.loads(r.stdout) == {"imported": 1200}
    # Importing the export changes nothing but versions: a second export says the same.
    again = tmp_path / "again.jsonl"
    assert _cli(server, "export", str(again)).returncode == 0
    reexported = {x["id"]: x for x in map(json.loads, again.read_text().splitlines())}
    assert {k: (v["type"], v["data"]) for k, v in reexported.items()} == {
        k: (v["type"], v["data"]) for k, v in by_id.items()
    }


def test_import_batches_by_size_and_reads_documents_too(
    server: RunningServer, client: PatternStoreClient
) -> None:
    """500 patterns of 512 KiB would be a 250 MiB call, far over the server's 16 MiB
    max_receive_bytes (helper-22: 300 of 64 KiB already failed): batches close at about
    4 MiB. A pretty-printed document, not JSON lines, is read whole."""
    big = base64.b64encode(b"x" * (512 * 1024)).decode()
    records = [{"id": f"big{i}", "type": "t", "data": big} for i in range(35)]
    r = _cli(server, "import", stdin="\n".join(json.dumps(x) for x in records))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"imported": 35}
    assert len(client.get_pattern("big34").data) == 512 * 1024
    doc = [{"id": "a", "type": "t", "data": {"k": 1}}, {"id": "b", "type": "t"}]
    r = _cli(server, "put", stdin=json.dumps(doc, indent=2))
    assert r.returncode == 0, r.stderr
    assert client.get_pattern("a").data == b'{"k":1}'
    r = _cli(server, "import", stdin='{"id": "c", "type": "t"}\n\nnot json\n')
    assert (r.returncode, json.loads(r.stdout)) == (2, {"imported": 0})
    assert "line 3:" in r.stderr


def test_a_closed_pipe_ends_quietly(server: RunningServer, client: PatternStoreClient) -> None:
    """``patternstore export | head -1`` (helper-22: it printed "[Errno 32] Broken pipe"
    and exited 2)."""
    for start in (0, 1000):
        client.store_patterns(
            [Pattern(id=f"p{i:04}", type="t", data=b"x" * 200) for i in range(start, start + 1000)]
        )
    proc = subprocess.Popen(
        [sys.executable, "-m", "patternstore.cli", "--target", server.target, "export"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["id"] == "p0000"
    proc.stdout.close()
    assert proc.wait(60) == 141
    assert proc.stderr.read() == b""


def test_query_by_thompson_sampling(server: RunningServer, client: PatternStoreClient) -> None:
    client.store_patterns([Pattern(id=f"p{i}", type="t") for i in range(5)])
    runs = [
        _cli(server, "query", "--type", "t", "--order-by", "thompson", "--seed", "7").stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1]  # the same seed, the same draws
    assert sorted(json.loads(x)["id"] for x in runs[0].splitlines()) == [f"p{i}" for i in range(5)]
