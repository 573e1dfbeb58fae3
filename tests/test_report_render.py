"""HTML rendering, translations and locale formatting of the report."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import pytest

from engine.analyze.actions import BASE_SEVERITY
from engine.assets.inventory import ROLES
from engine.report.gather import UNCLASSIFIED, UNSTAGED, gather_report
from engine.report.locale import LANGUAGES, Locale, message_placeholders, plural_category
from engine.report.render import SECTION_IDS, render_html
from engine.respond.records import STATUSES
from engine.store import open_store
from engine.taxonomy import ATTACK_CLASSES, SEVERITIES, STAGES
from test_report_gather import DAY_S, seed_report_store

ARABIC_LETTER = re.compile(r"[\u0621-\u064a]")
FINDING_CATEGORIES = ("cleartext_patient_data", "weak_tls", "cleartext_credentials", "smbv1", "mqtt_no_auth",
                      "vulnerable_software")
LOGIN_CATEGORIES = ("account_anomaly", "privileged_access", "insider_access")


class SectionText(HTMLParser):
    """Collect the text of each <section id=...>, the <html> attributes and every src/href."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.html_attributes: dict[str, str] = {}
        self.links: list[str] = []
        self._current: str | None = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "html":
            self.html_attributes = attributes
        for name in ("src", "href"):
            if name in attributes:
                self.links.append(attributes[name])
        if tag == "section":
            if self._current is None:
                self._current = attributes.get("id")
                self.sections.setdefault(self._current, [])
            self._depth += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self._depth -= 1
            if self._depth == 0:
                self._current = None

    def handle_data(self, data):
        if self._current is not None:
            self.sections[self._current].append(data)

    def text(self, section_id: str) -> str:
        return " ".join(" ".join(self.sections[section_id]).split())


def parse(document: str) -> SectionText:
    parser = SectionText()
    parser.feed(document)
    return parser


@pytest.fixture(scope="module")
def seeded_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "wardwatch.db"
    seed_report_store(path)
    conn = open_store(path)
    try:
        return gather_report(conn, DAY_S)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pages(seeded_report):
    return {language: render_html(seeded_report, language) for language in LANGUAGES}


@pytest.mark.parametrize("count, category", [
    (0, "zero"), (1, "one"), (2, "two"), (3, "few"), (10, "few"), (11, "many"), (99, "many"),
    (100, "other"), (101, "other"), (102, "other"), (103, "few"), (111, "many"), (1000, "other"),
])
def test_arabic_plural_categories(count, category):
    assert plural_category("ar", count) == category


@pytest.mark.parametrize("count, category", [(0, "other"), (1, "one"), (2, "other"), (21, "other")])
def test_english_plural_categories(count, category):
    assert plural_category("en", count) == category


def test_arabic_number_format():
    locale = Locale("ar")
    assert locale.number(1234567) == "١٬٢٣٤٬٥٦٧"
    assert locale.number(12.5, 1) == "١٢٫٥"
    assert locale.percent(40) == "٤٠٪"
    assert locale.number(0) == "٠"


def test_english_number_format():
    locale = Locale("en")
    assert locale.number(1234567) == "1,234,567"
    assert locale.percent(12.5, 1) == "12.5%"
    assert locale.size(40_000_000) == "40.0 MB"


def test_arabic_dates_use_month_table():
    locale = Locale("ar")
    # 1767225600 is 2026-01-01 00:00 UTC; 1772323200 is 2026-03-01.
    assert locale.date(1_767_225_600) == "١ يناير ٢٠٢٦"
    assert locale.date(1_772_323_200) == "١ مارس ٢٠٢٦"
    assert locale.datetime(1_767_225_600 + 13 * 3600 + 5 * 60) == "١ يناير ٢٠٢٦، الساعة ١٣:٠٥ بالتوقيت العالمي"


def test_invalid_language():
    with pytest.raises(ValueError, match="invalid language 'fr'"):
        Locale("fr")


def test_translations_have_same_keys():
    english, arabic = Locale("en"), Locale("ar")
    assert set(english.messages) == set(arabic.messages)


@pytest.mark.parametrize("language", LANGUAGES)
def test_translation_placeholders_match(language):
    english, other = Locale("en"), Locale(language)
    for key, message in english.messages.items():
        # A plural form may spell its number out ("تنبيه واحد"), so {count} may be absent.
        expected = message_placeholders(message) - {"count"}
        assert message_placeholders(other.messages[key]) - {"count"} == expected, key


def test_arabic_plural_forms_complete():
    for key, message in Locale("ar").messages.items():
        if isinstance(message, dict):
            assert set(message) == {"zero", "one", "two", "few", "many", "other"}, key


def test_arabic_messages_are_arabic():
    for key, message in Locale("ar").messages.items():
        forms = message.values() if isinstance(message, dict) else [message]
        for form in forms:
            if key == "summary.status_line":
                continue  # "{status}: {count}" has no words of its own
            assert ARABIC_LETTER.search(form), key


@pytest.mark.parametrize("group, names", [
    ("severity", SEVERITIES),
    ("stage", (*STAGES, UNSTAGED)),
    ("category", tuple({a.category for a in ATTACK_CLASSES.values()}) + tuple(BASE_SEVERITY)
     + FINDING_CATEGORIES + LOGIN_CATEGORIES),
    ("device_class", (*ROLES, UNCLASSIFIED)),
    ("status", STATUSES),
])
def test_every_label_translated(group, names):
    for language in LANGUAGES:
        locale = Locale(language)
        missing = [name for name in names if not locale.has(f"{group}.{name}")]
        assert missing == [], f"{language}: {missing}"


