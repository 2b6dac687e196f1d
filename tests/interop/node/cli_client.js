#!/usr/bin/env node
'use strict'

// A Node.js client for the `grenache serve` / `twistd grenache-service` interop tests:
// grenache-nodejs-link 1.0.2 and the PeerRPCClient of grenache-nodejs-http 1.0.2 (or of
// grenache-nodejs-ws 1.0.0) request one service once and print the outcome.
//
//   node cli_client.js <grape url> <service name> '<json payload>' [http|ws] [timeout ms]
//
// Prints one JSON line and exits 0:
//   {"ok": true, "result": <result>}
//   {"ok": false, "error": "<err.message>"}

const Link = require('grenache-nodejs-link')

const [url, name, payloadText, transport = 'http', timeoutText = '10000'] = process.argv.slice(2)
if (!url || !name || payloadText === undefined) {
  process.stderr.write('usage: cli_client.js <grape url> <name> <json payload> [http|ws] [timeout ms]\n')
  process.exit(2)
}
const { PeerRPCClient } = require(transport === 'ws' ? 'grenache-nodejs-ws' : 'grenache-nodejs-http')

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const link = new Link({ grape: url })
link.start()
const peer = new PeerRPCClient(link, {})
peer.init()

peer.request(name, JSON.parse(payloadText), { timeout: Number(timeoutText) }, (err, result) => {
  if (err) {
    out({ ok: false, error: err instanceof Error ? err.message : String(err) })
  } else {
    out({ ok: true, result: result === undefined ? null : result })
  }
  try {
    peer.stop()
    link.stop()
  } catch (e) {
    // exiting anyway
  }
  process.exit(0)
})
