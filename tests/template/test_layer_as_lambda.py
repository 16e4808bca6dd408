"""Every function imports with only what Lambda will give it, under every template option that
changes its imports.

Lambda runs a function with its code, the layer (`sam build` installs layers/cio_relay/requirements.txt
into /opt/python, next to the cio_relay package) and the runtime's own AWS SDK. Nothing from
requirements-dev.txt is there, so a package the dev venv happens to have (the X-Ray SDK, say) must
not be what makes an import work. This test builds that environment in a clean venv, cached in
.cache/lambda-layer/<hash of the requirement files> so that repeated runs reuse it, and imports each
function's handler in a fresh interpreter with the environment the template gives it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from local_stack.template import FunctionSpec, Resolver, Template
from tests.support import ROOT, pip_install

LAYER = ROOT / "layers" / "cio_relay"
LAYER_REQUIREMENTS = LAYER / "requirements.txt"
RUNTIME_REQUIREMENTS = Path(__file__).with_name("lambda-runtime-python3.13.txt")
CACHE = ROOT / ".cache" / "lambda-layer"
# Template options that change what a function imports: Tracing=Active makes the functions create
# Powertools' Tracer, which imports the X-Ray SDK; ApiAuth decides whether the authorizer exists.
OPTIONS: dict[str, dict[str, str]] = {
    "tracing off": {"Tracing": "Disabled", "ApiAuth": "API_KEY"},
    "tracing on": {"Tracing": "Active", "ApiAuth": "API_KEY"},
}
PARAMETERS = {"CustomerIoSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:cio-AbCdEf"}
# What Lambda sets in every function's environment (plus the function's own variables).
LAMBDA_ENVIRONMENT = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    "LAMBDA_TASK_ROOT": "/var/task",
    "LANG": "en_US.UTF-8",
    "TZ": ":UTC",
}
# Run in the function's interpreter: import the handler, then every module the layer imports only on
# first use, and report what was loaded from where.
PROBE = """
import importlib, json, sys, sysconfig
module, attribute = sys.argv[1].rsplit(".", 1)
handler = getattr(importlib.import_module(module), attribute)
assert callable(handler), sys.argv[1]
at_import = sorted(sys.modules)
# The function's other modules (imported on first use, e.g. EventsFunction's events_api on its first
# API request) must import here too: the working directory is the function's code, as /var/task is.
import pathlib
for path in sorted(pathlib.Path(".").glob("*.py")):
    importlib.import_module(path.stem)
if sys.argv[2] == "layer":
    import pkgutil, cio_relay
    for info in pkgutil.walk_packages(cio_relay.__path__, "cio_relay."):
        importlib.import_module(info.name)
    from aws_lambda_powertools.utilities import parameters  # credentials.py, on first use
    from aws_lambda_powertools import Tracer  # observability.py, with TRACING_ENABLED=true
