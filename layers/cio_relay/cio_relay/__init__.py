"""cio-relay: the shared layer that both Lambda functions stand on."""

__version__ = "0.1.0"
USER_AGENT = f"cio-relay/{__version__}"
