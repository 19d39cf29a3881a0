"""Simulated sites: scenario generators that write Trace v1 records."""
