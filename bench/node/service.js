#!/usr/bin/env node
'use strict'

// Benchmark service (bench/memory.py): a grenache-nodejs-http 1.0.2 PeerRPCServer echoing the
// payload, announced through a grape with grenache-nodejs-link, as a real service runs.
//   node service.js '{"grape":"http://127.0.0.1:30001","name":"bench_echo"}'
// Prints {"ready":true,"port":P} once the name was announced; SIGTERM ends it.

const Link = require('grenache-nodejs-link')
const { PeerRPCServer } = require('grenache-nodejs-http')

const conf = JSON.parse(process.argv[2] || '{}')
const link = new Link({ grape: conf.grape })
link.start()

const peer = new PeerRPCServer(link, { timeout: 300000 })
peer.init()
const service = peer.transport('server')
service.on('request', (rid, key, payload, handler) => {
  handler.reply(null, payload)
})
service.listen(0)
service.socket.on('listening', () => {
  const port = service.socket.address().port
  link.announce(conf.name, port, {}, (err) => {
    if (err) {
      process.stderr.write('announce failed: ' + err.message + '\n')
      process.exit(1)
    }
    service.announceInterval = setInterval(() => link.announce(conf.name, port, {}), 40000)
    process.stdout.write(JSON.stringify({ ready: true, port }) + '\n')
  })
})
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
