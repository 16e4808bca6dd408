// @customerio/cdp-analytics-node, used as documented: only its host and write key are set.
// Run by tests/sdk. Reads {"host", "key"} as JSON on stdin; prints
// {"message_ids", "invalid_id", "errors"} as JSON.
const fs = require('fs');
const { Analytics } = require('@customerio/cdp-analytics-node');

const config = JSON.parse(fs.readFileSync(0, 'utf8'));
const analytics = new Analytics({ writeKey: config.key, host: config.host, maxRetries: 0 });
const errors = [];
analytics.on('error', (error) => errors.push(String(error && (error.reason || error.message || error))));

function call(method, params) {
  return new Promise((resolve) => {
    analytics[method](params, (error, ctx) => {
      if (error) errors.push(`${method}: ${error.reason || error.message || error}`);
      resolve(ctx.event.messageId);
    });
  });
}

(async () => {
  const calls = [
    call('identify', { userId: 'node-user-1', traits: { plan: 'pro' } }),
    call('track', { userId: 'node-user-1', event: 'node_signed_up', properties: { via: 'cdp-node' } }),
    call('page', { userId: 'node-user-1', category: 'docs', name: 'home' }),
    call('screen', { userId: 'node-user-1', name: 'home' }),
    call('group', { userId: 'node-user-1', groupId: 'acct-1', traits: { name: 'Example' } }),
    call('alias', { userId: 'node-user-1', previousId: 'node-anon-1' }),
  ];
  const invalid = call('track', { userId: '   ', event: 'node_blank_user' });
  await analytics.closeAndFlush({ timeout: 30000 });
  console.log(JSON.stringify({ message_ids: await Promise.all(calls), invalid_id: await invalid, errors }));
})();
