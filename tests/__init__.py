"""cio-relay tests: unit, integration, reliability, template; fakes under tests/fakes."""
