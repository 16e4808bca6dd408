"""The Docker-free local stack behind `make run` (docs/local-stack.md).

Importable as a library: `LocalStack(Options(port=0, sandbox_port=0))` with start()/stop() and the
attributes api_url, api_key, sandbox_url, moto_url (tests and the soak test use it this way).
"""

from local_stack.stack import LocalStack, Options

__all__ = ["LocalStack", "Options"]
