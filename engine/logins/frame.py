"""LoginFrame: login records as columns, the form the counting detections read.

Brute force, password spraying and success-after-failures count failures per
account and per source over sliding windows. On auth logs that is most of
the lines, so those rules work on NumPy columns with strings replaced by
indexes into small tables, and never build a Python object per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.logins.records import FAILURE, INFO, LOGOFF, SUCCESS, LoginRecord

# LoginFrame.outcome codes
OUTCOME_CODES = {SUCCESS: 1, FAILURE: 2, LOGOFF: 3, INFO: 4}
OUTCOME_SUCCESS = 1
OUTCOME_FAILURE = 2
OUTCOME_LOGOFF = 3
OUTCOME_INFO = 4

NO_VALUE = -1  # index of an absent string (no user, no source)


@dataclass
class LoginFrame:
    ts: np.ndarray  # float64, seconds since the Unix epoch (UTC)
    outcome: np.ndarray  # uint8, OUTCOME_* codes
    user: np.ndarray  # int32 index into users, NO_VALUE when absent
    src: np.ndarray  # int32 index into sources (address, else host name), NO_VALUE when absent
    count: np.ndarray  # uint32, events each row stands for
    record_id: np.ndarray  # int64, login_records row id, or the line number before storing
    is_new: np.ndarray  # bool, False for rows loaded only as window history
    users: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_records(cls, records: list[LoginRecord], new_from_id: int | None = None) -> LoginFrame:
        """Build a frame; rows with id below `new_from_id` are history, not new."""
        user_index: dict[str, int] = {}
        source_index: dict[str, int] = {}
        n = len(records)
        ts = np.empty(n, dtype=np.float64)
        outcome = np.empty(n, dtype=np.uint8)
        user = np.empty(n, dtype=np.int32)
        src = np.empty(n, dtype=np.int32)
        count = np.empty(n, dtype=np.uint32)
        record_id = np.empty(n, dtype=np.int64)
        is_new = np.ones(n, dtype=bool)
        for i, record in enumerate(records):
            ts[i] = record.ts
            outcome[i] = OUTCOME_CODES[record.outcome]
            user[i] = NO_VALUE if record.user is None else user_index.setdefault(record.user, len(user_index))
            source = record.src
            src[i] = NO_VALUE if source is None else source_index.setdefault(source, len(source_index))
            count[i] = record.count
            record_id[i] = record.id if record.id is not None else (record.line_no or 0)
            if new_from_id is not None and record.id is not None and record.id < new_from_id:
                is_new[i] = False
        return cls(ts, outcome, user, src, count, record_id, is_new, list(user_index), list(source_index))
