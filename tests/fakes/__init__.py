"""Test doubles for external services (Customer.io)."""