files = {name: getattr(m, "__file__", None) or "" for name, m in list(sys.modules.items())}
print(json.dumps({"files": files, "at_import": at_import, "stdlib": sysconfig.get_paths()["stdlib"]}))
"""


def lambda_python() -> str:
    """Python 3.13 (the runtime's version) when this machine has it, else this interpreter."""
    for candidate in ("python3.13",):
        found = shutil.which(candidate)
        if found:
            probe = subprocess.run(
                [found, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                capture_output=True,
                text=True,
                env={**os.environ, "PYENV_VERSION": os.environ.get("PYENV_313", "3.13.0")},
                check=False,
            )
            if probe.stdout.strip() == "True":
                return found
    return sys.executable


def _venv_key(python: str) -> str:
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=True,
        env=_python_env(),
    ).stdout
    digest = hashlib.sha256()
    for part in (LAYER_REQUIREMENTS.read_bytes(), RUNTIME_REQUIREMENTS.read_bytes(), version.encode()):
        digest.update(part)
    return digest.hexdigest()[:16]


def _python_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYENV_VERSION"] = os.environ.get("PYENV_313", "3.13.0")
    return env


@pytest.fixture(scope="module")
def layer_python() -> Path:
    """A venv holding exactly the layer's requirements and the runtime's SDK (built once, cached)."""
    python = lambda_python()
    venv = CACHE / _venv_key(python)
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers build it once
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            env = _python_env()
            subprocess.run([python, "-m", "venv", str(venv)], check=True, env=env)
            pip = [str(venv / "bin" / "python"), "-m", "pip"]
            failed = pip_install(venv / "bin" / "python", [LAYER_REQUIREMENTS, RUNTIME_REQUIREMENTS], env=env)
            assert not failed, f"the layer's requirements do not install:\n{failed}"
            check = subprocess.run([*pip, "check"], capture_output=True, text=True, env=env, check=False)
            assert check.returncode == 0, f"the layer's requirements conflict:\n{check.stdout}"
            (venv / ".complete").touch()
    return venv / "bin" / "python"


def functions_for(options: dict[str, str]) -> list[FunctionSpec]:
    template = Template(ROOT / "template.yaml")
    resolver = Resolver(
        template.data,
        parameters=template.parameter_values({**PARAMETERS, **options}),
        pseudo={"AWS::StackName": "cio-relay", "AWS::Region": "us-east-1"},
        physical=lambda logical_id: f"cio-relay-{logical_id}",
        attribute=lambda logical_id, name: f"arn:aws:local:{logical_id}:{name}",
    )
    return template.functions(resolver)


def uses_layer(spec: FunctionSpec) -> bool:
    """Whether the function's code imports the layer (the authorizer is standard library only)."""
    return "cio_relay" in (spec.code_uri / "app.py").read_text()


PAIRS = [(label, options, spec) for label, options in OPTIONS.items() for spec in functions_for(options)]
CASES = [pytest.param(options, spec, id=f"{spec.logical_id}, {label}") for label, options, spec in PAIRS]


def test_every_function_of_the_template_is_imported() -> None:
    # GIVEN the template's functions under its default parameters
    defaults = {spec.logical_id for spec in functions_for({})}
    assert functions_for({"ApiAuth": "AWS_IAM"})  # the other ApiAuth only drops the authorizer

    # THEN each is imported below, with tracing both on and off
    imported = {(spec.logical_id, options["Tracing"]) for _, options, spec in PAIRS}
    assert {"EventsFunction", "EmailFunction", "AuthorizerFunction"} <= defaults
    for logical_id in defaults:
        assert {(logical_id, "Active"), (logical_id, "Disabled")} <= imported


@pytest.mark.parametrize(("options", "spec"), CASES)
def test_function_imports_with_only_the_layer_and_the_runtime(
    layer_python: Path, options: dict[str, str], spec: FunctionSpec
) -> None:
    # GIVEN the function's environment as the template sets it, and Lambda's own variables
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **LAMBDA_ENVIRONMENT,
        **spec.environment,
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        # /var/task (the function's code), then /opt/python (the layer's own package; its
        # requirements are the venv's site-packages)
        "PYTHONPATH": os.pathsep.join([str(spec.code_uri), str(LAYER)]),
    }
    assert env.get("TRACING_ENABLED") == ("true" if options["Tracing"] == "Active" else "false") or (
        not uses_layer(spec)
    )

    # WHEN a fresh interpreter imports its handler, its other modules (and, for layer users, every
    # layer module)
    module, _, attribute = spec.handler.partition(".")
    probe = subprocess.run(
        [str(layer_python), "-s", "-c", PROBE, f"{module}.{attribute}", "layer" if uses_layer(spec) else ""],
        capture_output=True,
        text=True,
        env=env,
        cwd=spec.code_uri,
        check=False,
        timeout=120,
    )

    # THEN it imports, and everything it loaded came from the venv, the repository or the stdlib
    assert probe.returncode == 0, f"{spec.logical_id} does not import under {options}:\n{probe.stderr}"
    report: dict[str, Any] = json.loads(probe.stdout.strip().splitlines()[-1])
    venv = layer_python.parent.parent.resolve()
    allowed = (str(venv), str(ROOT.resolve()), str(Path(report["stdlib"]).resolve()))
    foreign = {
        name: path
        for name, path in report["files"].items()
        if path and not str(Path(path).resolve()).startswith(allowed)
    }
    assert foreign == {}, "modules loaded from outside the Lambda-like environment"
    dev_only = {"moto", "pytest", "hypothesis", "local_stack", "tests"}
    assert not dev_only & {name.split(".")[0] for name in report["files"]}
    # ... and the X-Ray SDK is loaded with tracing on, and only then (it costs cold start)
    if uses_layer(spec):
        tracing = options["Tracing"] == "Active"
        assert ("aws_xray_sdk" in report["at_import"]) is tracing, options


def test_the_layer_venv_holds_no_dev_package(layer_python: Path) -> None:
    # GIVEN the venv built above (under the ignored cache, named by the requirement files' hash)
    assert layer_python.parent.parent.parent == CACHE
    listed = subprocess.run(
        [str(layer_python), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        env=_python_env(),
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}

    # THEN it holds the layer's packages and the runtime's SDK, and none of the dev tools
    assert {"aws-lambda-powertools", "pydantic", "aws-xray-sdk", "boto3"} <= installed
    assert not installed & {"moto", "pytest", "hypothesis", "mypy", "ruff", "schemathesis"}
