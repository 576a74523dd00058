"""Personalized, faithful, law-abiding copy generator (see api.py for the entry points)."""
