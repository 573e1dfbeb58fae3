"""Zones, passive vulnerability findings and access policy for clinical assets."""
