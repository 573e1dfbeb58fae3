"""Automated response: playbooks, nftables and notification actions, safety guards, action records.

`wardwatch respond` subscribes to the alert bus, so it can run on the
firewall host rather than on the sensor.
"""

from engine.respond.playbook import Playbook, PlaybookError, load_playbook, parse_playbook
from engine.respond.responder import Responder, undo_action

__all__ = ["Playbook", "PlaybookError", "Responder", "load_playbook", "parse_playbook", "undo_action"]
