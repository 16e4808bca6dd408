// customerio-node APIClient.sendEmail, used as documented: only its url and App API key are set.
// Run by tests/sdk. Reads {"host", "key", "user"} as JSON on stdin; prints
// {"result": <what sendEmail resolved to>} or {"error", "status"} as JSON.
const fs = require('fs');
const { APIClient, SendEmailRequest } = require('customerio-node');

const config = JSON.parse(fs.readFileSync(0, 'utf8'));
const api = new APIClient(config.key, { url: `${config.host}/v1` });
const request = new SendEmailRequest({
  transactional_message_id: 7,
  to: 'ada@example.com',
  identifiers: { id: config.user },
  message_data: { name: 'Ada' },
});
api
  .sendEmail(request)
  .then((result) => console.log(JSON.stringify({ result })))
  .catch((error) => console.log(JSON.stringify({ error: String(error), status: error.statusCode })));
