#!/usr/bin/env node
'use strict'

// A grenache-nodejs-ws 1.0.0 PeerRPCServer, announced through a grape, for the interop tests.
//
//   node ws_server.js '{"grape":URL,"name":N[,"port":P][,"tls":{key,cert,ca}][,"whitelist":[fp]]}'
//
// Ready line: {"ready":true,"port":P}. The handler answers
//   {"fail":"msg"}               -> handler.reply(new Error("msg"))
//   {"delay":ms,...}             -> the echo below, after ms
//   anything else                -> {"echo":payload,"key":key,"fingerprint":cert fp or null}
// With tls, verifyClient accepts only the certificate fingerprints in "whitelist" and prints
// {"event":"verify","fingerprint":fp,"allowed":bool}. Unparseable frames print
// {"event":"request-error"}.

const { PeerRPCServer } = require('grenache-nodejs-ws')
const { out, conf, link, secure } = require('./ws_common')

const c = conf()
const l = link(c.grape)

const peerConf = {}
if (c.tls) {
  peerConf.secure = {
    ...secure(c.tls),
    verifyClient: (info, cb) => {
      const cert = info.req.socket.getPeerCertificate()
      const fp = cert && cert.fingerprint ? cert.fingerprint : null
      const allowed = (c.whitelist || []).includes(fp)
      out({ event: 'verify', fingerprint: fp, allowed })
      if (allowed) return cb(true)
      cb(false, 401, 'Forbidden')
    }
  }
}

const peer = new PeerRPCServer(l, peerConf)
peer.init()

const service = peer.transport('server')
service.listen(c.port || 0)

service.on('request', (rid, key, payload, handler, cert) => {
  if (payload && payload.fail) {
    handler.reply(new Error(payload.fail))
    return
  }
  const reply = () => handler.reply(null, {
    echo: payload,
    key,
    fingerprint: cert && cert.fingerprint ? cert.fingerprint : null
  })
  if (payload && payload.delay) {
    out({ event: 'delayed', rid })
    setTimeout(reply, payload.delay)
  } else reply()
})

service.on('request-error', () => out({ event: 'request-error' }))

service.socket.on('listening', () => {
  const port = service.socket.address().port
  if (c.name) l.startAnnouncing(c.name, port, { interval: 1000 })
  out({ ready: true, port })
})
