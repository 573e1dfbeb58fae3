"""MAC vendor lookup from the IEEE MA-L (OUI) registry.

The registry comes from Debian's ieee-data package
(/usr/share/ieee-data/oui.txt). Where it is absent, a shipped subset of
medical-device vendors (engine/data/oui_medical.tsv) is used, so pumps,
monitors and modalities are still named. Other vendors then show as "".
"""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from importlib import resources

log = logging.getLogger(__name__)

IEEE_OUI_PATH = "/usr/share/ieee-data/oui.txt"
OUI_PATH_ENV_VARIABLE = "WARDWATCH_OUI_PATH"
_HEX_LINE = re.compile(r"^([0-9A-Fa-f]{2})-([0-9A-Fa-f]{2})-([0-9A-Fa-f]{2})\s+\(hex\)\s+(.*\S)")


def parse_oui_text(lines) -> dict[str, str]:
    """Return {"AABBCC": vendor} from the lines of an IEEE oui.txt file."""
    vendors = {}
    for line in lines:
        match = _HEX_LINE.match(line)
        if match:
            vendors["".join(match.group(1, 2, 3)).upper()] = match.group(4).strip()
    return vendors


def _load_medical_subset() -> dict[str, str]:
    text = resources.files("engine.data").joinpath("oui_medical.tsv").read_text(encoding="utf-8")
    vendors = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("prefix\t"):
            continue
        prefix, _, vendor = line.partition("\t")
        vendors[prefix.upper()] = vendor
    return vendors


@lru_cache(maxsize=4)
def load_vendors(path: str | None = None) -> tuple[dict[str, str], str]:
    """Return ({prefix: vendor}, source) from `path`, $WARDWATCH_OUI_PATH or the Debian registry."""
    path = path or os.environ.get(OUI_PATH_ENV_VARIABLE) or IEEE_OUI_PATH
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return parse_oui_text(handle), path
    except FileNotFoundError:
        log.warning(
            "IEEE OUI registry not found at %s; install the Debian package ieee-data "
            "for all vendor names. Using the shipped medical-vendor subset.",
            path,
        )
        return _load_medical_subset(), "engine/data/oui_medical.tsv"


def vendor_for_mac(mac: str, path: str | None = None) -> str:
    """Return the registered vendor of a MAC address ("aa:bb:cc:dd:ee:ff"), or ""."""
    digits = re.sub(r"[^0-9A-Fa-f]", "", mac).upper()
    if len(digits) != 12:
        return ""
    if int(digits[:2], 16) & 0x02:
        # A locally administered address (randomised or virtual) has no registry entry.
        return "(locally administered)"
    vendors, _ = load_vendors(path)
    return vendors.get(digits[:6], "")
