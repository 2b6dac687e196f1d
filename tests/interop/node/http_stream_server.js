#!/usr/bin/env node
'use strict'

// A grenache-nodejs-http 1.0.2 streaming server (disableBuffered: true, handling 'stream',
// docs/protocol.rst, *RPC over HTTP* and *HTTP streaming*), announced through grenache-nodejs-link 1.0.2, for the Python interop
// tests.
//
//   node http_stream_server.js '<json config>'    config: {"grape": url, "names": [...]}
//
// Listens on a port the OS picks, announces every name every second and prints
// {"ready":true,"port":P} once the first announce of every name was answered. Then, for each
// request, one line: {"event":"stream","infoHeaders":...,"action":...,"args":...,"isStream":b}.
//
// What it does with a request depends on meta.action (the _a header):
//   "echo" (or none): req.pipe(res), the body back as it arrives;
//   "hash": reads the body, then handler.reply(rid, null,
//           {"size": n, "sha256": hex, "args": meta.args, "key": infoHeaders[1]});
//   "error": reads the body, then handler.reply(rid, new Error(meta.args.message)).

const crypto = require('crypto')
const Link = require('grenache-nodejs-link')
const { PeerRPCServer } = require('grenache-nodejs-http')

const conf = JSON.parse(process.argv[2] || '{}')

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const link = new Link({ grape: conf.grape })
link.start()

const peer = new PeerRPCServer(link, { timeout: 300000, disableBuffered: true })
peer.init()

const service = peer.transport('server')

service.on('stream', (req, res, meta, handler) => {
  const info = meta.infoHeaders || []
  out({
    event: 'stream',
    infoHeaders: meta.infoHeaders || null,
    action: meta.action,
    args: meta.args,
    isStream: meta.isStream
  })
  const action = meta.action || 'echo'
  if (action === 'echo') {
    req.pipe(res)
    return
  }
  const hash = crypto.createHash('sha256')
  let size = 0
  req.on('data', (d) => {
    size += d.length
    hash.update(d)
  })
  req.on('end', () => {
    if (action === 'error') {
      handler.reply(info[0], new Error((meta.args && meta.args.message) || 'failed'))
      return
    }
    handler.reply(info[0], null, { size, sha256: hash.digest('hex'), args: meta.args, key: info[1] })
  })
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
