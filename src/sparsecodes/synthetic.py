"""Synthetic data (being written)."""
