"""The proxy benchmark's report: a Markdown page and a PNG chart beside it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

CONTENDERS = ("nginx", "unmetered", "metered")


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(result: dict[str, Any], chart: str | None) -> str:
    lines = [
        "# pvgate proxy benchmark",
        "",
        f"Origin: {result.get('origin', '?')}; engine: {result.get('engine', '?')}; "
        f"{result['config']['rounds']} rounds of {result['config']['seconds']} s per contender, "
        "interleaved; wrk -t1 -c50 per worker; every request a page view.",
        "",
        "| workers | contender | req/s | p50 ms | p90 ms | p99 ms | CPU s / 10k req |",
        "|---|---|---|---|---|---|---|",
    ]
    for workers, entry in sorted(result["workers"].items()):
        for name in CONTENDERS:
            m = entry.get(name)
            if not m:
                continue
            lat = m["latency_ms"]
            lines.append(
                f"| {workers} | {name} | {m['rate']:,.0f} | {lat['p50']:.2f} | {lat['p90']:.2f} "
                f"| {lat['p99']:.2f} | {m['cpu_s_per_10k']:.2f} |"
            )
    lines += ["", "| workers | metered_ratio | nginx_ratio |", "|---|---|---|"]
    for workers, entry in sorted(result["workers"].items()):
        lines.append(
            f"| {workers} | {_fmt(entry.get('metered_ratio'), '.3f')} "
            f"| {_fmt(entry.get('nginx_ratio'), '.3f')} |"
        )
    one = result["workers"].get("1", {})
    paced = one.get("paced") or {}
    p99 = paced.get("p99_ms") or {}
    lines += [
        "",
        f"At half the metered maximum ({_fmt(paced.get('rate'), ',.0f')} req/s): p99 "
        f"metered {_fmt(p99.get('metered'), '.2f')} ms, unmetered "
        f"{_fmt(p99.get('unmetered'), '.2f')} ms, difference "
        f"{_fmt(paced.get('p99_delta_ms'), '.2f')} ms.  Metered worker RSS at rest: "
        f"{_fmt(one.get('worker_rss_mb'), '.1f')} MB.",
        "",
        "| target | wanted | met |",
        "|---|---|---|",
    ]
    for name, wanted in result["targets"].items():
        sign = "<=" if name in ("p99_delta_ms", "rss_mb") else ">="
        met = result["met"].get(name)
        lines.append(f"| {name} | {sign} {wanted} | {'n/a' if met is None else met} |")
    lines.append("")
    lines.append("All runs valid." if result["valid"] else "**Some runs were invalid** (see JSON).")
    if chart:
        lines += ["", f"![throughput and latency]({chart})"]
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> bool:
    """Throughput and latency percentiles side by side; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (rates, lats) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = sorted(result["workers"].items())
    width = 0.25
    for i, name in enumerate(CONTENDERS):
        xs, ys = [], []
        for j, (_, entry) in enumerate(groups):
            if entry.get(name):
                xs.append(j + (i - 1) * width)
                ys.append(entry[name]["rate"])
        rates.bar(xs, ys, width, label=name)
    rates.set_xticks(range(len(groups)), [f"{w} worker(s)" for w, _ in groups])
    rates.set_ylabel("requests / s")
    rates.set_title("Throughput")
    rates.legend()
    one = dict(groups).get("1", {})
    for i, name in enumerate(CONTENDERS):
        if one.get(name):
            values = [one[name]["latency_ms"][p] for p in ("p50", "p90", "p99")]
            lats.bar([k + (i - 1) * width for k in range(3)], values, width, label=name)
    lats.set_xticks(range(3), ["p50", "p90", "p99"])
    lats.set_ylabel("ms")
    lats.set_title("Latency at full load, 1 worker")
    lats.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(result: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    png = out / f"proxy-{stamp}.png"
    has_chart = chart(result, png)
    report = out / f"proxy-{stamp}.md"
    report.write_text(markdown(result, png.name if has_chart else None))
    return report
