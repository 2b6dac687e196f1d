#!/usr/bin/env node
'use strict'

// Benchmark client: grenache-nodejs-http 1.0.2 PeerRPCClient, a fixed destination (a stub
// link), `concurrency` request loops for `duration` seconds after a short warm-up.
//   node http_client.js '{"dest":"127.0.0.1:P","duration":5,"warmup":1,"concurrency":32,
//                         "payload":<json>,"compress":false}'
// Prints {"requests":N,"errors":E,"seconds":S,"rps":R}.

const { PeerRPCClient } = require('grenache-nodejs-http')

const conf = JSON.parse(process.argv[2])
const link = { lookup: (key, opts, cb) => cb(null, [conf.dest]) }

const peer = new PeerRPCClient(link, {})
peer.init()

const opts = { timeout: 10000, compress: !!conf.compress }
let counting = false
let stopped = false
let requests = 0
let errors = 0
let firstError = null

function loop () {
  if (stopped) return
  peer.request('bench', conf.payload, opts, (err) => {
    if (counting) {
      if (err) {
        errors++
        if (!firstError) firstError = err.message
      } else {
        requests++
      }
    }
    loop()
  })
}

for (let i = 0; i < conf.concurrency; i++) loop()

setTimeout(() => {
  counting = true
  const start = process.hrtime.bigint()
  setTimeout(() => {
    counting = false
    stopped = true
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    process.stdout.write(JSON.stringify({
      requests, errors, firstError, seconds, rps: requests / seconds
    }) + '\n')
    peer.stop()
    process.exit(0)
  }, conf.duration * 1000)
}, (conf.warmup || 0) * 1000)
