"""``nodeguard report``: per-episode sources with shared networks, CSV, and the PNG timeline (no root)."""

from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from guard import report
from guard.attacklog import AttackLog
from guard.cli import cli


def _window(start, end, condemned):
    return {"type": "window", "start": start, "end": end, "condemned": condemned, "sampled": {}, "flows": 0}


def _flow(rule, src, start, end, estimated, sampled=10, proto="tcp", dport=80):
    return {"type": "flow", "start": start, "end": end, "rule": rule, "src": src, "dst": "10.66.0.1",
            "proto": proto, "dport": dport, "iface": "eth0", "sampled": sampled, "estimated": estimated,
            "first": start + 0.5, "last": end - 0.5}


def _records():
    """One SYN episode (1000-1020 s): a botnet of 5 sources in 198.51.100.0/24, two loners in another
    /24, one IPv6 /48 with 3 sources; then an ICMP episode (2000-2010 s) from one source."""
    recs = [{"type": "episode_start", "rule": "syn-flood", "ts": 1000.0}]
    for start in (1000.0, 1010.0):
        recs.append(_window(start, start + 10, {"syn-flood": 7000}))
        for i in range(5):
            recs.append(_flow("syn-flood", f"198.51.100.{10 + i}", start, start + 10, 1000))
        recs.append(_flow("syn-flood", "203.0.113.7", start, start + 10, 900 if start == 1000 else 100))
        recs.append(_flow("syn-flood", "203.0.113.9", start, start + 10, 50))
        for i in range(3):
            recs.append(_flow("syn-flood", f"2001:db8:1:{i}::1", start, start + 10, 10))
    recs.append({"type": "other", "start": 1010.0, "end": 1020.0, "rule": "syn-flood", "sampled": 3,
                 "estimated": 20, "samples_beyond_max_flows": 3})
    recs.append({"type": "episode_end", "rule": "syn-flood", "start": 1000.0, "end": 1020.0,
                 "condemned": 14000, "peak_pps": 700.0})
    recs.append({"type": "episode_start", "rule": "icmp-flood", "ts": 2000.0})
    recs.append(_window(2000.0, 2010.0, {"icmp-flood": 5000}))
    recs.append(_flow("icmp-flood", "192.0.2.66", 2000.0, 2010.0, 5000, proto="icmp", dport=8))
    recs.append({"type": "episode_end", "rule": "icmp-flood", "start": 2000.0, "end": 2010.0,
                 "condemned": 5000, "peak_pps": 500.0})
    return recs


def test_network_of_takes_the_24_and_the_48():
    assert report.network_of("198.51.100.77") == "198.51.100.0/24"
    assert report.network_of("2001:db8:1:2::1") == "2001:db8:1::/48"
    assert report.network_of("not-an-address") == "not-an-address"


def test_sources_sharing_a_network_are_merged_and_loners_stay_addresses():
    rep = report.build(_records(), None, None, None, 10)
    syn, icmp = rep["episodes"]
    rows = {r["source"]: r for r in syn["sources"]}
    assert syn["distinct_sources"] == 5 + 2 + 3
    botnet = rows["5 sources"]
    assert botnet["network"] == "198.51.100.0/24" and botnet["addresses"] == 5
    assert botnet["estimated"] == 10_000 and botnet["peak_pps"] == 500.0  # 5 x 1000 per 10 s window
    assert botnet["first"] == 1000.5 and botnet["last"] == 1019.5
    loner = rows["203.0.113.7"]
    assert loner["network"] == "203.0.113.0/24" and loner["addresses"] == 1
    assert loner["estimated"] == 1000 and loner["peak_pps"] == 90.0  # its busiest window: 900 in 10 s
    assert rows["3 sources"]["network"] == "2001:db8:1::/48"
    assert rows["other"]["estimated"] == 20
    assert [r["source"] for r in syn["sources"]][:2] == ["5 sources", "203.0.113.7"]  # biggest first
    assert icmp["sources"] == [{"rule": "icmp-flood", "source": "192.0.2.66", "network": "192.0.2.0/24",
                                "addresses": 1, "estimated": 5000, "sampled": 10, "first": 2000.5,
                                "last": 2009.5, "peak_pps": 500.0, "protos": ["icmp"], "dports": [8]}]


def test_top_cuts_the_rows_and_says_how_many_more():
    syn = report.build(_records(), None, None, "syn-flood", 2)["episodes"][0]
    assert len(syn["sources"]) == 2 and syn["more"] == 3  # 203.0.113.9, the /48, other


def test_text_names_the_network_and_the_rule_of_each_episode():
    text = report.format_text(report.build(_records(), None, None, None, 10))
    assert "episode syn-flood from 1970-01-01 00:16:40: 10 distinct sources" in text
    line = next(ln for ln in text.splitlines() if "5 sources" in ln)
    assert "198.51.100.0/24" in line and "10000" in line and "00:16:40" in line and "00:16:59" in line


