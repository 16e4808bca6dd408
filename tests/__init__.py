"""cio-relay tests: unit, integration, reliability, template (fake Customer.io: local_stack/customerio.py)."""
