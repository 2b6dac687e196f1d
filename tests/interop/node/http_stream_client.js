#!/usr/bin/env node
'use strict'

// grenache-nodejs-http 1.0.2's stream client (peer.stream; docs/protocol.rst, *HTTP streaming*), with
// grenache-nodejs-link 1.0.2, for the Python interop tests.
//
//   node http_stream_client.js '<json config>'      config: {"grape": "<grape url>"}
//
// Prints {"ready":true}, then reads one JSON operation per stdin line and prints one line per
// operation, in order of completion:
//   {"i": <index>, "ok": true, "result": {...}}   or   {"i": <index>, "ok": false, "error": msg}
// Operation:
//   {"op": "stream", "name": N, "size": BYTES, "opts": {"timeout": MS, "headers": {...}}}
//     writes BYTES random bytes to the stream in 64 KiB pieces, following its backpressure
//     (write() false -> wait for 'drain'), then ends it, and reads the response to its end.
//     result: {"sent": n, "sentSha256": hex, "received": n, "sha256": hex,
//              "text": <the response as text when it is at most 4096 bytes, else null>}
//   {"op": "stream", "name": N, "body": "<text>", "opts": {...}}: sends that text instead.

const crypto = require('crypto')
const readline = require('readline')
const Link = require('grenache-nodejs-link')
const { PeerRPCClient } = require('grenache-nodejs-http')

const conf = JSON.parse(process.argv[2] || '{}')

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const link = new Link({ grape: conf.grape })
link.start()

const peer = new PeerRPCClient(link, {})
peer.init()

let counter = 0
const PIECE = 64 * 1024

function run (op) {
  const i = counter++
  let done = false
  const finish = (err, result) => {
    if (done) return
    done = true
    if (err) out({ i, ok: false, error: err instanceof Error ? err.message : String(err) })
    else out({ i, ok: true, result })
  }
  try {
    const sentHash = crypto.createHash('sha256')
    const gotHash = crypto.createHash('sha256')
    let sent = 0
    let received = 0
    const small = []
    const s = peer.stream(op.name, op.opts || {})
    s.on('data', (d) => {
      received += d.length
      gotHash.update(d)
      if (received <= 4096) small.push(d)
    })
    s.on('end', () => finish(null, {
      sent,
      sentSha256: sentHash.digest('hex'),
      received,
      sha256: gotHash.digest('hex'),
      text: received <= 4096 ? Buffer.concat(small).toString('utf8') : null
    }))
    s.on('error', (err) => finish(err))
    if (op.body !== undefined) {
      const buf = Buffer.from(op.body, 'utf8')
      sent = buf.length
      sentHash.update(buf)
      s.end(buf)
      return
    }
    const size = op.size || 0
    const writeSome = () => {
      while (sent < size) {
        const piece = crypto.randomBytes(Math.min(PIECE, size - sent))
        sent += piece.length
        sentHash.update(piece)
        if (!s.write(piece)) {
          s.once('drain', writeSome)
          return
        }
      }
      s.end()
    }
    writeSome()
  } catch (err) {
    finish(err)
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
