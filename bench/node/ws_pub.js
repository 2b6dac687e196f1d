#!/usr/bin/env node
'use strict'

// Benchmark: a grenache-nodejs-ws 1.0.0 publisher.
//
//   node ws_pub.js '{"messages":M,"burst":B,"size":N}'
//
// Prints {"port":P}, then waits for "go" on stdin and publishes M text messages of N bytes,
// B per event-loop turn (setImmediate between bursts), then prints {"published":M}.

const { PeerPub } = require('grenache-nodejs-ws')
const readline = require('readline')

const c = JSON.parse(process.argv[2])
const peer = new PeerPub({}, {})
peer.init()
const service = peer.transport('server')
service.listen(0)
service.socket.on('listening', () => {
  process.stdout.write(JSON.stringify({ port: service.socket.address().port }) + '\n')
})

function message (i) {
  const head = `{"seq":${i},"pad":"`
  return head + 'x'.repeat(Math.max(0, c.size - head.length - 2)) + '"}'
}

function publish () {
  let i = 0
  const burst = () => {
    const stop = Math.min(c.messages, i + c.burst)
    for (; i < stop; i++) service.pub(message(i))
    if (i < c.messages) setImmediate(burst)
    else process.stdout.write(JSON.stringify({ published: c.messages, subscribers: service._sockets.size }) + '\n')
  }
  burst()
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'go') publish()
})
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
