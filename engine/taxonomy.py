"""Attack classes, alert categories, MITRE ATT&CK techniques and attack stages.

One table that the simulator's labels, the model's class names, the alert
categories, the response playbooks and the stage model all use. A simulator
label `attack_class` is a key of ATTACK_CLASSES; the model predicts those
keys (plus "benign"); an alert's category and technique come from the row.

Technique ids are from MITRE ATT&CK Enterprise (v15, 2024); the stages are
the coarse kill-chain steps the next-stage predictor works with.
"""

from dataclasses import dataclass

BENIGN = "benign"

# Coarse attack stages, in kill-chain order.
STAGES = (
    "recon",
    "credential_access",
    "lateral_movement",
    "collection",
    "command_and_control",
    "exfiltration",
    "impact",
)


@dataclass(frozen=True)
class AttackClass:
    category: str  # alert category; also the last part of the bus topic
    technique: str  # MITRE ATT&CK technique or sub-technique id
    technique_name: str
    stage: str  # one of STAGES


ATTACK_CLASSES: dict[str, AttackClass] = {
    "port_scan": AttackClass("scan", "T1046", "Network Service Discovery", "recon"),
    "host_sweep": AttackClass("scan", "T1018", "Remote System Discovery", "recon"),
    "ssh_bruteforce": AttackClass("bruteforce", "T1110.001", "Brute Force: Password Guessing", "credential_access"),
    "rdp_bruteforce": AttackClass("bruteforce", "T1110.001", "Brute Force: Password Guessing", "credential_access"),
    "ftp_bruteforce": AttackClass("bruteforce", "T1110.001", "Brute Force: Password Guessing", "credential_access"),
    "password_spray": AttackClass("bruteforce", "T1110.003", "Brute Force: Password Spraying", "credential_access"),
    "smb_lateral": AttackClass("lateral_movement", "T1021.002", "Remote Services: SMB/Windows Admin Shares", "lateral_movement"),
    "ransomware": AttackClass("ransomware", "T1486", "Data Encrypted for Impact", "impact"),
    "dicom_exfil": AttackClass("exfiltration", "T1048", "Exfiltration Over Alternative Protocol", "exfiltration"),
    "hl7_unauthorized": AttackClass("policy_violation", "T1565.002", "Data Manipulation: Transmitted Data Manipulation", "impact"),
    "syn_flood": AttackClass("dos", "T1498.001", "Network Denial of Service: Direct Network Flood", "impact"),
    "udp_flood": AttackClass("dos", "T1498.001", "Network Denial of Service: Direct Network Flood", "impact"),
    "mqtt_wildcard": AttackClass("collection", "T1119", "Automated Collection", "collection"),
    "mqtt_flood": AttackClass("dos", "T1499.002", "Endpoint Denial of Service: Service Exhaustion Flood", "impact"),
    "dns_tunnel": AttackClass("tunneling", "T1071.004", "Application Layer Protocol: DNS", "command_and_control"),
    "c2_beacon": AttackClass("c2", "T1071.001", "Application Layer Protocol: Web Protocols", "command_and_control"),
    "arp_spoof": AttackClass("spoofing", "T1557.002", "Adversary-in-the-Middle: ARP Cache Poisoning", "credential_access"),
    "cleartext_credentials": AttackClass("cleartext_credentials", "T1040", "Network Sniffing", "credential_access"),
}

# Alert categories that no attack class has: the anomaly score's, the
# passive findings' (engine/policy/findings.py), the exploit checks'
# (engine/policy/exploits.py), the login rules' (engine/logins/detect.py)
# and the forecasts' (engine/predict/forecast.py).
OTHER_ALERT_CATEGORIES = ("anomaly", "cleartext_patient_data", "weak_tls", "smbv1", "mqtt_no_auth",
                          "vulnerable_software", "exploit_attempt", "account_anomaly", "insider_access",
                          "privileged_access", "forecast")

# Every category an alert can carry.
ALERT_CATEGORIES = tuple(sorted({attack.category for attack in ATTACK_CLASSES.values()}
                                | set(OTHER_ALERT_CATEGORIES)))

SEVERITIES = ("info", "low", "medium", "high", "critical")


def severity_rank(severity: str) -> int:
    """Return the position of `severity` in SEVERITIES (info is 0)."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(
            f"invalid severity {severity!r}; expected one of {', '.join(SEVERITIES)}"
        ) from None
