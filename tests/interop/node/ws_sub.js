#!/usr/bin/env node
'use strict'

// A grenache-nodejs-ws 1.0.0 PeerSub subscribed to a name looked up through a grape.
//
//   node ws_sub.js '{"grape":URL,"name":N}'
//
// Ready line: {"ready":true}. Then {"event":"connected"}, {"event":"disconnected"},
// {"event":"message","text":S} or {"event":"message","base64":B} (binary frames),
// {"event":"error","error":msg} (lookup errors).

const { PeerSub } = require('grenache-nodejs-ws')
const { out, conf, link, describe } = require('./ws_common')

const c = conf()
const l = link(c.grape)

const peer = new PeerSub(l, {})
peer.init()

peer.on('connected', () => out({ event: 'connected' }))
peer.on('disconnected', () => out({ event: 'disconnected' }))
peer.on('message', (msg) => out({ event: 'message', ...describe(msg) }))
peer.on('error', (err) => out({ event: 'error', error: err.message }))

out({ ready: true })
peer.sub(c.name, { timeout: 10000 })
