"""template.yaml read the way CloudFormation reads it: short-form tags, parameters, conditions, intrinsics.

The local stack builds everything from this reading, so the template stays the one source of truth:
a queue, a redrive policy, a batch size or an environment variable changed there changes `make run`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NO_VALUE: Any = object()  # AWS::NoValue: the key or list item disappears
PSEUDO_DEFAULTS = {
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::NotificationARNs": [],
}
_SUB_VARIABLE = re.compile(r"\$\{([^}]+)\}")


class TemplateError(Exception):
    """The template cannot be read or resolved locally; the message names the part at fault."""


class CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """A YAML loader that turns CloudFormation short forms (!Ref, !GetAtt, !Sub ...) into long forms."""


def _construct_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=CfnLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise TemplateError(f"{path} has no Resources section")
    return data


def cfn_string(value: Any) -> str:
    """A resolved scalar as CloudFormation passes it on (booleans lower-case, numbers as written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


Physical = Callable[[str], Any]
Attribute = Callable[[str, str], Any]


class Resolver:
    """Evaluates intrinsic functions. `physical`/`attribute` answer Ref/GetAtt for resources."""

    def __init__(
        self,
        template: dict[str, Any],
        *,
        parameters: Mapping[str, str],
        pseudo: Mapping[str, Any],
        physical: Physical,
        attribute: Attribute,
    ) -> None:
        self._template = template
        self._parameters = dict(parameters)
        self._pseudo = {**PSEUDO_DEFAULTS, **pseudo}
        self._physical = physical
        self._attribute = attribute
        self._conditions: dict[str, bool] = {}

    # ---- entry points ----------------------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1:
                ((key, argument),) = value.items()
                if key == "Ref" or key == "Condition" or key.startswith("Fn::"):
                    return self._intrinsic(key, argument)
            resolved = {k: self.resolve(v) for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v is not NO_VALUE}
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        return value

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            conditions = self._template.get("Conditions") or {}
            if name not in conditions:
                raise TemplateError(f"unknown condition {name}")
            self._conditions[name] = bool(self._truth(self.resolve(conditions[name])))
        return self._conditions[name]

    def parameter(self, name: str) -> str:
        if name in self._parameters:
            return self._parameters[name]
        raise TemplateError(f"template parameter {name} has no default; pass --param {name}=VALUE")

    # ---- intrinsics ------------------------------------------------------------------------
    def _intrinsic(self, key: str, argument: Any) -> Any:
        handler = getattr(self, "_fn_" + key.replace("Fn::", "").lower(), None)
        if handler is None:
            raise TemplateError(f"{key} is not supported by the local stack")
        return handler(argument)

    def _fn_ref(self, name: Any) -> Any:
        if not isinstance(name, str):
            raise TemplateError(f"Ref needs a name, got {name!r}")
        if name in self._pseudo:
            return self._pseudo[name]
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in (self._template.get("Parameters") or {}):
            return self.parameter(name)
        if name in self._template["Resources"]:
            return self._physical(name)
        raise TemplateError(f"Ref to unknown name {name}")

    def _fn_getatt(self, argument: Any) -> Any:
        if isinstance(argument, str):
            argument = argument.split(".", 1)
        logical, attribute = (self.resolve(part) for part in argument)
        if logical not in self._template["Resources"]:
            raise TemplateError(f"GetAtt on unknown resource {logical}")
        return self._attribute(str(logical), str(attribute))

    def _fn_sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument[0], {k: self.resolve(v) for k, v in argument[1].items()}
        else:
            text, variables = argument, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return cfn_string(variables[name])
            if "." in name and name.split(".", 1)[0] in self._template["Resources"]:
                return cfn_string(self._fn_getatt(name))
            return cfn_string(self._fn_ref(name))

        return _SUB_VARIABLE.sub(replace, str(text))

    def _fn_join(self, argument: Any) -> str:
        separator, items = argument
        return str(separator).join(cfn_string(v) for v in self.resolve(items))

    def _fn_if(self, argument: Any) -> Any:
        name, when_true, when_false = argument
        return self.resolve(when_true if self.condition(name) else when_false)

    def _fn_condition(self, name: Any) -> bool:
        return self.condition(str(name))

    def _fn_equals(self, argument: Any) -> bool:
        left, right = (cfn_string(self.resolve(v)) for v in argument)
        return left == right

    def _fn_not(self, argument: Any) -> bool:
        return not self._truth(self.resolve(argument[0]))

    def _fn_and(self, argument: Any) -> bool:
        return all(self._truth(self.resolve(v)) for v in argument)

    def _fn_or(self, argument: Any) -> bool:
        return any(self._truth(self.resolve(v)) for v in argument)

    def _fn_select(self, argument: Any) -> Any:
        index, items = self.resolve(argument)
        return items[int(index)]

    def _fn_split(self, argument: Any) -> list[str]:
        separator, text = self.resolve(argument)
        return str(text).split(str(separator))

    def _fn_findinmap(self, argument: Any) -> Any:
        name, top, second = (cfn_string(self.resolve(v)) for v in argument[:3])
        try:
            return self._template["Mappings"][name][top][second]
        except KeyError:
            raise TemplateError(f"FindInMap {name}/{top}/{second} not found") from None

    def _fn_base64(self, argument: Any) -> str:
        return base64.b64encode(cfn_string(self.resolve(argument)).encode()).decode()

    def _fn_tojsonstring(self, argument: Any) -> str:
        return json.dumps(self.resolve(argument), separators=(",", ":"))

    def _fn_length(self, argument: Any) -> int:
        return len(self.resolve(argument))

    @staticmethod
    def _truth(value: Any) -> bool:
        return value is True or cfn_string(value).lower() == "true"


# ---- what the local stack needs from the template -----------------------------------------------


@dataclass(frozen=True)
class ApiRoute:
    function: str  # logical id of the function
    method: str  # upper case, or "ANY"
    path: str  # API Gateway resource path, e.g. /v1/customers/{id}
    api: str  # logical id of the API
    api_key_required: bool | None  # the event's own Auth.ApiKeyRequired, None when not set

    def pattern(self) -> re.Pattern[str]:
        parts = re.split(r"(\{[^}]+\})", self.path)
        regex = ""
        for part in parts:
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                greedy = name.endswith("+")
                name = name.rstrip("+")
                regex += f"(?P<{name}>.+)" if greedy else f"(?P<{name}>[^/]+)"
            else:
                regex += re.escape(part)
        return re.compile(f"^{regex}$")


@dataclass(frozen=True)
class QueueSource:
    function: str
    queue_arn: str
    batch_size: int
    window_seconds: float
    report_batch_item_failures: bool
    enabled: bool


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    name: str
    code_uri: Path
    handler: str
    timeout: int
    memory: int
    environment: dict[str, str]
    routes: list[ApiRoute] = field(default_factory=list)
    sources: list[QueueSource] = field(default_factory=list)


@dataclass(frozen=True)
class Authorizer:
    """A Lambda REQUEST authorizer of an API: the function, its identity sources and cache TTL."""

    name: str
    function: str  # logical id of the function
    headers: tuple[str, ...] = ()  # identity sources: each must be present, or API Gateway answers 401
    ttl_seconds: int = 300


@dataclass(frozen=True)
class ApiSpec:
    logical_id: str
    stage: str
    api_key_required: bool
    iam: bool
    gateway_responses: dict[str, Any]
    authorizer: Authorizer | None = None  # the API's DefaultAuthorizer when it is a Lambda REQUEST one
    api_key_source: str = "HEADER"  # HEADER (x-api-key) or AUTHORIZER (its usageIdentifierKey)


class Template:
    """A parsed template.yaml and the parts of it the local stack runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = path.parent
        self.data = load_yaml(path)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        resources: dict[str, dict[str, Any]] = self.data["Resources"]
        return resources

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        parameters: dict[str, dict[str, Any]] = self.data.get("Parameters") or {}
        return parameters

    def parameter_values(self, overrides: Mapping[str, str]) -> dict[str, str]:
        unknown = sorted(set(overrides) - set(self.parameters))
        if unknown:
            raise TemplateError(f"unknown template parameter(s): {', '.join(unknown)}")
        values = {
            name: cfn_string(spec["Default"]) for name, spec in self.parameters.items() if "Default" in spec
        }
        values.update(overrides)
        for name, value in values.items():
            allowed = self.parameters[name].get("AllowedValues")
            if allowed is not None and value not in [cfn_string(v) for v in allowed]:
                raise TemplateError(f"parameter {name}={value} is not one of {allowed}")
        return values

    def of_type(self, resource_type: str) -> list[str]:
        return [name for name, spec in self.resources.items() if spec.get("Type") == resource_type]

    def function_globals(self) -> dict[str, Any]:
        globals_: dict[str, Any] = (self.data.get("Globals") or {}).get("Function") or {}
        return globals_

    def raw_environment(self, logical_id: str) -> dict[str, Any]:
        """A function's environment variables before resolution: Globals merged with its own."""
        variables: dict[str, Any] = dict(
            ((self.function_globals().get("Environment") or {}).get("Variables")) or {}
        )
        own = self.resources[logical_id].get("Properties", {}).get("Environment") or {}
        variables.update(own.get("Variables") or {})
        return variables

    def parameter_feeding(self, variable: str) -> str | None:
        """The parameter an environment variable is a plain `!Ref` of, in any function."""
        for logical_id in self.of_type("AWS::Serverless::Function"):
            value = self.raw_environment(logical_id).get(variable)
            if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in self.parameters:
                return str(value["Ref"])
        return None

    def included(self, logical_id: str, resolver: Resolver) -> bool:
        condition = self.resources[logical_id].get("Condition")
        return condition is None or resolver.condition(str(condition))

    # ---- functions and API -----------------------------------------------------------------
    def functions(self, resolver: Resolver) -> list[FunctionSpec]:
        specs = []
        for logical_id in self.of_type("AWS::Serverless::Function"):
            if self.included(logical_id, resolver):
                specs.append(self._function(logical_id, resolver))
        return specs

    def _function(self, logical_id: str, resolver: Resolver) -> FunctionSpec:
        properties = self.resources[logical_id].get("Properties") or {}
        globals_ = self.function_globals()

        def prop(name: str, default: Any = None) -> Any:
            value = properties.get(name, globals_.get(name, default))
            return resolver.resolve(value)

        environment = {
            key: cfn_string(value)
            for key, value in resolver.resolve(self.raw_environment(logical_id)).items()
        }
        code_uri = prop("CodeUri")
        handler = prop("Handler")
        if not isinstance(code_uri, str) or not isinstance(handler, str):
            raise TemplateError(f"{logical_id} needs a local CodeUri and a Handler")
        routes: list[ApiRoute] = []
        sources: list[QueueSource] = []
        for event_name, event in (properties.get("Events") or {}).items():
            kind = event.get("Type")
            event_properties = resolver.resolve(event.get("Properties") or {})
            if kind == "Api":
                raw_api = (event.get("Properties") or {}).get("RestApiId")
                api = (
                    raw_api["Ref"] if isinstance(raw_api, dict) and "Ref" in raw_api else "ServerlessRestApi"
                )
                auth = event_properties.get("Auth") or {}
                required = auth.get("ApiKeyRequired")
                routes.append(
                    ApiRoute(
                        function=logical_id,
                        method=str(event_properties["Method"]).upper(),
                        path=str(event_properties["Path"]),
                        api=str(api),
                        api_key_required=None if required is None else Resolver._truth(required),
                    )
                )
            elif kind == "SQS":
                sources.append(
                    QueueSource(
                        function=logical_id,
                        queue_arn=str(event_properties["Queue"]),
                        batch_size=int(event_properties.get("BatchSize", 10)),
                        window_seconds=float(event_properties.get("MaximumBatchingWindowInSeconds", 0)),
                        report_batch_item_failures="ReportBatchItemFailures"
                        in (event_properties.get("FunctionResponseTypes") or []),
                        enabled=Resolver._truth(event_properties.get("Enabled", True)),
                    )
                )
            else:
                raise TemplateError(f"{logical_id}.Events.{event_name}: type {kind} is not run locally")
        return FunctionSpec(
            logical_id=logical_id,
            name=cfn_string(prop("FunctionName") or logical_id),
            code_uri=self.root / code_uri,
            handler=handler,
            timeout=int(prop("Timeout", 3)),
            memory=int(prop("MemorySize", 128)),
            environment=environment,
            routes=routes,
            sources=sources,
        )

    def api(self, logical_id: str, resolver: Resolver) -> ApiSpec:
        spec = self.resources.get(logical_id)
        globals_api = resolver.resolve((self.data.get("Globals") or {}).get("Api") or {})
        properties = {**globals_api, **resolver.resolve((spec or {}).get("Properties") or {})}
        auth = properties.get("Auth") or {}
        return ApiSpec(
            logical_id=logical_id,
            stage=cfn_string(properties.get("StageName", "Prod")),
            api_key_required=Resolver._truth(auth.get("ApiKeyRequired", False)),
            iam=auth.get("DefaultAuthorizer") == "AWS_IAM",
            gateway_responses=properties.get("GatewayResponses") or {},
            authorizer=self._authorizer(spec or {}, str(auth.get("DefaultAuthorizer") or ""), resolver),
            api_key_source=cfn_string(properties.get("ApiKeySourceType", "HEADER")),
        )

    def _authorizer(self, api: dict[str, Any], name: str, resolver: Resolver) -> Authorizer | None:
        """The named Lambda REQUEST authorizer, its FunctionArn read as the function's logical id."""
        raw = choose_branches(((api.get("Properties") or {}).get("Auth") or {}).get("Authorizers"), resolver)
        config = raw.get(name) if isinstance(raw, dict) else None
        if not isinstance(config, dict) or "FunctionArn" not in config:
            return None
        arn = config["FunctionArn"]
        if not (isinstance(arn, dict) and "Fn::GetAtt" in arn):
            raise TemplateError(f"authorizer {name}: FunctionArn must be !GetAtt <function>.Arn locally")
        target = arn["Fn::GetAtt"]
        function = str(target[0] if isinstance(target, list) else str(target).split(".", 1)[0])
        if str(resolver.resolve(config.get("FunctionPayloadType", "TOKEN"))).upper() != "REQUEST":
            raise TemplateError(f"authorizer {name}: only REQUEST authorizers are run locally")
        identity = resolver.resolve(config.get("Identity") or {})
        return Authorizer(
            name=name,
            function=function,
            headers=tuple(str(h) for h in identity.get("Headers") or ()),
            ttl_seconds=int(identity.get("ReauthorizeEvery", 300)),
        )


def choose_branches(node: Any, resolver: Resolver) -> Any:
    """`node` with every Fn::If replaced by its chosen branch and nothing else resolved."""
    if isinstance(node, dict):
        if list(node) == ["Fn::If"]:
            name, when_true, when_false = node["Fn::If"]
            return choose_branches(when_true if resolver.condition(str(name)) else when_false, resolver)
        if node == {"Ref": "AWS::NoValue"}:
            return None
        return {key: choose_branches(value, resolver) for key, value in node.items()}
    if isinstance(node, list):
        return [choose_branches(item, resolver) for item in node]
    return node
