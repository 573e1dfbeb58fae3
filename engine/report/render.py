"""Render gathered report data as one self-contained HTML page.

The page fetches nothing: the stylesheet is inline, charts are inline SVG
and the Arabic font is embedded (engine.report.fonts). Every section is
always present with its id. A section without data states so in one
sentence.
Addresses, technique ids, CVE ids and text recorded by sensors stay in
their own script and direction inside <bdi>, so right-to-left text does
not reorder them.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from engine import __version__
from engine.report import plots
from engine.report.fonts import arabic_font_css
from engine.report.locale import Locale, load_locale
from engine.taxonomy import SEVERITIES

SECTION_IDS = (
    "summary", "timeline", "sources-targets", "stages", "assets",
    "findings", "actions", "forecasts", "capture-health",
)
STYLESHEET_PATH = Path(__file__).with_name("report.css")
LATIN_FONT_FAMILIES = '"DejaVu Sans", "Liberation Sans", Arial, sans-serif'
# How many affected addresses a findings row names before "and N more".
AFFECTED_SHOWN = 5
CATEGORY_SUMMARY_LINES = 6


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def isolate(text: Any, css_class: str = "") -> str:
    """Wrap text whose direction must not follow the page (addresses, ids, sensor text) in <bdi dir=ltr>."""
    if text is None or text == "":
        return "&#8212;"
    class_attribute = f' class="{css_class}"' if css_class else ""
    return f'<bdi dir="ltr"{class_attribute}>{escape(text)}</bdi>'


class ReportRenderer:
    def __init__(self, report: dict[str, Any], locale: Locale):
        self.report = report
        self.locale = locale

    # -- small pieces --------------------------------------------------------

    def t(self, key: str, count: int | None = None, **values) -> str:
        """Return the escaped message; values are escaped before they are filled in."""
        safe = {name: value if isinstance(value, (int, float)) else escape(value) for name, value in values.items()}
        return self.locale.text(key, count=count, **safe)

    def severity(self, severity: str | None) -> str:
        if severity is None:
            return "&#8212;"
        return f'<span class="severity sev-{escape(severity)}">{escape(self.locale.label("severity", severity))}</span>'

    def label(self, group: str, name: str | None) -> str:
        key = f"{group}.{name}"
        if name is not None and not self.locale.has(key):
            return isolate(name)
        return escape(self.locale.label(group, name))

    def number(self, value: int | float | None, decimals: int = 0) -> str:
        if value is None:
            return escape(self.locale.text("not_available"))
        return escape(self.locale.number(value, decimals))

    def when(self, epoch_s: float | None) -> str:
        return escape(self.locale.datetime(epoch_s))

    def table(self, headers: list[tuple[str, bool]], rows: list[list[str]]) -> str:
        """Return a table; headers are (message key, numeric) and cells are ready markup."""
        numeric_class = ' class="number"'
        head = "".join(
            f'<th{numeric_class if numeric else ""} scope="col">{self.t(key)}</th>' for key, numeric in headers
        )
        body = []
        for row in rows:
            cells = "".join(
                f'<td{numeric_class if numeric else ""}>{cell}</td>' for cell, (_, numeric) in zip(row, headers)
            )
            body.append(f"<tr>{cells}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def empty(self, key: str, **values) -> str:
        return f'<p class="empty">{self.t(key, **values)}</p>'

    def plot(self, svg: str, caption_key: str) -> str:
        return f'<figure class="plot">{svg}<figcaption>{self.t(caption_key)}</figcaption></figure>'

    def section(self, section_id: str, body: str) -> str:
        return (f'<section id="{section_id}"><h2>{self.t("section." + section_id)}</h2>\n'
                f"{body}\n</section>")

    # -- sections ------------------------------------------------------------

    def summary_section(self) -> str:
        summary = self.report["summary"]
        parts = []

        overall = summary["overall_risk"]
        risk_label = self.t("risk.none") if overall == "none" else escape(self.locale.label("severity", overall))
        if overall == "none":
            reason = self.t("summary.risk_none")
        else:
            reached_by = self.counted_kinds([("count.incident_alerts", summary["overall_risk_alerts"]),
                                             ("count.findings", summary["overall_risk_findings"])])
            reason = self.t("summary.risk_reason", severity=self.locale.label("severity", overall), items=reached_by)
        parts.append(f'<h3>{self.t("summary.risk_heading")}</h3>'
                     f'<p><span class="risk sev-{escape(overall)}" id="overall-risk">{risk_label}</span>{reason}</p>')

        happened = [f'<h3>{self.t("summary.happened_heading")}</h3>']
        if summary["alerts"]:
            happened.append("<p>" + self.t("summary.happened", count=summary["alerts"],
                                           detections=summary["detections"], open=summary["open_alerts"]) + "</p>")
            lines = [
                "<li>" + self.t("summary.category_line", count=entry["alerts"],
                                category=self.locale.label("category", entry["category"]),
                                severity=self.locale.label("severity", entry["max_severity"])) + "</li>"
                for entry in summary["by_category"][:CATEGORY_SUMMARY_LINES]
            ]
            happened.append(f"<ul>{''.join(lines)}</ul>")
        else:
            happened.append(self.empty("summary.happened_none"))
        if summary["stored_alerts"]:
            happened.append("<p>" + self.stored_sentence(summary) + "</p>")

        services = [f'<h3>{self.t("summary.services_heading")}</h3>']
        if not self.report["assets"]["total"]:
            services.append(self.empty("summary.services_no_inventory"))
        elif not summary["clinical_services"]:
            services.append(self.empty("summary.services_none"))
        else:
            lines = [
                "<li>" + self.t("summary.service_line", count=entry["alerts"],
                                service=self.locale.label("device_class", entry["device_class"]),
                                affected=entry["assets_with_alerts"], assets=entry["assets"],
                                severity=self.locale.label("severity", entry["max_severity"])) + "</li>"
                for entry in summary["clinical_services"]
            ]
            services.append(f"<ul>{''.join(lines)}</ul>")

        done = [f'<h3>{self.t("summary.done_heading")}</h3>']
        automatic = summary["automatic_actions"]
        if automatic["total"]:
            done.append("<p>" + self.t("summary.done", count=automatic["total"]) + "</p>")
            lines = ["<li>" + self.t("summary.status_line", status=self.locale.label("status", status), count=count)
                     + "</li>" for status, count in automatic["by_status"].items()]
            done.append(f"<ul>{''.join(lines)}</ul>")
        else:
            done.append(self.empty("summary.done_none"))

        trend = [f'<h3>{self.t("summary.trend_heading")}</h3>', f"<p>{self.trend_sentence(summary)}</p>"]
        rows = [[self.severity(s), self.number(summary["by_severity"][s]), self.number(summary["previous_by_severity"][s])]
                for s in reversed(SEVERITIES)]
        trend.append(self.table([("column.severity", False), ("column.this_period", True),
                                 ("column.previous_period", True)], rows))

        parts.append('<div class="summary-grid"><div>' + "".join(happened) + "".join(services) + "</div><div>"
                     + "".join(done) + "".join(trend) + "</div></div>")
        parts.append(self.decisions(summary["decisions"]))
        return self.section("summary", "\n".join(parts))

    def counted_kinds(self, counts: list[tuple[str, int]]) -> str:
        """Return unescaped text such as "2 incident alerts and 1 vulnerability finding", leaving out zero counts."""
        phrases = [self.locale.text(key, count=count) for key, count in counts if count]
        return self.locale.join_and(phrases)

    def stored_sentence(self, summary: dict) -> str:
        """Return the sentence that adds findings and forecasts to the incident alerts, as `alerts list` counts them."""
        kinds = self.counted_kinds([("count.incident_alerts", summary["alerts"]), ("count.findings", summary["findings"]),
                                    ("count.forecasts", summary["forecasts"])])
        total = self.locale.text("count.alerts", count=summary["stored_alerts"])
        # The command is markup, so the other values are escaped here instead of in t().
        return self.locale.text("summary.stored", total=escape(total), kinds=escape(kinds),
                                command=isolate("wardwatch alerts list", "code"))

    def trend_sentence(self, summary: dict) -> str:
        now, before = summary["alerts"], summary["previous_alerts"]
        if not now and not before:
            return self.t("summary.trend_both_empty")
        if not before:
            return self.t("summary.trend_new")
        change = summary["change_percent"]
        percent = self.locale.percent(abs(change), 1 if abs(change) < 10 else 0)
        if change > 0:
            key = "summary.trend_up"
        elif change < 0:
            key = "summary.trend_down"
        else:
            key = "summary.trend_same"
        return self.t(key, count=before, percent=percent)

    def decisions(self, decisions: dict) -> str:
        parts = [f'<h3 id="decisions">{self.t("summary.decide_heading")}</h3>']
        if not decisions["total"]:
            parts.append(self.empty("summary.decide_none"))
            return "".join(parts)
        parts.append("<p>" + self.t("summary.decide", count=decisions["total"],
                                    unanswered=decisions["unanswered_alerts"],
                                    escalated=decisions["escalated_actions"], failed=decisions["failed_actions"],
                                    findings=decisions["serious_findings"]) + "</p>")
        rows = []
        for item in decisions["items"]:
            group = "action" if item["type"].endswith("_action") else "category"
            addresses = " &#8594; ".join(isolate(a) for a in (item["src_ip"], item["dst_ip"]) if a) or "&#8212;"
            rows.append([self.label("decision", item["type"]), self.severity(item["severity"]),
                         self.label(group, item["category"]), addresses, self.when(item["last_seen"])])
        parts.append(self.table([("column.item", False), ("column.severity", False), ("column.category", False),
                                 ("column.addresses", False), ("column.when", False)], rows))
        return "".join(parts)

    def timeline_section(self) -> str:
        timeline = self.report["timeline"]
        if not self.report["summary"]["alerts"]:
            return self.section("timeline", self.empty("timeline.empty"))
        parts = ["<p>" + self.t("timeline.intro", bucket=self.bucket_text(timeline["bucket_s"])) + "</p>"]
        categories = timeline["by_category"]
        palette = _category_palette(list(categories))
        parts.append(self.plot(plots.stacked_timeline(
            timeline["bucket_starts"], timeline["bucket_s"], categories, palette, self.locale,
            "category", "timeline-category"), "timeline.by_category"))
        parts.append(self.plot(plots.stacked_timeline(
            timeline["bucket_starts"], timeline["bucket_s"], timeline["by_severity"], plots.SEVERITY_COLORS,
            self.locale, "severity", "timeline-severity"), "timeline.by_severity"))
        return self.section("timeline", "\n".join(parts))

    def bucket_text(self, bucket_s: int) -> str:
        if bucket_s % 86400 == 0:
            return self.locale.text("duration.days", count=bucket_s // 86400)
        if bucket_s % 3600 == 0:
            return self.locale.text("duration.hours", count=bucket_s // 3600)
        return self.locale.text("duration.minutes", count=bucket_s // 60)

    def endpoints_section(self) -> str:
        sources, targets = self.report["top_sources"], self.report["top_targets"]
        if not sources and not targets:
            return self.section("sources-targets", self.empty("endpoints.empty"))
        parts = [f'<p>{self.t("endpoints.intro")}</p>']
        for key, entries, prefix in (("endpoints.sources", sources, "sources"), ("endpoints.targets", targets, "targets")):
            parts.append(f"<h3>{self.t(key)}</h3>")
            if not entries:
                parts.append(self.empty("endpoints.empty"))
                continue
            parts.append(self.plot(plots.horizontal_bars(
                [e["ip"] for e in entries], [e["alerts"] for e in entries], self.locale,
                self.locale.text("endpoints.axis"), prefix,
                [plots.SEVERITY_COLORS[e["max_severity"]] for e in entries]), key))
            rows = [[isolate(e["ip"], "code"), self.number(e["alerts"]), self.number(e["detections"]),
                     self.severity(e["max_severity"]),
                     escape(self.locale.join([self.locale.label("category", c) for c in e["categories"]]))]
                    for e in entries]
            parts.append(self.table([("column.address", False), ("column.alerts", True), ("column.detections", True),
                                     ("column.severity", False), ("column.categories", False)], rows))
        return self.section("sources-targets", "\n".join(parts))

    def stages_section(self) -> str:
        stages = self.report["stages"]
        if not any(stage["alerts"] for stage in stages):
            return self.section("stages", self.empty("stages.empty"))
        parts = [f'<p>{self.t("stages.intro")}</p>']
        parts.append(self.plot(plots.horizontal_bars(
            [self.locale.label("stage", s["stage"]) for s in stages], [s["alerts"] for s in stages],
            self.locale, self.locale.text("stages.axis"), "stages"), "stages.chart"))
        rows = [[self.label("stage", s["stage"]), self.number(s["alerts"]), self.number(s["detections"]),
                 self.number(s["sources"]), self.when(s["first_seen"]) if s["alerts"] else "&#8212;",
                 self.when(s["last_seen"]) if s["alerts"] else "&#8212;"] for s in stages]
        parts.append(self.table([("column.stage", False), ("column.alerts", True), ("column.detections", True),
                                 ("column.sources", True), ("column.first_seen", False), ("column.last_seen", False)],
                                rows))
        return self.section("stages", "\n".join(parts))

    def assets_section(self) -> str:
        assets = self.report["assets"]
        if not assets["total"]:
            return self.section("assets", self.empty("assets.empty"))
        parts = [f'<p>{self.t("assets.intro", total=assets["total"], with_alerts=assets["devices_with_alerts"])}</p>']
        classes = assets["by_class"]
        parts.append(self.plot(plots.horizontal_bars(
            [self.locale.label("device_class", c["device_class"]) for c in classes], [c["alerts"] for c in classes],
            self.locale, self.locale.text("assets.axis"), "assets",
            [plots.SEVERITY_COLORS.get(c["max_severity"], "#9aa5b1") for c in classes]), "assets.chart"))
        rows = [[self.label("device_class", c["device_class"]), self.number(c["assets"]),
                 self.number(c["assets_with_alerts"]), self.number(c["alerts"]), self.severity(c["max_severity"])]
                for c in classes]
        parts.append(self.table([("column.device_class", False), ("column.devices", True),
                                 ("column.devices_with_alerts", True), ("column.alerts", True),
                                 ("column.severity", False)], rows))
        parts.append(f'<h3>{self.t("assets.devices_heading")}</h3>')
        if assets["devices"]:
            rows = [[isolate(d["ip"], "code"), self.label("device_class", d["device_class"]), isolate(d["vendor"]),
                     self.number(d["alerts"]), self.severity(d["max_severity"])] for d in assets["devices"]]
            parts.append(self.table([("column.address", False), ("column.device_class", False),
                                     ("column.vendor", False), ("column.alerts", True), ("column.severity", False)],
                                    rows))
        else:
            parts.append(self.empty("assets.devices_empty"))
        return self.section("assets", "\n".join(parts))

    def findings_section(self) -> str:
        findings = self.report["findings"]
        if not findings["total"]:
            return self.section("findings", self.empty("findings.empty"))
        parts = [f'<p>{self.t("findings.intro", total=findings["total"], devices=findings["affected_devices"])}</p>']
        rows = []
        for group in findings["groups"]:
            affected_cells = [isolate(a, "code") for a in group["affected"][:AFFECTED_SHOWN]]
            hidden = group["affected_count"] - len(affected_cells)
            if hidden > 0:
                affected_cells.append(self.t("findings.more", count=hidden))
            remediation_key = f"remediation.{group['category']}"
            remediation = (self.t(remediation_key) if self.locale.has(remediation_key)
                           else isolate(group["remediation"]))
            reference = " ".join(isolate(r, "code") for r in (group["cve"], group["technique"]) if r) or "&#8212;"
            rows.append([
                self.severity(group["severity"]),
                f'{self.label("category", group["category"])}<br><span class="detail">{isolate(group["summary"])}</span>',
                f'{self.number(group["affected_count"])}: ' + escape(self.locale.list_separator).join(affected_cells),
                reference, remediation,
            ])
        parts.append(self.table([("column.severity", False), ("column.finding", False), ("column.affected", False),
                                 ("column.reference", False), ("column.remediation", False)], rows))
        return self.section("findings", "\n".join(parts))

    def actions_section(self) -> str:
        actions = self.report["actions"]
        if not actions["total"]:
            return self.section("actions", self.empty("actions.empty"))
        parts = [f'<p>{self.t("actions.intro")}</p>', f'<h3>{self.t("actions.status_heading")}</h3>']
        rows = [[self.label("status", status), self.number(count)] for status, count in actions["by_status"].items()]
        parts.append(self.table([("column.status", False), ("column.count", True)], rows))
        parts.append(f'<h3>{self.t("actions.list_heading")}</h3>')
        rows = [[self.when(item["created_at"]), self.label("action", item["action"]), isolate(item["subject"], "code"),
                 self.label("status", item["status"]), isolate(item["rule"])] for item in actions["items"]]
        parts.append(self.table([("column.when", False), ("column.action", False), ("column.subject", False),
                                 ("column.status", False), ("column.rule", False)], rows))
        return self.section("actions", "\n".join(parts))

    def forecasts_section(self) -> str:
        forecasts = self.report["forecasts"]
        if not forecasts["total"]:
            return self.section("forecasts", self.empty("forecasts.empty"))
        parts = [f'<p>{self.t("forecasts.intro")}</p>']
        rows = []
        for item in forecasts["items"]:
            kind = self.label("forecast", item["forecast"])
            if item["forecast"] == "next_stage" and item["current_stage"] and item["next_stage"]:
                kind += '<br><span class="detail">' + self.t(
                    "forecasts.next_stage_detail", current=self.locale.label("stage", item["current_stage"]),
                    next=self.locale.label("stage", item["next_stage"])) + "</span>"
            confidence = (escape(self.locale.percent(100.0 * item["confidence"]))
                          if item["confidence"] is not None else "&#8212;")
            window = f'{self.when(item["window_start"])} &#8211; {self.when(item["window_end"])}'
            rows.append([kind, self.label("category", item["category"]), confidence, window,
                         isolate(item["src_ip"], "code"), isolate(item["dst_ip"], "code")])
        parts.append(self.table([("column.forecast", False), ("column.category", False), ("column.confidence", True),
                                 ("column.window", False), ("column.source", False), ("column.target", False)], rows))
        return self.section("forecasts", "\n".join(parts))

    def health_section(self) -> str:
        health = self.report["capture_health"]
        if not health["runs"]:
            return self.section("capture-health", self.empty("health.empty"))
        parts = [f'<p>{self.t("health.intro")}</p>']

        span = "&#8212;"
        if health["first_packet_time"] is not None:
            span = f'{self.when(health["first_packet_time"])} &#8211; {self.when(health["last_packet_time"])}'
        rows = [
            [self.t("health.runs"), self.number(health["runs"])],
            [self.t("health.span"), span],
            [self.t("health.packets"), self.number(health["packets"])],
            [self.t("health.bytes"), escape(self.locale.size(health["bytes"]))],
            [self.t("health.flows"), self.number(health["flows"])],
            [self.t("health.alerts"), self.number(health["alerts"])],
            [self.t("health.drops"), self.number(health["drops"])],
            [self.t("health.anomalies"), self.number(health["anomalies_total"])],
        ]
        parts.append(self.table([("column.measure", False), ("column.value", True)], rows))

        parts.append(f'<h3>{self.t("health.anomalies_heading")}</h3>')
        if health["anomalies"]:
            rows = [[isolate(name, "code"), self.number(count)] for name, count in health["anomalies"].items()]
            parts.append(self.table([("column.counter", False), ("column.count", True)], rows))
        else:
            parts.append(self.empty("health.anomalies_none"))

        parts.append(f'<h3>{self.t("health.runs_heading")}</h3>')
        rows = [[isolate(run["source"], "code"), self.when(run["first_packet_time"]), self.number(run["packets"]),
                 self.number(run["flows"]), self.number(run["alerts"])] for run in health["items"]]
        parts.append(self.table([("column.run", False), ("column.first_seen", False), ("column.packets", True),
                                 ("column.flows", True), ("column.alerts", True)], rows))
        return self.section("capture-health", "\n".join(parts))

    # -- page ----------------------------------------------------------------

    def body(self) -> str:
        period = self.report["period"]
        contents = "".join(f'<li><a href="#{s}">{self.t("section." + s)}</a></li>' for s in SECTION_IDS)
        sections = [self.summary_section(), self.timeline_section(), self.endpoints_section(), self.stages_section(),
                    self.assets_section(), self.findings_section(), self.actions_section(),
                    self.forecasts_section(), self.health_section()]
        return (
            f'<header><h1>{self.t("title")}</h1>'
            f'<p class="meta">{self.t("period", start=self.locale.datetime(period["start"]), end=self.locale.datetime(period["end"]))}</p>'
            f'<p class="meta">{self.t("generated", when=self.locale.datetime(self.report["generated_at"]))}</p></header>\n'
            f'<nav><h2>{self.t("contents")}</h2><ol>{contents}</ol></nav>\n'
            + "\n".join(sections)
            + f'\n<footer><p>{self.t("footer", version=__version__)}</p></footer>'
        )


def _category_palette(categories: list[str]) -> dict[str, str]:
    from matplotlib import colormaps

    colors = colormaps["tab20"].colors
    palette = {}
    for index, category in enumerate(sorted(categories)):
        red, green, blue = colors[index % len(colors)][:3]
        palette[category] = f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}"
    return palette


def render_html(report: dict[str, Any], language: str = "en") -> str:
    """Return the report as a complete HTML document in `language` (en or ar)."""
    locale = load_locale(language)
    body = ReportRenderer(report, locale).body()
    stylesheet = STYLESHEET_PATH.read_text(encoding="utf-8")
    font_rules = ""
    families = LATIN_FONT_FAMILIES
    if locale.direction == "rtl":
        # The font subset is cut from the finished body, so it covers exactly the text shown.
        font_rules, arabic_families = arabic_font_css(html.unescape(body))
        families = f"{arabic_families}, {LATIN_FONT_FAMILIES}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{language}" dir="{locale.direction}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(locale.text('title'))}</title>\n"
        f"<style>\n{font_rules}\n:root {{ --report-font: {families}; }}\n{stylesheet}</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
