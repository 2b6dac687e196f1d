#!/usr/bin/env node
'use strict'

// Benchmark: a grenache-nodejs-ws 1.0.0 RPC server that echoes each payload.
//
//   node ws_rpc_server.js
//
// Listens on a port the OS picks (all interfaces, as the transport does), prints
// {"port":N} on stdout, and exits on SIGTERM/SIGINT. No grape: the bench client is told the
// address directly.

const { PeerRPCServer } = require('grenache-nodejs-ws')

const peer = new PeerRPCServer({}, {})
peer.init()
const service = peer.transport('server')
service.listen(0)
service.on('request', (rid, key, payload, handler) => handler.reply(null, payload))
service.socket.on('listening', () => {
  process.stdout.write(JSON.stringify({ port: service.socket.address().port }) + '\n')
})
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
