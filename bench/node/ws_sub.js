#!/usr/bin/env node
'use strict'

// Benchmark: S grenache-nodejs-ws 1.0.0 subscribers (TransportSub, as PeerSub makes them).
//
//   node ws_sub.js '{"dest":"127.0.0.1:P","subscribers":S,"messages":M,"timeout":T}'
//
// Prints {"ready":true} once every socket is open, then counts messages; when all S*M
// arrived (or T seconds after the first one) prints {"received":N,"last":L} (L: wall-clock
// time of the last message, in seconds since the epoch) and exits.

const { PeerSub } = require('grenache-nodejs-ws')

const c = JSON.parse(process.argv[2])
const peer = new PeerSub({}, {})
peer.init()

const expected = c.subscribers * c.messages
let connected = 0
let received = 0
let timer = null

let last = 0

function done () {
  process.stdout.write(JSON.stringify({ received, last: last / 1000 }) + '\n')
  process.exit(0)
}

peer.on('connected', () => {
  if (++connected === c.subscribers) process.stdout.write(JSON.stringify({ ready: true }) + '\n')
})
peer.on('message', () => {
  last = performance.timeOrigin + performance.now()
  if (received++ === 0) {
    timer = setTimeout(done, c.timeout * 1000)
  }
  if (received === expected) {
    clearTimeout(timer)
    done()
  }
})

for (let i = 0; i < c.subscribers; i++) peer.transport(c.dest).sub()
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
