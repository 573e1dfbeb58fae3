"""Translations and number and date formatting for the report languages.

Each language is one JSON file in translations/: "messages" maps a key to
a string with {name} placeholders, or to a dict of CLDR plural forms for
messages that take a count; "locale" contains the digits, separators, month
names and date patterns. Numbers passed as placeholder values are
formatted with the language's digits and separators.

Dates and times are shown in UTC in every language.
"""

from __future__ import annotations

import datetime
import functools
import json
import string
from pathlib import Path

TRANSLATIONS_DIR = Path(__file__).resolve().parent / "translations"
LANGUAGES = ("en", "ar")


def plural_category(language: str, count: int) -> str:
    """Return the CLDR plural category of an integer count.

    Rules from the CLDR plural rules for cardinals: English has one and
    other; Arabic has zero, one, two, few (n % 100 in 3..10), many
    (n % 100 in 11..99) and other.
    """
    count = abs(int(count))
    if language == "ar":
        if count == 0:
            return "zero"
        if count == 1:
            return "one"
        if count == 2:
            return "two"
        if 3 <= count % 100 <= 10:
            return "few"
        if 11 <= count % 100 <= 99:
            return "many"
        return "other"
    return "one" if count == 1 else "other"


class Locale:
    """Messages and formats of one report language."""

    def __init__(self, language: str):
        if language not in LANGUAGES:
            raise ValueError(f"invalid language {language!r}; expected one of {', '.join(LANGUAGES)}")
        with open(TRANSLATIONS_DIR / f"{language}.json", encoding="utf-8") as handle:
            data = json.load(handle)
        self.language = language
        self.messages: dict[str, str | dict[str, str]] = data["messages"]
        formats = data["locale"]
        self.direction: str = formats["direction"]
        self.months: list[str] = formats["months"]
        self.date_pattern: str = formats["date"]
        self.short_date_pattern: str = formats["short_date"]
        self.datetime_pattern: str = formats["datetime"]
        self.time_pattern: str = formats["time"]
        self.group_separator: str = formats["group_separator"]
        self.decimal_separator: str = formats["decimal_separator"]
        self.percent_pattern: str = formats["percent"]
        self.list_separator: str = formats["list_separator"]
        self.list_and: str = formats["list_and"]
        self._digits = str.maketrans("0123456789", formats["digits"])
        if len(self.months) != 12:
            raise ValueError(f"{language}.json lists {len(self.months)} month names; expected 12")

    # -- numbers -------------------------------------------------------------

    def digits(self, text: str) -> str:
        """Replace ASCII digits with the language's digits."""
        return text.translate(self._digits)

    def number(self, value: int | float, decimals: int = 0) -> str:
        """Format a number with grouped thousands, e.g. 12,345 or ١٢٬٣٤٥."""
        text = f"{value:,.{decimals}f}"
        text = text.replace(",", "\0").replace(".", self.decimal_separator).replace("\0", self.group_separator)
        return self.digits(text)

    def percent(self, value: float, decimals: int = 0) -> str:
        return self.percent_pattern.format(value=self.number(value, decimals))

    def size(self, byte_count: int) -> str:
        """Format a byte count in KB, MB or GB (powers of 1000), e.g. 3.2 MB."""
        for unit, scale in (("size_gb", 1e9), ("size_mb", 1e6), ("size_kb", 1e3)):
            if byte_count >= scale:
                return self.text(unit, value=self.number(byte_count / scale, 1))
        return self.text("size_bytes", value=self.number(byte_count))

    # -- dates ---------------------------------------------------------------

    def _parts(self, epoch_s: float) -> dict[str, str]:
        moment = datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc)
        return {
            "day": self.digits(str(moment.day)),
            "month": self.months[moment.month - 1],
            "year": self.digits(str(moment.year)),
            "hour": self.digits(f"{moment.hour:02d}"),
            "minute": self.digits(f"{moment.minute:02d}"),
        }

    def date(self, epoch_s: float) -> str:
        return self.date_pattern.format(**self._parts(epoch_s))

    def short_date(self, epoch_s: float) -> str:
        """Format the day and month without the year, for chart ticks."""
        return self.short_date_pattern.format(**self._parts(epoch_s))

    def datetime(self, epoch_s: float | None) -> str:
        if epoch_s is None:
            return self.text("not_available")
        return self.datetime_pattern.format(**self._parts(epoch_s))

    def time(self, epoch_s: float) -> str:
        return self.time_pattern.format(**self._parts(epoch_s))

    # -- messages ------------------------------------------------------------

    def has(self, key: str) -> bool:
        return key in self.messages

    def text(self, key: str, count: int | None = None, **values) -> str:
        """Return the message `key` with placeholders filled; numbers are formatted for the locale.

        A message with plural forms picks its form by `count`, which is also
        available to it as {count}.
        """
        try:
            message = self.messages[key]
        except KeyError:
            raise KeyError(f"message {key!r} is missing from {self.language}.json") from None
        if isinstance(message, dict):
            if count is None:
                raise ValueError(f"message {key!r} has plural forms; pass count")
            message = message.get(plural_category(self.language, count), message["other"])
        if count is not None:
            values["count"] = count
        formatted = {name: self.number(value) if isinstance(value, int) and not isinstance(value, bool) else value
                     for name, value in values.items()}
        return message.format(**formatted)

    def label(self, group: str, name: str | None) -> str:
        """Return the translated name of a category, severity, stage, role or status; unknown names as they are."""
        if name is None:
            return self.text("not_available")
        key = f"{group}.{name}"
        return self.text(key) if key in self.messages else name.replace("_", " ")

    def join(self, items: list[str]) -> str:
        return self.list_separator.join(items)

    def join_and(self, items: list[str]) -> str:
        """Join a list as a sentence does: "a, b and c" in English, "a، b وc" in Arabic."""
        if len(items) <= 1:
            return "".join(items)
        return self.list_separator.join(items[:-1]) + self.list_and + items[-1]


@functools.lru_cache(maxsize=len(LANGUAGES))
def load_locale(language: str) -> Locale:
    return Locale(language)


def message_placeholders(message: str | dict[str, str]) -> set[str]:
    """Return the placeholder names used by a message (all plural forms together)."""
    forms = message.values() if isinstance(message, dict) else [message]
    names = set()
    for form in forms:
        names.update(name for _, name, _, _ in string.Formatter().parse(form) if name)
    return names
