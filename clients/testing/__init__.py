"""Helpers for testing the clients against a live server: a fresh PostgreSQL database, a TCP proxy."""
