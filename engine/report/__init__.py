"""Analytical reports in English and Arabic: `wardwatch report`.

gather_report() reads the store into plain data (the JSON format);
render_html() turns that data into one self-contained HTML page.
"""

from engine.report.gather import gather_report, parse_duration
from engine.report.render import SECTION_IDS, render_html

__all__ = ["SECTION_IDS", "gather_report", "parse_duration", "render_html"]
