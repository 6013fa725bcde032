#!/usr/bin/env python3
"""Chart (SVG) or Markdown table of one scripts/bench.sh results file. Standard library only.

    scripts/bench-chart.py RESULTS.tsv OUT.svg [--note TEXT]
                                                   horizontal bars: CPU µs per request, requests/s;
                                                   TEXT, if given, in red under the title
    scripts/bench-chart.py --markdown RESULTS.tsv  the table for docs/PERFORMANCE.md, on stdout

RESULTS.tsv: "# key<TAB>value" metadata lines, then a header row and one row per target
(scripts/bench.sh writes it).
"""

import sys
from html import escape

BAR_H = 22
GAP = 8
LABEL_W = 210
PANEL_W = 330
VALUE_W = 70
PAD = 16
TIERGATE = "#1f6fb2"
PEER = "#8a8f98"
FLOOR = "#c9ccd1"  # the upstream alone


def read(path):
    meta, rows, header = {}, [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith("#"):
                key, _, value = line[1:].strip().partition("\t")
                if key in ("skipped", "note"):
                    meta.setdefault(key, []).append(value)
                elif value:
                    meta[key] = value
                continue
            cells = line.split("\t")
            if header is None:
                header = cells
            else:
                rows.append(dict(zip(header, cells)))
    return meta, rows


def number(row, key):
    try:
        return float(row[key])
    except (KeyError, ValueError):
        return None


def panel(x0, y0, title, rows, key, fmt):
    """One bar panel; rows without a value for key are left out. Returns (svg parts, height)."""
    items = [(r, number(r, key)) for r in rows]
    items = [(r, v) for r, v in items if v is not None]
    out = [f'<text x="{x0}" y="{y0 + 14}" class="h">{escape(title)}</text>']
    top = max([v for _, v in items] or [1]) or 1
    y = y0 + 26
    for r, v in items:
        colour = TIERGATE if r["target"].startswith("tiergate") else FLOOR if r["target"] == "direct" else PEER
        w = max(1.0, v / top * PANEL_W)
        out.append(f'<text x="{x0 + LABEL_W - 8}" y="{y + BAR_H - 7}" text-anchor="end">{escape(r["label"])}</text>')
        out.append(f'<rect x="{x0 + LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" fill="{colour}"/>')
        out.append(f'<text x="{x0 + LABEL_W + w + 6:.1f}" y="{y + BAR_H - 7}">{escape(fmt(v))}</text>')
        y += BAR_H + GAP
    return out, y - y0


def svg(meta, rows, note=None):
    width = PAD * 2 + LABEL_W + PANEL_W + VALUE_W
    parts = []
    y = PAD
    parts.append(f'<text x="{PAD}" y="{y + 16}" class="t">tiergate and peer proxies under the same load, one run (scripts/bench.sh)</text>')
    y += 26
    if note:
        parts.append(f'<text x="{PAD}" y="{y + 12}" class="n">{escape(note)}</text>')
        y += 18
    for line in (
        f'{meta.get("date", "?")} · load average at the start {meta.get("load", "?")}',
        meta.get("machine", "?"),
        f'{meta.get("load generator", "")} · {meta.get("pinning", "")}',
        f'tiergate {meta.get("tiergate", "?")} · {meta.get("peers", "")}',
        "Absolute numbers drift between machines and runs: only ratios within one run count.",
    ):
        parts.append(f'<text x="{PAD}" y="{y + 12}" class="s">{escape(line)}</text>')
        y += 16
    y += 10
    p, h = panel(PAD, y, "Proxy CPU per request, µs (user + system; lower is better)", rows,
                 "cpu_us_per_request", lambda v: f"{v:.1f}")
    parts += p
    y += h + 12
    p, h = panel(PAD, y, "Requests per second (higher is better)", rows, "requests_per_s",
                 lambda v: f"{v:,.0f}")
    parts += p
    y += h + 4
    for key in ("skipped", "note"):
        for s in meta.get(key, []):
            parts.append(f'<text x="{PAD}" y="{y + 12}" class="s">{key} {escape(s)}</text>')
            y += 16
    height = y + PAD
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        "<style>.t{font-size:15px;font-weight:bold}.h{font-weight:bold}.s{fill:#555;font-size:11px}.n{fill:#b00020;font-weight:bold}</style>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        *parts,
        "</svg>",
        "",
    ])


def duration(us):
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def markdown(meta, rows):
    def cell(r, key, fmt):
        v = number(r, key)
        return "—" if v is None else fmt(v)

    lines = [
        "| target | requests/s | p50 | p99 | CPU µs/request | peak RSS MiB | Redis round trips/request | bytes/response |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append("| " + " | ".join([
            r["label"],
            cell(r, "requests_per_s", lambda v: f"{v:,.0f}"),
            cell(r, "p50_us", duration),
            cell(r, "p99_us", duration),
            cell(r, "cpu_us_per_request", lambda v: f"{v:.1f}"),
            cell(r, "peak_rss_mib", lambda v: f"{v:.1f}"),
            cell(r, "redis_trips_per_request", lambda v: f"{v:.4f}"),
            cell(r, "bytes_per_response", lambda v: f"{v:.0f}"),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) == 3 and argv[1] == "--markdown":
        meta, rows = read(argv[2])
        sys.stdout.write(markdown(meta, rows))
    elif len(argv) == 3 or (len(argv) == 5 and argv[3] == "--note"):
        meta, rows = read(argv[1])
        with open(argv[2], "w", encoding="utf-8") as f:
            f.write(svg(meta, rows, argv[4] if len(argv) == 5 else None))
    else:
        sys.stderr.write(__doc__)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
