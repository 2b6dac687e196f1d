#!/usr/bin/env node
'use strict'

// A grenache-nodejs-ws 1.0.0 PeerRPCClient (with the link), driven by JSON lines on stdin.
//
//   node ws_client.js '{"grape":URL[,"tls":{key,cert,ca}][,"peer":{...PeerRPCClient conf}]}'
//
// Ready line: {"ready":true}. Commands:
//   {"id":I,"op":"request","name":N,"payload":P[,"timeout":ms]}
//       -> {"id":I,"ok":true,"result":R} | {"id":I,"ok":false,"error":msg}
//   {"id":I,"op":"many","name":N,"payloads":[...][,"timeout":ms]}   all sent at once
//       -> {"id":I,"results":[{"ok":..,"result"|"error":..}, ...]}  in payload order

const { PeerRPCClient } = require('grenache-nodejs-ws')
const { out, conf, link, secure, commands } = require('./ws_common')

const c = conf()
const l = link(c.grape)

const peerConf = { ...(c.peer || {}) }
if (c.tls) peerConf.secure = secure(c.tls)

const peer = new PeerRPCClient(l, peerConf)
peer.init()

function request (name, payload, timeout) {
  return new Promise((resolve) => {
    peer.request(name, payload, { timeout: timeout || 10000 }, (err, result) => {
      if (err) resolve({ ok: false, error: err.message })
      else resolve({ ok: true, result: result === undefined ? null : result })
    })
  })
}

commands(async (cmd) => {
  if (cmd.op === 'request') {
    const r = await request(cmd.name, cmd.payload, cmd.timeout)
    out({ id: cmd.id, ...r })
  } else if (cmd.op === 'many') {
    const results = await Promise.all(cmd.payloads.map((p) => request(cmd.name, p, cmd.timeout)))
    out({ id: cmd.id, results })
  } else {
    out({ id: cmd.id, ok: false, error: `unknown op ${cmd.op}` })
  }
})

out({ ready: true })
