"""Selective Self-Rehearsal fine-tuning."""

__version__ = "0.1.0"
