#!/usr/bin/env node
'use strict'

// A grenache-nodejs-ws 1.0.0 PeerPub, announced through a grape, publishing what stdin says.
//
//   node ws_pub.js '{"grape":URL,"name":N[,"port":P]}'
//
// Ready line: {"ready":true,"port":P}. Each subscriber connection prints
// {"event":"connection","subscribers":n}. Commands:
//   {"op":"pub","text":S} | {"op":"pub","base64":B}   (a string or a Buffer, sent verbatim)
//       -> {"event":"published","subscribers":n}

const { PeerPub } = require('grenache-nodejs-ws')
const { out, conf, link, commands, message } = require('./ws_common')

const c = conf()
const l = link(c.grape)

const peer = new PeerPub(l, {})
peer.init()

const service = peer.transport('server')
service.listen(c.port || 0)

service.socket.on('connection', (socket) => {
  out({ event: 'connection', subscribers: service._sockets.size })
  socket.on('close', () => out({ event: 'close', subscribers: service._sockets.size }))
})

service.socket.on('listening', () => {
  const port = service.socket.address().port
  if (c.name) l.startAnnouncing(c.name, port, { interval: 1000 })
  out({ ready: true, port })
})

commands((cmd) => {
  if (cmd.op === 'pub') {
    service.pub(message(cmd))
    out({ event: 'published', subscribers: service._sockets.size })
  }
})
