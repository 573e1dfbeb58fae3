"""Synthetic patients and users: obviously fake, realistically shaped.

Every family name starts with "ZZ", the prefix hospitals give test patients
so that real charts never match them, and every MRN starts with "SIM". A
privacy check can therefore search alerts, logs and reports for "ZZ" names
or "SIM" MRNs and know that any hit is a leak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAMILY_NAMES = (
    "ZZHADDAD", "ZZALWAN", "ZZKHALIL", "ZZNASSER", "ZZYOUSIF", "ZZSALEH", "ZZJABBAR",
    "ZZKAREEM", "ZZMAHDI", "ZZHASSAN", "ZZTAHA", "ZZRASHID", "ZZOMAR", "ZZFARIS",
)
GIVEN_NAMES = (
    "LAYLA", "AHMED", "ZAINAB", "MUSTAFA", "NOOR", "ALI", "FATIMA", "HUSSEIN", "MARYAM",
    "OMAR", "SARA", "KARIM", "HIBA", "YASSIN", "RANA", "SAMIR",
)
USER_NAMES = (
    "n.alwan", "s.haddad", "m.khalil", "r.nasser", "h.yousif", "d.saleh", "a.jabbar",
    "k.kareem", "z.mahdi", "f.hassan", "t.taha", "y.rashid", "admin.omar", "admin.faris",
)


@dataclass(frozen=True)
class Patient:
    mrn: str  # "SIM" + 7 digits
    family: str
    given: str
    birth_date: str  # YYYYMMDD
    sex: str  # "F" or "M"
    ward: str
    bed: int


def make_patients(rng: np.random.Generator, count: int) -> list[Patient]:
    """Return `count` synthetic patients with distinct MRNs."""
    numbers = rng.choice(9_000_000, size=count, replace=False) + 1_000_000
    patients = []
    for number in numbers.tolist():
        year = int(rng.integers(1935, 2024))
        month = int(rng.integers(1, 13))
        day = int(rng.integers(1, 29))
        patients.append(Patient(
            mrn=f"SIM{number:07d}",
            family=FAMILY_NAMES[int(rng.integers(len(FAMILY_NAMES)))],
            given=GIVEN_NAMES[int(rng.integers(len(GIVEN_NAMES)))],
            birth_date=f"{year:04d}{month:02d}{day:02d}",
            sex="F" if rng.random() < 0.5 else "M",
            ward=f"WARD{int(rng.integers(1, 9))}",
            bed=int(rng.integers(1, 31)),
        ))
    return patients
