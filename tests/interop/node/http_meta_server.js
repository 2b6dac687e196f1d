#!/usr/bin/env node
'use strict'

// A grenache-nodejs-http 1.0.2 RPC server that shows its handler's meta and can reply with an
// error and a result together, for the Python interop tests (tests/interop/test_http_rpc.py).
//
//   node http_meta_server.js '<json config>'
//
// config: {"grape": "<grape url>", "names": ["svc", ...]}
//
// Prints {"ready":true,"port":P} once every name was announced. The handler:
//   {"both": {"error": "msg", "result": X}} -> handler.reply(new Error("msg"), X)
//   anything else -> {"meta": meta without cert, "rid": rid, "key": key}

const Link = require('grenache-nodejs-link')
const { PeerRPCServer } = require('grenache-nodejs-http')

const conf = JSON.parse(process.argv[2] || '{}')

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const link = new Link({ grape: conf.grape })
link.start()

const peer = new PeerRPCServer(link, { timeout: 300000 })
peer.init()

const service = peer.transport('server')

service.on('request', (rid, key, payload, handler, cert, meta) => {
  const p = (payload && typeof payload === 'object') ? payload : {}
  if (p.both) return handler.reply(new Error(p.both.error), p.both.result)
  const shown = Object.assign({}, meta)
  delete shown.cert
  handler.reply(null, { meta: shown, rid, key })
})

service.listen(0)

service.socket.on('listening', () => {
  const port = service.socket.address().port
  const names = conf.names || []
  let pending = names.length
  const announceAll = (first) => {
    for (const name of names) {
      link.announce(name, port, {}, (err) => {
        if (!first) return
        if (err) out({ event: 'announce-error', name, error: err.message })
        pending -= 1
        if (pending === 0) out({ ready: true, port })
      })
    }
  }
  announceAll(true)
  setInterval(() => announceAll(false), 1000)
})

function stop () {
  try { peer.stop() } catch (e) {}
  try { link.stop() } catch (e) {}
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
