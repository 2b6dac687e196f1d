#!/usr/bin/env node
'use strict'

// A grenache-nodejs-http 1.0.2 RPC client (with grenache-nodejs-link 1.0.2), for the Python
// interop tests.
//
//   node http_client.js '<json config>'
//
// config: {"grape": "<grape url>",
//          "secure": {"key": path, "cert": path, "ca": path, "rejectUnauthorized": bool}}
//
// Prints {"ready":true}, then reads one JSON operation per stdin line and prints one line per
// operation, in order of completion:
//   {"i": <index>, "ok": true, "result": <result>}
//   {"i": <index>, "ok": false, "error": "<err.message>"}
// Operations:
//   {"op": "request", "name": N, "payload": X, "opts": {"timeout": MS, "compress": bool}}
//   {"op": "map", "name": N, "payload": X, "opts": {"timeout": MS, "limit": L}}
//   {"op": "stream", "name": N, "body": "<text>", "opts": {"timeout": MS, "headers": {...}}}
//       (peer.stream: a chunked POST with the _gr header; result = the response body text)
// Large results may be summarised: with "summary": true the result is
//   {"length": <JSON text length>, "sha1": <hex of the JSON text>}.

const crypto = require('crypto')
const fs = require('fs')
const readline = require('readline')
const Link = require('grenache-nodejs-link')
const { PeerRPCClient } = require('grenache-nodejs-http')

const conf = JSON.parse(process.argv[2] || '{}')

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const link = new Link({ grape: conf.grape })
link.start()

const opts = {}
if (conf.secure) {
  opts.secure = {
    key: fs.readFileSync(conf.secure.key),
    cert: fs.readFileSync(conf.secure.cert),
    ca: fs.readFileSync(conf.secure.ca),
    rejectUnauthorized: conf.secure.rejectUnauthorized !== false
  }
}

const peer = new PeerRPCClient(link, opts)
peer.init()

let counter = 0

function finish (i, op, err, result) {
  if (err) {
    out({ i, ok: false, error: err instanceof Error ? err.message : String(err) })
    return
  }
  if (result === undefined) result = null
  if (op.summary) {
    const text = JSON.stringify(result)
    result = { length: text.length, sha1: crypto.createHash('sha1').update(text).digest('hex') }
  }
  out({ i, ok: true, result })
}

function run (op) {
  const i = counter++
  try {
    if (op.op === 'request') {
      peer.request(op.name, op.payload, op.opts || {}, (err, res) => finish(i, op, err, res))
    } else if (op.op === 'map') {
      peer.map(op.name, op.payload, op.opts || {}, (err, res) => finish(i, op, err, res))
    } else if (op.op === 'stream') {
      const chunks = []
      const s = peer.stream(op.name, op.opts || {})
      s.on('data', (d) => chunks.push(d))
      s.on('end', () => finish(i, op, null, Buffer.concat(chunks).toString('utf8')))
      s.on('error', (err) => finish(i, op, err))
      s.write(op.body)
      s.end()
    } else {
      finish(i, op, new Error('unknown op ' + op.op))
    }
  } catch (err) {
    finish(i, op, err)
  }
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  line = line.trim()
  if (!line) return
  run(JSON.parse(line))
})

function stop () {
  try { peer.stop() } catch (e) {}
  try { link.stop() } catch (e) {}
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)

out({ ready: true })
