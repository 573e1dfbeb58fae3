"""Base severity and recommended action per alert category.

This table is the starting point: engine.analyze.alerts.severity_for lowers
the severity of a detection the model is unsure of.
"""

BASE_SEVERITY = {
    "scan": "medium",
    "bruteforce": "high",
    "lateral_movement": "high",
    "ransomware": "critical",
    "exfiltration": "high",
    "policy_violation": "medium",
    "dos": "high",
    "collection": "medium",
    "tunneling": "high",
    "c2": "high",
    "spoofing": "high",
    "cleartext_credentials": "medium",
    "anomaly": "low",
}

RECOMMENDED_ACTIONS = {
    "scan": "Identify the scanning host and its owner; if the scan is not an authorised "
    "inventory or vulnerability scan, isolate the host and review its recent logins.",
    "bruteforce": "Block the source at the perimeter or host firewall, check the targeted "
    "accounts for successful logins after the failures, and enforce lockout or MFA on the service.",
    "lateral_movement": "Isolate the source workstation from the server VLAN, reset the "
    "credentials it used, and review SMB sessions and admin-share writes on the targets.",
    "ransomware": "Disconnect the source host from file shares at once, snapshot the "
    "affected shares, and start the ransomware incident procedure.",
    "exfiltration": "Stop the transfer (block the destination), confirm which studies or "
    "records left, and notify the privacy officer.",
    "policy_violation": "Confirm whether the sender is an approved clinical system; if not, "
    "block it from the integration engine and review the messages it sent.",
    "dos": "Rate-limit or block the sources upstream and protect the clinical service "
    "behind a filter; check that the target still serves clinical users.",
    "collection": "Restrict the client's broker permissions (no wildcard subscriptions) "
    "and check which device topics it read.",
    "tunneling": "Block the client's direct DNS to the suspicious domain, force DNS "
    "through the hospital resolvers, and inspect the host for malware.",
    "c2": "Isolate the host, block the destination, and collect the host's process and "
    "network evidence before reimaging.",
    "spoofing": "Find the port of the MAC that claims the address, shut it, and enable "
    "dynamic ARP inspection on the access switch.",
    "cleartext_credentials": "Move the service to an encrypted protocol and rotate the "
    "credentials that were sent in clear text.",
    "anomaly": "Review the flow and its hosts: the traffic is unlike the benign traffic "
    "the model learnt, but matches no known attack class.",
}
