"""Embed a subset of an Arabic font in the report, so it renders and prints without installed fonts.

The font is Noto Naskh Arabic from Debian's fonts-noto-core package. Only
the characters the report uses are kept, with every OpenType layout
feature, because Arabic needs its contextual forms and ligatures (GSUB)
and mark positioning (GPOS) to render joined. The subset is embedded as a
base64 TrueType data URL in an @font-face rule.

Where the font file is not found, the report logs a warning and still
names the family. A viewer that has the font installed uses it, and any
other browser falls back to its own Arabic font.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

FONT_ENV_VARIABLE = "WARDWATCH_ARABIC_FONT"
EMBEDDED_FAMILY = "WardWatch Arabic"
# Paths of fonts-noto-core on Debian and Ubuntu, regular then bold.
FONT_CANDIDATES = {
    "normal": ("/usr/share/fonts/truetype/noto/NotoNaskhArabic-Regular.ttf",),
    "bold": ("/usr/share/fonts/truetype/noto/NotoNaskhArabic-Bold.ttf",),
}
FALLBACK_FAMILIES = '"Noto Naskh Arabic", "Noto Sans Arabic", "DejaVu Sans", sans-serif'


def find_font(weight: str) -> Path | None:
    """Return the Arabic font file of this weight; $WARDWATCH_ARABIC_FONT overrides the regular one."""
    override = os.environ.get(FONT_ENV_VARIABLE)
    if override and weight == "normal":
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"${FONT_ENV_VARIABLE} names {path}, which does not exist; "
                                    "point it at a TrueType font with Arabic glyphs")
        return path
    for candidate in FONT_CANDIDATES[weight]:
        if os.path.isfile(candidate):
            return Path(candidate)
    return None


def subset_font(path: Path, text: str) -> bytes:
    """Return a TrueType font with the glyphs `text` needs, keeping all layout features."""
    from fontTools import subset

    options = subset.Options()
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.notdef_outline = True
    options.glyph_names = False
    font = subset.load_font(str(path), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=text)
    subsetter.subset(font)
    buffer = io.BytesIO()
    subset.save_font(font, buffer, options)
    return buffer.getvalue()


def arabic_font_css(text: str) -> tuple[str, str]:
    """Return (@font-face rules, font-family list) for Arabic text.

    The rules embed a subset of the font for the characters of `text`;
    they are empty when no font file is found.
    """
    rules = []
    for weight in ("normal", "bold"):
        path = find_font(weight)
        if path is None:
            logger.warning("Arabic font (%s) not found at %s; the report names Noto Naskh Arabic "
                           "and relies on the viewer's fonts. Install fonts-noto-core or set $%s",
                           weight, ", ".join(FONT_CANDIDATES[weight]), FONT_ENV_VARIABLE)
            continue
        data = base64.b64encode(subset_font(path, text)).decode("ascii")
        rules.append(
            "@font-face { font-family: \"%s\"; font-weight: %s; font-style: normal;"
            " src: url(data:font/ttf;base64,%s) format(\"truetype\"); }" % (EMBEDDED_FAMILY, weight, data)
        )
    families = f'"{EMBEDDED_FAMILY}", {FALLBACK_FAMILIES}' if rules else FALLBACK_FAMILIES
    return "\n".join(rules), families
