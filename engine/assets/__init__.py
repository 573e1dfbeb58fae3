"""Asset inventory: hosts, vendors, roles and what they serve, kept in the store."""
