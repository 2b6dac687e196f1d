#!/usr/bin/env node
'use strict'

// Benchmark server: grenache-nodejs-http 1.0.2 PeerRPCServer echoing the payload.
//   node http_server.js '{"port":0}'
// Prints {"ready":true,"port":P}; SIGTERM ends it.

const { PeerRPCServer } = require('grenache-nodejs-http')

const conf = JSON.parse(process.argv[2] || '{}')
const link = { lookup () {}, announce () {}, startAnnouncing () {}, stopAnnouncing () {} }

const peer = new PeerRPCServer(link, { timeout: 300000 })
peer.init()
const service = peer.transport('server')
service.on('request', (rid, key, payload, handler) => {
  handler.reply(null, payload)
})
service.listen(conf.port || 0)
service.socket.on('listening', () => {
  process.stdout.write(JSON.stringify({ ready: true, port: service.socket.address().port }) + '\n')
})
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
