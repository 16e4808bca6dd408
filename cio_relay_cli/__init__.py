"""cio-relay's operator CLI (`cio-relay`): runs on an operator's machine, never in Lambda."""