def test_csv_has_a_row_per_source_per_episode_and_is_spreadsheet_safe():
    recs = _records()
    recs.insert(1, _flow("syn-flood", "=HYPERLINK(1)", 1000.0, 1010.0, 1))  # a hostile log line
    out = report.format_csv(report.build(recs, None, None, None, 20))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == report.CSV_COLUMNS
    syn = [r for r in rows if r["episode_rule"] == "syn-flood"]
    assert len(syn) == 6 and len(rows) == 7  # 5-source /24, 2 loners, /48, other, hostile
    bot = next(r for r in syn if r["network"] == "198.51.100.0/24")
    assert bot["source"] == "5 sources" and bot["estimated"] == "10000" and bot["addresses"] == "5"
    assert bot["episode_start"] == "1970-01-01T00:16:40Z" and bot["episode_end"] == "1970-01-01T00:17:00Z"
    assert bot["first_seen"] == "1970-01-01T00:16:40Z" and bot["peak_pps"] == "500.0" and bot["ports"] == "80"
    assert all(not r[c].startswith(("=", "+", "-", "@")) for r in rows for c in report.CSV_COLUMNS)
    assert any(r["source"] == "?HYPERLINK?1?" for r in rows)
    assert report._cell("-1+2") == "'-1?2" and report._cell(7) == 7 and report._cell(-3) == -3


