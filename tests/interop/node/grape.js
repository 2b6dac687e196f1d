#!/usr/bin/env node
'use strict'

// Start a grenache-grape 1.0.0 Grape from code, for the Python interop tests.
//
//   node grape.js '<json options>'
//
// Options are Grape constructor options (dht_port, api_port, dht_bootstrap,
// dht_peer_maxAge, dht_nodeLiveness, dht_maxTables, dht_maxValues,
// check_maxPayloadSize, host, ...), plus:
//   verify: true   use tweetnacl's ed25519 verification for BEP 44 mutable items
//                  (stock Grape 1.0.0 has none, so it rejects mutable puts).
// dht_port and api_port default to 0 (the OS picks).
//
// Once the DHT socket and the HTTP API listen and the DHT bootstrap finished,
// it prints one JSON line on stdout:
//   {"dht_port":N,"api_port":N,"id":"<node id hex>"}
// Diagnostics go to stderr. SIGTERM/SIGINT stop the grape and exit 0.

const { Grape } = require('grenache-grape')

function main () {
  const opts = JSON.parse(process.argv[2] || '{}')
  const verify = opts.verify === true
  delete opts.verify

  const conf = { dht_port: 0, api_port: 0, ...opts }
  // Grape refuses a falsy api_port (ERR_NO_PORT); the string '0' is truthy and
  // net.Server.listen('0') asks the OS for a free port.
  if (conf.api_port === 0) conf.api_port = '0'

  if (verify) {
    const nacl = require('tweetnacl')
    conf.verify = (sig, msg, pk) => {
      try {
        return nacl.sign.detached.verify(msg, sig, pk)
      } catch (err) {
        // tweetnacl throws on a key or signature of the wrong size
        return false
      }
    }
  }

  const g = new Grape(conf)
  let started = false
  let ready = false
  let stopping = false

  const log = (...args) => {
    process.stderr.write(`[grape ${conf.dht_port}] ${args.join(' ')}\n`)
  }

  const report = () => {
    if (!started || !ready) return
    const dhtPort = g.node.address().port
    const apiPort = g._interface.http.address().port
    // Make the Grape behave as if started with these ports (announce of port 0
    // means "my DHT port").
    g.conf.dht_port = dhtPort
    g.conf.api_port = apiPort
    conf.dht_port = dhtPort
    process.stdout.write(JSON.stringify({
      dht_port: dhtPort,
      api_port: apiPort,
      id: g.node.nodeId.toString('hex')
    }) + '\n')
    log('ready, api', apiPort)
  }

  g.once('ready', () => {
    ready = true
    report()
  })
  g.on('warning', (err) => log('warning', err && err.message))

  g.start((err) => {
    if (err) {
      log('start failed:', err.message)
      process.exit(1)
    }
    started = true
    report()
  })

  const stop = (sig) => {
    if (stopping) return
    stopping = true
    log('stopping on', sig)
    const hard = setTimeout(() => process.exit(0), 2000)
    hard.unref()
    g.stop(() => process.exit(0))
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}

main()
