#!/usr/bin/env node
'use strict'

// A grenache-nodejs-http 1.0.2 RPC server announced through grenache-nodejs-link 1.0.2, for the
// Python interop tests.
//
//   node http_server.js '<json config>'
//
// config: {"grape": "<grape url>", "names": ["svc", ...], "tag": "node-a",
//          "secure": {"key": path, "cert": path, "ca": path,
//                     "requestCert": bool, "rejectUnauthorized": bool}}     (optional)
//
// It listens on a port the OS picks, announces every name every second (as the README does)
// and prints {"ready":true,"port":P} once the first announce of every name was answered.
// Then one line per request: {"event":"request","rid":...,"key":...,"fingerprint":...}.
//
// The handler (payload-driven):
//   {"error": "msg"}   -> handler.reply(new Error("msg"))
//   {"silent": true}   -> never replies
//   {"stringError": s} -> handler.reply(s)   (a string error: Node sends null, i.e. success)
//   anything else      -> {"server": tag, "key": key, "echo": payload, "fingerprint": cert fp}

const fs = require('fs')
const Link = require('grenache-nodejs-link')
const { PeerRPCServer } = require('grenache-nodejs-http')

const conf = JSON.parse(process.argv[2] || '{}')
const tag = conf.tag || 'node'

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const link = new Link({ grape: conf.grape })
link.start()

const opts = { timeout: 300000 }
if (conf.secure) {
  opts.secure = {
    key: fs.readFileSync(conf.secure.key),
    cert: fs.readFileSync(conf.secure.cert),
    ca: fs.readFileSync(conf.secure.ca),
    requestCert: !!conf.secure.requestCert,
    rejectUnauthorized: !!conf.secure.rejectUnauthorized
  }
}

const peer = new PeerRPCServer(link, opts)
peer.init()

const service = peer.transport('server')

service.on('request', (rid, key, payload, handler, cert) => {
  const fingerprint = cert && cert.fingerprint ? cert.fingerprint : null
  out({ event: 'request', rid, key, fingerprint })
  const p = (payload && typeof payload === 'object') ? payload : {}
  if (p.silent) return
  if (p.error) return handler.reply(new Error(p.error))
  if (p.stringError !== undefined) return handler.reply(p.stringError)
  handler.reply(null, { server: tag, key, echo: payload, fingerprint })
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
        if (err) {
          out({ event: 'announce-error', name, error: err.message })
        }
        pending -= 1
        if (pending === 0) out({ ready: true, port })
      })
    }
  }
  announceAll(true)
  if (names.length === 0) out({ ready: true, port })
  setInterval(() => announceAll(false), 1000)
})

function stop () {
  try { peer.stop() } catch (e) {}
  try { link.stop() } catch (e) {}
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
