"""The closing summary of ``benchmarks/gpu.sh`` (run here on rows written as ``bench --json``
writes them): DiT-only and end-to-end frames/s, and each policy's speed against the window's at
the same length, computed here from the rows' ms per chunk."""

import importlib.util
from pathlib import Path

from headforcing.bench import BenchRow, write_json

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(policy, seconds, ms, end_to_end):
    return BenchRow(policy, seconds, 21, 18.0, ms / 5, ms, 12000 / ms, 2**30, 0, 900, None, "",
                    end_to_end)  # fmt: skip


def test_the_summary_says_both_frame_rates_and_the_ratio_to_the_window(tmp_path):
    rows = [
        row("window(window=21, sink=0)", 30, 400.0, 25.0),
        row("head_forcing(L54/A90/M216)", 30, 320.0, 28.0),
        row("window(window=21, sink=0)", 120, 500.0, None),
        row("sink(window=12, sink=3)", 120, 250.0, 40.0),
    ]
    path = write_json(rows, tmp_path / "bench.json", compiled="reduce-overhead")
    lines = load_script().summary([path]).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert "frames/s DiT only" in header and "frames/s end to end" in header
    table = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
             for line in lines[2:]]  # fmt: skip
    assert [r["run"] for r in table] == ["reduce-overhead"] * 4
    ours = table[1]
    assert ours["x window"] == f"{400.0 / 320.0:.2f}"
    assert ours["frames/s DiT only"] == f"{12000 / 320.0:.1f}"
    assert ours["frames/s end to end"] == "28.0"
    assert table[2]["frames/s end to end"] == "-"  # not measured
    assert table[3]["x window"] == f"{500.0 / 250.0:.2f}"  # the window of its own length
