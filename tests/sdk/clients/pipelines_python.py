"""One Pipelines Python SDK (customerio-cdp-analytics or segment-analytics-python), used as documented.

Run by tests/sdk in the SDK's own venv. Reads {"sdk", "host", "key"} as JSON on stdin; prints
{"message_ids", "invalid_id", "single_id", "errors"} as JSON. The only settings are the host and the
write key (plus gzip, the SDKs' own option); nothing is patched.
"""

import json
import sys

config = json.load(sys.stdin)
if config["sdk"] == "cdp":
    from customerio.analytics import Client
else:
    from segment.analytics import Client

errors = []


def on_error(error, batch):
    errors.append({"error": repr(error), "calls": len(batch)})


# One batching client with gzip: seven calls in one /v1/batch, one of them invalid for the relay (a
# blank userId, which the SDK lets through and Customer.io refuses).
client = Client(
    config["key"], host=config["host"], gzip=True, on_error=on_error, max_retries=0, upload_interval=1.0
)
results = [
    client.identify(user_id="sdk-user-1", traits={"plan": "pro"}),
    client.track(user_id="sdk-user-1", event="sdk_signed_up", properties={"via": config["sdk"]}),
    client.page(user_id="sdk-user-1", category="docs", name="home"),
    client.screen(user_id="sdk-user-1", category="app", name="home"),
    client.group(user_id="sdk-user-1", group_id="acct-1", traits={"name": "Example"}),
    client.alias(previous_id="anon-1", user_id="sdk-user-1"),
]
invalid = client.track(user_id="   ", event="sdk_blank_user")
client.flush()
client.join()

# One plain, synchronous call: one request per call, no gzip.
plain = Client(config["key"], host=config["host"], sync_mode=True, on_error=on_error, max_retries=0)
try:
    single = plain.track(user_id="sdk-user-2", event="sdk_plain")
except Exception as exc:  # what the SDK raises for an error answer in sync mode
    errors.append({"error": repr(exc), "calls": 1})
    single = (False, {"messageId": None})

print(
    json.dumps(
        {
            "message_ids": [message["messageId"] for _, message in results],
            "invalid_id": invalid[1]["messageId"],
            "single_id": single[1]["messageId"],
            "errors": errors,
        }
    )
)
