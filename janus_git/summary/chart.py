"""The daily summary's picture: runs per hour by outcome, and the 8-day success rate.

matplotlib is imported here only, when a summary is made (it costs ~0.5 s), and drawn on the
Agg backend: the daemon has no display.
"""
from __future__ import annotations

import io
from typing import Any

COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "other": "#9e9e9e"}


def draw(s: dict[str, Any]) -> bytes:
    """A PNG of summary S (summary.build's dict)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot: no global state between summaries

    fig = Figure(figsize=(8, 3.2), dpi=80)
    runs, trend = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    _runs(runs, s)
    _trend(trend, s)
    fig.suptitle(f"janus-git {s['date']} ({s['timezone']})", fontsize=10)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


def _runs(ax: Any, s: dict[str, Any]) -> None:
    hours = list(range(len(s["hourly"])))
    bottom = [0] * len(hours)
    for kind, colour in COLOURS.items():
        values = [h[kind] for h in s["hourly"]]
        ax.bar(hours, values, bottom=bottom, color=colour, label=kind, width=0.85)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    from matplotlib.ticker import MaxNLocator
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # runs are whole
    ax.set_title("runs per hour", fontsize=9)
    ax.set_xlabel("hour", fontsize=8)
    ax.set_xticks(hours[::3])
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)


def _trend(ax: Any, s: dict[str, Any]) -> None:
    days = [d["date"][5:] for d in s["previous_days"]] + [s["date"][5:]]
    rates = [d["success_rate"] for d in s["previous_days"]] + [s["success_rate"]]
    xs = [i for i, r in enumerate(rates) if r is not None]
    ax.plot(xs, [rates[i] * 100 for i in xs], marker="o", color=COLOURS["succeeded"])
    ax.set_ylim(0, 105)
    ax.set_xticks(range(len(days)), days, rotation=45)
    ax.set_title("success rate, %", fontsize=9)
    ax.tick_params(labelsize=7)
