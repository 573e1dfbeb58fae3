"""Report charts drawn with matplotlib and embedded as inline SVG.

Text stays text in the SVG (svg.fonttype "none"), so the browser shapes
Arabic labels with the page's font, which matplotlib cannot do. The
printed PDF keeps the labels selectable. Element ids are prefixed per
chart because several charts share one HTML document.

Axes run left to right in both languages, as charts in Arabic reports
commonly do; only the labels are translated.
"""

from __future__ import annotations

import io
import re

from engine.report.locale import Locale

SEVERITY_COLORS = {
    "info": "#9aa5b1",
    "low": "#4c8dd6",
    "medium": "#e6b422",
    "high": "#e0662b",
    "critical": "#b3122e",
}
BAR_COLOR = "#2f6f9f"
# Metric font of matplotlib's layout; the browser draws the text with the page's font.
MATPLOTLIB_FAMILIES = {"en": ["DejaVu Sans"], "ar": ["Noto Naskh Arabic", "DejaVu Sans"]}
# Six ticks leave room for a day and month under each time label.
MAX_TIME_TICKS = 6

_ID_PATTERN = re.compile(r'id="([^"]+)"')


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=96)
    return figure, figure.add_subplot()


def _style_axes(axes, locale: Locale) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axes.spines["top"].set_visible(False)
    axes.spines["right"].set_visible(False)
    axes.grid(axis="y", color="#dddddd", linewidth=0.6)
    axes.set_axisbelow(True)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: locale.number(int(value))))


def _to_svg(figure, locale: Locale, prefix: str) -> str:
    import matplotlib

    families = [f for f in MATPLOTLIB_FAMILIES[locale.language] if _font_available(f)] or ["DejaVu Sans"]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix, "font.family": families}):
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    # Make every id unique in the page, and the references to it.
    ids = set(_ID_PATTERN.findall(svg))
    for identifier in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'id="{identifier}"', f'id="{prefix}-{identifier}"')
        svg = svg.replace(f"#{identifier})", f"#{prefix}-{identifier})")
        svg = svg.replace(f'href="#{identifier}"', f'href="#{prefix}-{identifier}"')
    return svg


def _font_available(family: str) -> bool:
    from matplotlib import font_manager

    try:
        font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    except ValueError:
        return False
    return True


def _time_tick_labels(bucket_starts: list[float], bucket_s: int, locale: Locale) -> tuple[list[int], list[str]]:
    step = max(1, -(-len(bucket_starts) // MAX_TIME_TICKS))
    positions = list(range(0, len(bucket_starts), step))
    labels = []
    previous_date = None
    for index in positions:
        start = bucket_starts[index]
        date = locale.short_date(start)
        if bucket_s >= 86400:
            labels.append(date)
        elif date != previous_date:
            labels.append(f"{locale.time(start)}\n{date}")
        else:
            labels.append(locale.time(start))
        previous_date = date
    return positions, labels


def stacked_timeline(bucket_starts: list[float], bucket_s: int, series: dict[str, list[int]],
                     colors: dict[str, str], locale: Locale, group: str, prefix: str) -> str:
    """Draw alerts per time bucket as stacked bars, one colour per series; return SVG markup."""
    figure, axes = _figure(9.0, 3.2)
    positions = list(range(len(bucket_starts)))
    bottoms = [0] * len(bucket_starts)
    for name, counts in series.items():
        if not any(counts):
            continue
        axes.bar(positions, counts, bottom=bottoms, width=0.85, color=colors.get(name),
                 label=locale.label(group, name), linewidth=0)
        bottoms = [b + c for b, c in zip(bottoms, counts)]
    _style_axes(axes, locale)
    tick_positions, tick_labels = _time_tick_labels(bucket_starts, bucket_s, locale)
    axes.set_xticks(tick_positions, tick_labels, fontsize=8)
    axes.set_xlim(-0.6, len(bucket_starts) - 0.4)
    axes.set_xlabel(locale.text("timeline.axis_time"), fontsize=9)
    # Extra padding because the browser's Arabic glyphs are wider than matplotlib measured.
    axes.set_ylabel(locale.text("timeline.axis_alerts"), fontsize=9, labelpad=10)
    axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _to_svg(figure, locale, prefix)


def horizontal_bars(labels: list[str], values: list[int], locale: Locale, axis_label: str, prefix: str,
                    colors: list[str] | None = None) -> str:
    """Draw one horizontal bar per label, the first at the top; return SVG markup."""
    height = 0.9 + 0.32 * max(1, len(labels))
    figure, axes = _figure(7.5, height)
    positions = list(range(len(labels)))[::-1]
    axes.barh(positions, values, color=colors or BAR_COLOR, height=0.7, linewidth=0)
    axes.set_yticks(positions, labels, fontsize=9)
    axes.spines["top"].set_visible(False)
    axes.spines["right"].set_visible(False)
    axes.grid(axis="x", color="#dddddd", linewidth=0.6)
    axes.set_axisbelow(True)
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: locale.number(int(value))))
    axes.set_xlabel(axis_label, fontsize=9)
    for position, value in zip(positions, values):
        axes.annotate(locale.number(value), (value, position), xytext=(3, 0), textcoords="offset points",
                      va="center", fontsize=8)
    return _to_svg(figure, locale, prefix)
