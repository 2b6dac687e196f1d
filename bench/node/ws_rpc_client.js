#!/usr/bin/env node
'use strict'

// Benchmark: a grenache-nodejs-ws 1.0.0 PeerRPCClient keeping C requests in flight.
//
//   node ws_rpc_client.js '{"dest":"127.0.0.1:P","seconds":S,"warmup":W,"concurrency":C,
//                           "payload":X}'
//
// The link is a stub whose lookup answers [dest] at once, so only the peer and the transport
// are measured (Node's pool: up to 3 sockets per destination). Each of the C workers sends
// its next request when the previous one is answered. Completions during the W warm-up
// seconds are not counted; prints {"count":N,"seconds":S,"rate":R,"errors":E,"p50_ms":..,
// "p99_ms":..} (latencies of the requests sent after the warm-up) and exits.

const { PeerRPCClient } = require('grenache-nodejs-ws')

const c = JSON.parse(process.argv[2])
const link = { lookup: (key, opts, cb) => cb(null, [c.dest]) }
const peer = new PeerRPCClient(link, {})
peer.init()

const start = Date.now()
const measureFrom = start + c.warmup * 1000
const end = measureFrom + c.seconds * 1000
let count = 0
let errors = 0
let running = c.concurrency
const latencies = []

function worker () {
  const sent = process.hrtime.bigint()
  const sentMs = Date.now()
  peer.request('bench', c.payload, { timeout: 10000 }, (err) => {
    const now = Date.now()
    if (err) errors++
    else if (now >= measureFrom) {
      count++
      if (sentMs >= measureFrom) latencies.push(Number(process.hrtime.bigint() - sent) / 1e6)
    }
    if (now < end) worker()
    else if (--running === 0) finish()
  })
}

function percentile (sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

function finish () {
  const seconds = c.seconds
  const out = { count, seconds, rate: count / seconds, errors }
  if (latencies.length) {
    latencies.sort((a, b) => a - b)
    out.p50_ms = percentile(latencies, 0.5)
    out.p99_ms = percentile(latencies, 0.99)
  }
  process.stdout.write(JSON.stringify(out) + '\n')
  process.exit(0)
}

for (let i = 0; i < c.concurrency; i++) worker()