def test_csv_through_the_cli_quotes_every_text_cell_that_starts_like_a_formula(tmp_path):
    """OWASP's list: =, +, -, @, tab, CR. Text keeps a safe alphabet where only '-' starts a formula,
    and is quoted then; numbers (-3 too) stay numbers."""
    recs = _records()
    hostile = ["=cmd|'/c calc'!A1", "+1+1", "-2+3", "@SUM(1)", "\t=1", "\r=1"]
    for i, src in enumerate(hostile):
        recs.insert(1, _flow("syn-flood", src, 1000.0, 1010.0, 1000 + i))
    path = tmp_path / "attacks.jsonl"
    log = AttackLog(path, 1 << 20, 2)
    for rec in recs:
        log.write(rec)
    log.close()
    res = subprocess.run([sys.executable, "-m", "guard", "report", "--log", str(path), "--format", "csv",
                          "--top", "20"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    cells = [r[c] for r in rows for c in report.CSV_COLUMNS]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    sources = {r["source"] for r in rows}
    assert {"?cmd??/c calc??A1", "?1?1", "'-2?3", "?SUM?1?"} <= sources, sources  # only '-' is in the alphabet
    assert report._cell("\t=1") == report._cell("\r=1") == "??1"


@pytest.mark.parametrize("top", ["-1", "0", "10001", "99999999999999999999999"])
def test_report_top_is_from_1_to_10000(tmp_path, top):
    (tmp_path / "attacks.jsonl").write_text("")
    res = subprocess.run([sys.executable, "-m", "guard", "report", "--log", str(tmp_path / "attacks.jsonl"),
                          "--top", top], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr == f"nodeguard: Invalid value for '--top': {top} is not in the range 1<=x<=10000.\n"


def test_csv_and_json_through_the_cli(tmp_path):
    path = tmp_path / "attacks.jsonl"
    log = AttackLog(path, 1 << 20, 2)
    for rec in _records():
        log.write(rec)
    log.close()
    runner = CliRunner()
    res = runner.invoke(cli, ["report", "--log", str(path), "--format", "csv", "--rule", "icmp-flood"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[1].startswith("icmp-flood,1970-01-01T00:33:20Z,")
    rep = json.loads(runner.invoke(cli, ["report", "--log", str(path), "--format", "json"]).output)
    assert rep["episodes"][0]["sources"][0]["network"] == "198.51.100.0/24"
    bad = runner.invoke(cli, ["report", "--log", str(path), "--plot", str(tmp_path / "t.gif")])
    assert bad.exit_code == 2 and "FILE.png" in bad.output


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def test_plot_png_is_a_valid_png_of_the_expected_size(tmp_path):
    from guard.report_plot import PNG_SIZE
    path = tmp_path / "attacks.jsonl"
    log = AttackLog(path, 1 << 20, 2)
    for rec in _records():
        log.write(rec)
    log.close()
    png = tmp_path / "timeline.png"
    res = CliRunner().invoke(cli, ["report", "--log", str(path), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    data = png.read_bytes()
    assert _png_size(data) == PNG_SIZE
    assert data.endswith(b"IEND\xaeB`\x82") and len(data) > 10_000


def test_plot_png_of_an_empty_log_says_so(tmp_path):
    from guard.report_plot import PNG_SIZE
    png = tmp_path / "empty.png"
    (tmp_path / "empty.jsonl").write_text("")
    res = CliRunner().invoke(cli, ["report", "--log", str(tmp_path / "empty.jsonl"), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert _png_size(png.read_bytes()) == PNG_SIZE


def test_short_reports_are_binned_per_window_and_long_ones_per_minute():
    from guard.report_plot import bin_seconds
    short = report.build(_records()[:12], None, None, None, 10)
    assert bin_seconds(short) == 10
    assert bin_seconds(report.build(_records(), None, None, None, 10)) == 60  # 1000 .. 2010 s spans > 10 min


def test_a_flood_from_random_sources_is_called_spread_not_listed_as_culprits():
    recs = [{"type": "episode_start", "rule": "syn-flood", "ts": 0.0}, _window(0.0, 10.0, {"syn-flood": 20_000})]
    recs += [_flow("syn-flood", f"{i % 200 + 1}.{i % 7}.{i}.1", 0.0, 10.0, 100, sampled=1) for i in range(200)]
    recs.append({"type": "episode_end", "rule": "syn-flood", "start": 0.0, "end": 10.0, "condemned": 20_000,
                 "peak_pps": 2000.0})
    rep = report.build(recs, None, None, None, 5)
    ep = rep["episodes"][0]
    assert ep["spread"] and ep["distinct_sources"] == 200 and ep["more"] == 195
    assert "random (spoofed) source addresses" in report.format_text(rep)
    from guard.report_plot import episode_label
    assert episode_label(ep) == "syn-flood: 200 sources, none over 5 % (spoofed?)"
    assert not report.build(_records(), None, None, None, 5)["episodes"][0]["spread"]


def test_would_be_drops_of_monitor_mode_are_reported_apart_from_drops():
    recs = [{"type": "episode_start", "rule": "syn-flood", "mode": "monitor", "ts": 100.0},
            _window(100.0, 110.0, {"syn-flood/monitor": 3000, "icmp-flood": 400}),
            dict(_flow("syn-flood", "198.51.100.1", 100.0, 110.0, 3000), mode="monitor"),
            dict(_flow("icmp-flood", "198.51.100.2", 100.0, 110.0, 400, proto="icmp", dport=8), mode="enforce"),
            {"type": "episode_end", "rule": "syn-flood", "mode": "monitor", "start": 100.0, "end": 110.0,
             "condemned": 3000, "peak_pps": 300.0}]
    rep = report.build(recs, None, None, None, 10)
    assert [e["rule"] for e in rep["episodes"]] == ["syn-flood/monitor"]
    assert set(rep["top_sources"]) == {"syn-flood/monitor", "icmp-flood"}
    assert rep["timeline"][0]["condemned"] == {"syn-flood/monitor": 3000, "icmp-flood": 400}
    only = report.build(recs, None, None, "syn-flood", 10)
    assert set(only["top_sources"]) == {"syn-flood/monitor"}


def test_bans_are_listed_and_a_flow_without_samples_next_to_sampled_ones_is_fine():
    """A source banned by escalation: its last window can hold kernel-counted drops that were not
    sampled (proto None) next to its sampled flows; ban/unban records are listed, filtered by rule."""
    recs = [_window(3000.0, 3010.0, {"icmp-flood": 900}),
            _flow("icmp-flood", "192.0.2.7", 3000.0, 3010.0, 800, proto="icmp", dport=8),
            _window(3010.0, 3020.0, {"icmp-flood": 5, "banned": 90000}),
            _flow("icmp-flood", "192.0.2.7", 3010.0, 3020.0, 5, sampled=0, proto=None, dport=None),
            {"type": "ban", "ts": 3010.0, "src": "192.0.2.7", "groups": ["icmp-flood"], "after_s": 3,
             "expires": 3310.0},
            {"type": "ban", "ts": 3011.0, "src": "2001:db8::/64", "groups": ["limit-udp"], "after_s": 3,
             "expires": 3311.0},
            {"type": "unban", "ts": 3320.0, "src": "192.0.2.7", "why": "expired"}]
    rep = report.build(recs, None, None, None, 10)
    assert rep["top_sources"]["icmp-flood"][0]["protos"] == ["icmp"]
    assert [(b["type"], b["src"]) for b in rep["bans"]] == [("ban", "192.0.2.7"), ("ban", "2001:db8::/64"),
                                                            ("unban", "192.0.2.7")]
    text = report.format_text(rep)
    assert "bans (escalation, UTC):" in text and "over icmp-flood, until" in text and "expired" in text
    only = report.build(recs, None, None, "icmp-flood", 10)
    assert [b["src"] for b in only["bans"] if b["type"] == "ban"] == ["192.0.2.7"]
