#!/usr/bin/env node
'use strict'

// Node.js pub/sub peers for the `grenache pub` / `grenache sub` interop tests
// (grenache-nodejs-ws 1.0.0 with grenache-nodejs-link 1.0.2).
//
//   node cli_pubsub.js sub <grape url> <name> <count>
//       subscribes to <name>, prints {"ready":true} once connected, then
//       {"message": <text>} per message; exits 0 after <count> messages.
//   node cli_pubsub.js pub <grape url> <name>
//       listens on a free port, announces <name> every second, prints {"ready":true,"port":P}
//       and {"event":"connection"} per subscriber, publishes each stdin line as it arrives;
//       exits when stdin ends.

const Link = require('grenache-nodejs-link')
const readline = require('readline')
const { PeerPub, PeerSub } = require('grenache-nodejs-ws')

const [mode, url, name, countText] = process.argv.slice(2)

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const link = new Link({ grape: url })
link.start()

if (mode === 'sub') {
  const count = Number(countText || '1')
  const peer = new PeerSub(link, {})
  peer.init()
  let received = 0
  peer.on('connected', () => out({ ready: true }))
  peer.on('error', (err) => out({ error: err.message }))
  peer.on('message', (msg) => {
    out({ message: msg.toString() })
    received += 1
    if (received >= count) {
      peer.stop()
      link.stop()
      process.exit(0)
    }
  })
  peer.sub(name, { timeout: 10000 })
} else if (mode === 'pub') {
  const peer = new PeerPub(link, {})
  peer.init()
  const service = peer.transport('server')
  service.listen(0)
  service.socket.on('connection', () => out({ event: 'connection' }))
  service.socket.on('listening', () => {
    const port = service.socket.address().port
    link.startAnnouncing(name, port, { interval: 1000 })
    out({ ready: true, port })
  })
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', (line) => service.pub(line))
  rl.on('close', () => {
    link.stop()
    process.exit(0)
  })
} else {
  process.stderr.write('usage: cli_pubsub.js sub|pub <grape url> <name> [count]\n')
  process.exit(2)
}
