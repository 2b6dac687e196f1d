'use strict'

// Helpers shared by the ws_*.js interop scripts (grenache-nodejs-ws 1.0.0).
//
// Every script prints JSON lines on stdout: the first one is its ready line, later ones are
// events and replies. Diagnostics go to stderr. A Node ws client has no 'error' listener on
// its socket (docs/protocol.rst, *RPC over WebSocket*), so a refused connection would kill the process with an
// unhandled 'error' event: uncaught exceptions are reported as {"event":"uncaught"} lines
// instead, and the process keeps running, so a test sees what happened.

const Link = require('grenache-nodejs-link')
const readline = require('readline')

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

process.on('uncaughtException', (err) => {
  out({ event: 'uncaught', error: err && err.message ? err.message : String(err) })
  process.stderr.write(`uncaught: ${err && err.stack ? err.stack : err}\n`)
})

function conf () {
  return JSON.parse(process.argv[2] || '{}')
}

function link (grape) {
  const l = new Link({ grape })
  l.start()
  return l
}

// Node's `secure` option from PEM strings: {key, cert, ca}.
function secure (tls) {
  if (!tls) return undefined
  return {
    key: Buffer.from(tls.key),
    cert: Buffer.from(tls.cert),
    ca: Buffer.from(tls.ca),
    rejectUnauthorized: false
  }
}

// Call fn(obj) for each JSON line on stdin.
function commands (fn) {
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', (line) => {
    line = line.trim()
    if (!line) return
    let cmd
    try {
      cmd = JSON.parse(line)
    } catch (e) {
      out({ event: 'bad-command', line })
      return
    }
    fn(cmd)
  })
}

// A message as a JSON-able object: {text} for a string, {base64} for a Buffer.
function describe (msg) {
  if (Buffer.isBuffer(msg)) return { base64: msg.toString('base64') }
  return { text: msg }
}

// The message a command asks to publish: a string, or a Buffer from base64.
function message (cmd) {
  return cmd.base64 !== undefined ? Buffer.from(cmd.base64, 'base64') : cmd.text
}

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0))
}

module.exports = { out, conf, link, secure, commands, describe, message }