@pytest.mark.parametrize("language, direction", [("en", "ltr"), ("ar", "rtl")])
def test_page_language_and_direction(pages, language, direction):
    parser = parse(pages[language])
    assert parser.html_attributes == {"lang": language, "dir": direction}


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_section_present_once(pages, language):
    for section_id in SECTION_IDS:
        assert pages[language].count(f'<section id="{section_id}">') == 1, section_id


@pytest.mark.parametrize("language", LANGUAGES)
def test_page_fetches_nothing(pages, language):
    links = parse(pages[language]).links
    assert links, "the contents list should link to the sections"
    assert all(link.startswith("#") for link in links), links
    # Only the embedded font uses url(), and only with a data URL.
    for url in re.findall(r"url\(([^)]*)\)", pages[language]):
        assert url.startswith("data:") or url.startswith("#"), url[:60]


def test_numbers_match_store_english(pages, seeded_report):
    parser = parse(pages["en"])
    summary = parser.text("summary")
    assert "7 incident alerts were raised in this period, covering 173 detections; 6 of them still open." in summary
    assert "Incident alerts rose by 600% against the previous period, which had 1 alert." in summary
    # Two critical incident alerts (ransomware, login bruteforce) and the critical SSH finding.
    assert "The highest severity seen was Critical, reached by 2 incident alerts and 1 vulnerability finding." in summary
    # 7 incident alerts, 4 findings and 2 forecasts.
    assert ("the alert store holds 13 alerts for this period: 7 incident alerts, 4 vulnerability findings"
            " and 2 forecasts.") in summary
    health = parser.text("capture-health")
    assert "Packets 50,000" in health
    assert "Packets dropped before analysis 5" in health
    assert "40.0 MB" in health
    findings = parser.text("findings")
    assert "4 findings on 4 devices." in findings
    assert "CVE-2024-6387" in findings


def test_numbers_match_store_arabic(pages):
    parser = parse(pages["ar"])
    summary = parser.text("summary")
    # 7 is "few" in Arabic: plural noun, Arabic-Indic digits.
    assert "سُجِّلت ٧ تنبيهات عن حوادث في هذه الفترة، تضم عمليات كشف عددها ١٧٣، والمفتوح منها حتى الآن: ٦." in summary
    assert "ارتفعت تنبيهات الحوادث بنسبة ٦٠٠٪" in summary
    # 2 is "two": the dual noun carries the number, so no digit is shown.
    assert "أعلى خطورة رُصدت هي «حرجة»، والبنود التي بلغتها: تنبيهان عن حوادث وثغرة واحدة." in summary
    # 13 is "many" (singular accusative noun), 7 and 4 are "few", 2 the dual.
    assert "يضم مخزن التنبيهات في هذه الفترة ١٣ تنبيهًا: ٧ تنبيهات عن حوادث، ٤ ثغرات وتوقعان." in summary
    health = parser.text("capture-health")
    assert "الحزم ٥٠٬٠٠٠" in health
    assert "١٬٢٠٠" in health
    # Addresses stay in Latin digits, isolated from the right-to-left text.
    assert '<bdi dir="ltr" class="code">10.1.0.50</bdi>' in pages["ar"]


def test_empty_sections_say_so(tmp_path):
    conn = open_store(tmp_path / "empty.db")
    report = gather_report(conn, DAY_S)
    conn.close()
    for language in LANGUAGES:
        locale = Locale(language)
        parser = parse(render_html(report, language))
        assert sorted(parser.sections) == sorted(SECTION_IDS)
        assert locale.text("actions.empty") in parser.text("actions")
        assert locale.text("findings.empty") in parser.text("findings")
        assert locale.text("forecasts.empty") in parser.text("forecasts")
        assert locale.text("health.empty") in parser.text("capture-health")
        assert locale.text("assets.empty") in parser.text("assets")
        assert locale.text("timeline.empty") in parser.text("timeline")


def test_sensor_text_is_escaped(seeded_report):
    report = dict(seeded_report)
    findings = dict(report["findings"])
    group = dict(findings["groups"][0], summary="<script>alert(1)</script>")
    findings["groups"] = [group] + findings["groups"][1:]
    report["findings"] = findings
    page = render_html(report, "en")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_arabic_font_subset_embedded(pages):
    fonts = pytest.importorskip("fontTools.ttLib")
    match = re.search(r"url\(data:font/ttf;base64,([A-Za-z0-9+/=]+)\)", pages["ar"])
    if match is None:
        pytest.skip("Noto Naskh Arabic is not installed (Debian package fonts-noto-core)")
    font = fonts.TTFont(io.BytesIO(base64.b64decode(match.group(1))))
    cmap = font.getBestCmap()
    title = Locale("ar").text("title")
    for character in set(ARABIC_LETTER.findall(title)):
        assert ord(character) in cmap, character
    # Joining forms come from GSUB, so the subset must keep it.
    assert "GSUB" in font
    # A subset, not the whole font.
    assert len(cmap) < 400
