"""customerio (Python) APIClient.send_email, used as documented: only its url and key are set.

Run by tests/sdk in the SDK's own venv. Reads {"host", "key", "user"} as JSON on stdin; prints
{"result": <what send_email returned>} or {"error": "..."} as JSON.
"""

import json
import sys

from customerio.api import APIClient, SendEmailRequest

config = json.load(sys.stdin)
api = APIClient(config["key"], url=config["host"])
request = SendEmailRequest(
    transactional_message_id=7,
    to="ada@example.com",
    identifiers={"id": config["user"]},
    message_data={"name": "Ada"},
)
try:
    print(json.dumps({"result": api.send_email(request)}))
except Exception as exc:  # the test shows it
    print(json.dumps({"error": repr(exc)}))
