#!/usr/bin/env node
'use strict'

// Drive grenache-nodejs-link 1.0.2 against a grape API, for the Python interop tests.
//
//   node link_client.js <grape url> '<json list of operations>'   (batch: run them, then exit)
//   node link_client.js <grape url>                                (interactive: one JSON
//                                                                    operation or list per stdin line)
//
// The first stdout line is {"ready":true,"grape":"<url>"}. Then one JSON line per
// operation, in order:
//   {"i":<index>,"op":"<op>","ok":true,"result":<result>}
//   {"i":<index>,"op":"<op>","ok":false,"error":"<message>","code":<err.code or null>}
// An operation may carry "tag", which is echoed back.
//
// Operations (the fields mirror the Link API):
//   {"op":"lookup","name":N[,"opts":{...}]}
//   {"op":"announce","name":N,"port":P[,"opts":{...}]}
//   {"op":"put","data":{v,k?,sig?,seq?,salt?,cas?}}
//   {"op":"get","data":"<hash>" | {"hash":H,"salt":S}}
//   {"op":"startAnnouncing","name":N,"port":P[,"opts":{"interval":MS}]}   (result after the first announce)
//   {"op":"stopAnnouncing","name":N,"port":P}
//   {"op":"request","type":T,"payload":X[,"opts":{...}]}                 (raw Link.request)
// Interactive mode exits when stdin ends; SIGTERM/SIGINT stop the link and exit 0.

const Link = require('grenache-nodejs-link')
const readline = require('readline')

const url = process.argv[2]
if (!url) {
  process.stderr.write('usage: link_client.js <grape url> [<json ops>]\n')
  process.exit(2)
}

const link = new Link({ grape: url })
link.start()

let counter = 0

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function errInfo (err) {
  if (err instanceof Error) {
    return { error: err.message, code: err.code === undefined ? null : err.code }
  }
  return { error: String(err), code: null }
}

function call (op) {
  return new Promise((resolve) => {
    const done = (err, result) => {
      if (err) return resolve({ ok: false, ...errInfo(err) })
      resolve({ ok: true, result: result === undefined ? null : result })
    }
    try {
      switch (op.op) {
        case 'lookup':
          return link.lookup(op.name, op.opts || {}, done)
        case 'announce':
          return link.announce(op.name, op.port, op.opts || {}, done)
        case 'put':
          return link.put(op.data, done)
        case 'get':
          return link.get(op.data, done)
        case 'startAnnouncing': {
          const started = link.startAnnouncing(op.name, op.port, op.opts || {}, done)
          if (started === false) done(new Error('ALREADY_ANNOUNCING'))
          return
        }
        case 'stopAnnouncing':
          return done(null, link.stopAnnouncing(op.name, op.port) !== false)
        case 'request':
          return link.request(op.type, op.payload, op.opts || {}, done)
        default:
          return done(new Error(`UNKNOWN_OP ${op.op}`))
      }
    } catch (err) {
      done(err)
    }
  })
}

async function runOps (ops) {
  if (!Array.isArray(ops)) ops = [ops]
  for (const op of ops) {
    const i = counter++
    const res = await call(op)
    const line = { i, op: op.op, ...res }
    if (op.tag !== undefined) line.tag = op.tag
    out(line)
  }
}

function shutdown (code) {
  try {
    link.stop()
  } catch (err) {
    // ignore
  }
  process.exit(code)
}

process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(0))

out({ ready: true, grape: url })

if (process.argv[3] !== undefined) {
  runOps(JSON.parse(process.argv[3])).then(() => shutdown(0), (err) => {
    process.stderr.write(`link_client failed: ${err.stack}\n`)
    shutdown(1)
  })
} else {
  // Interactive: serialise operations in arrival order.
  let chain = Promise.resolve()
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', (line) => {
    if (!line.trim()) return
    let ops
    try {
      ops = JSON.parse(line)
    } catch (err) {
      out({ i: counter++, op: null, ok: false, error: `bad json: ${err.message}`, code: null })
      return
    }
    chain = chain.then(() => runOps(ops))
  })
  rl.on('close', () => {
    chain.then(() => shutdown(0))
  })
}
