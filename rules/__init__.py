"""Shipped policies; importable as guard.rules so the default works from a wheel."""
