#!/usr/bin/env node
'use strict'

// A grenache-nodejs-ws 1.0.0 PeerRPCClient that reports the error AND the result of each reply
// (a handler may send both, as Node's handler.reply(err, result) can), driven by JSON lines.
//
//   node ws_reply_client.js '{"grape":URL}'
//
// Ready line: {"ready":true}. Command:
//   {"id":I,"name":N,"payload":P}  -> {"id":I,"error":err.message|null,"result":R|null}

const { PeerRPCClient } = require('grenache-nodejs-ws')
const { out, conf, link, commands } = require('./ws_common')

const c = conf()
const peer = new PeerRPCClient(link(c.grape), {})
peer.init()

commands((cmd) => {
  peer.request(cmd.name, cmd.payload, { timeout: 10000 }, (err, result) => {
    out({
      id: cmd.id,
      error: err ? err.message : null,
      result: result === undefined ? null : result
    })
  })
})

out({ ready: true })
