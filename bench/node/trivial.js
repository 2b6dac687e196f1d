#!/usr/bin/env node
'use strict'

// Trivial servers for measuring a load generator's own ceiling (no dependencies).
//
//   node trivial.js http   a TCP server that answers every request (counted by its
//                          "\r\n\r\n" header terminator; bodies must not contain one) with
//                          a canned keep-alive "200 OK" carrying a small JSON body; no HTTP
//                          parsing, so it is cheaper than any real HTTP server
//   node trivial.js udp    a UDP server that echoes every datagram
//
// Both listen on 127.0.0.1, on a port the OS picks, print {"port":N} on stdout, and exit
// on SIGTERM/SIGINT.

const net = require('net')
const dgram = require('dgram')

const mode = process.argv[2] || 'http'
const ready = (port) => process.stdout.write(JSON.stringify({ port }) + '\n')

if (mode === 'http') {
  const body = '["127.0.0.1:1337"]'
  const response = Buffer.from(
    'HTTP/1.1 200 OK\r\nContent-Length: ' + body.length + '\r\nConnection: keep-alive\r\n\r\n' + body
  )
  const server = net.createServer((sock) => {
    sock.setNoDelay(true)
    let tail = ''
    sock.on('data', (chunk) => {
      const text = tail + chunk.toString('latin1')
      let n = 0
      let i = text.indexOf('\r\n\r\n')
      let last = 0
      while (i >= 0) {
        n++
        last = i + 4
        i = text.indexOf('\r\n\r\n', last)
      }
      tail = text.slice(Math.max(last, text.length - 3))
      if (n === 1) sock.write(response)
      else if (n > 1) sock.write(Buffer.concat(Array(n).fill(response)))
    })
    sock.on('error', () => {})
  })
  server.listen(0, '127.0.0.1', () => ready(server.address().port))
} else if (mode === 'udp') {
  const sock = dgram.createSocket('udp4')
  sock.on('message', (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address))
  sock.bind(0, '127.0.0.1', () => ready(sock.address().port))
} else {
  process.stderr.write('usage: node trivial.js http|udp\n')
  process.exit(2)
}

const stop = () => process.exit(0)
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
