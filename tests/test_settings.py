"""The one settings table: flags, environment, help, and documentation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from patternstore_server.config import SETTINGS, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"


def test_help_lists_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "patternstore_server", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for s in SETTINGS:
        assert "--" + s.name.replace("_", "-") in out
        assert "PATTERNSTORE_" + s.name.upper() in out


def test_flag_beats_environment_beats_default() -> None:
    env = {"PATTERNSTORE_MAX_BATCH": "7", "PATTERNSTORE_SYNCHRONOUS": "full"}
    s = load_settings([], environ=env)
    assert (s.max_batch, s.synchronous, s.listen) == (7, "FULL", "127.0.0.1:50051")
    assert load_settings(["--max-batch", "9"], environ=env).max_batch == 9


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        load_settings(["--max-batch", "many"], environ={})
    with pytest.raises(ValueError, match="prior_alpha"):
        load_settings(["--prior-alpha", "0"], environ={})
    with pytest.raises(ValueError, match="confidence_model"):
        load_settings([], environ={"PATTERNSTORE_CONFIDENCE_MODEL": "magic"})


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        # Each once parsed and started: a writer killed by the first store (inf prior),
        # INTERNAL on every write (1e308: the lower bound overflows), a core busy while
        # idle (pruning back to back), expired patterns never deleted, every call
        # refused, a port above 65535 silently bound modulo 65536.
        ("prior-alpha", "inf"),
        ("prior-beta", "1e308"),
        ("prior-beta", "nan"),
        ("decay-period-s", "inf"),
        ("prune-interval-s", "0"),
        ("prune-batch", "0"),
        ("prune-below-confidence", "1.5"),
        ("max-receive-bytes", "0"),
        ("listen", "127.0.0.1:70000"),
        ("metrics-listen", "127.0.0.1:99999"),
        # helper-27: each was accepted: retried request_ids applied twice (0), BOUNDED
        # replies cached for ever (nan, inf), a traceback at start (past a C int), a
        # message naming no setting (0 entries, 0 threads), the current directory ("").
        ("dedup-window", "0"),
        ("l3-max-staleness-ms", "nan"),
        ("l3-max-staleness-ms", "inf"),
        ("max-receive-bytes", str(2**31)),
        ("max-concurrent-rpcs", str(2**31)),
        ("busy-timeout-ms", "-1"),
        ("l1-max-entries", "0"),
        ("query-threads", "0"),
        ("grace-s", "nan"),
        ("l2-ttl-s", "nan"),
        ("slow-query-ms", "nan"),
        ("data-dir", ""),
    ],
)
def test_values_that_parse_but_cannot_work_are_refused(flag: str, value: str) -> None:
    with pytest.raises(ValueError, match=flag.replace("-", "_")):
        load_settings([f"--{flag}", value], environ={})


def test_an_unknown_patternstore_variable_is_refused() -> None:
    """helper-27: PATTERNSTORE_AUTH_TOKEN_FILE (one letter short) started the server
    without auth, silently. The client's own variables are let through."""
    with pytest.raises(ValueError, match="did you mean PATTERNSTORE_AUTH_TOKENS_FILE"):
        load_settings([], environ={"PATTERNSTORE_AUTH_TOKEN_FILE": "/etc/tokens"})
    client_side = {"PATTERNSTORE_TARGET": "x:1", "PATTERNSTORE_TOKEN": "t", "HOME": "/"}
    assert load_settings([], environ=client_side).auth_tokens_file == ""
