"""Tandem client: generated stubs in ``tandem.v1``."""
