#!/usr/bin/env node
'use strict'

// The Node test suite's "announce to lots of grapes" scenario (announce.js), in one Node
// process as the suite runs it, with every lookup traced: for bench/scale.py's comparison.
//
//   node scale_suite.js [N=100]
//   node scale_suite.js N sizes [BATCH=500] [NAMES=20] [LOOKUPS=200] [SEED=1]
//
// createGrapes(N): grape 0 alone, grape 1 bootstraps from grape 0, grape i >= 2 from grape
// (i + 1) % 2, grapes 2.. starting together; real UDP and HTTP sockets on 127.0.0.1 (ports the
// OS picks). Grape 1 announces B at 2000, then grapes 2, 3, ... N-1 and 0 look B up one after
// the other. Each lookup is traced as bench/scale_sim.py traces Python lookups: get_peers
// queries the looker's k-rpc socket sent for B, hop 1 for a contact from the routing table and
// h + 1 for one first learned from a hop-h reply's nodes, the hop of the first reply carrying
// values, the deepest hop queried, and every datagram any grape sent meanwhile.
// Prints one JSON line: {"n", "lookups": [{found, queries, datagrams, hops, depth, ms}], ...}.
//
// The "sizes" scenario is bench/scale.py's size point with Node grapes: grape 0 alone, grape 1
// from grape 0, then the others in batches of BATCH booting together from both; NAMES names
// rest:scale:NNNN announced from random grapes, then LOOKUPS lookups of a random name from a
// random grape (seeded choices; node ids are Node's own random ones). It also reports
// "no_other_half": how many grapes hold no routing contact whose id's top bit differs from
// their own (the blind spot that makes a walk from them end short of keys in the other half).

const { Grape } = require('grenache-grape')

const N = parseInt(process.argv[2] || '100', 10)
let datagrams = 0

function makeGrape (bootstrap) {
  const grape = new Grape({
    dht_port: 0,
    api_port: '0',
    dht_bootstrap: bootstrap
  })
  return new Promise((resolve, reject) => {
    grape.once('ready', () => resolve(grape))
    grape.start((err) => { if (err) reject(err) })
  })
}

function dhtAddress (grape) {
  return `127.0.0.1:${grape.node.address().port}`
}

function countSends (grape) {
  const socket = grape.node._rpc.socket
  const send = socket.send
  socket.send = function () {
    datagrams++
    return send.apply(this, arguments)
  }
}

function parseNodes (buf) {
  const peers = []
  for (let i = 0; i + 26 <= buf.length; i += 26) {
    const ip = `${buf[i + 20]}.${buf[i + 21]}.${buf[i + 22]}.${buf[i + 23]}`
    peers.push(`${ip}:${buf.readUInt16BE(i + 24)}`)
  }
  return peers
}

function tracedLookup (grape, name, port = 2000) {
  const socket = grape.node._rpc.socket
  const query = socket.query
  const key = Buffer.from(name)
  const trace = { queries: 0, hops: null, depth: 0, hopOf: new Map() }
  socket.query = function (peer, message, cb) {
    const ih = message.a && message.a.info_hash
    if (message.q !== 'get_peers' || !Buffer.isBuffer(ih) || !ih.equals(key)) {
      return query.apply(this, arguments)
    }
    const addr = `${peer.host || peer.address}:${peer.port}`
    if (!trace.hopOf.has(addr)) trace.hopOf.set(addr, 1)
    const hop = trace.hopOf.get(addr)
    trace.queries++
    trace.depth = Math.max(trace.depth, hop)
    return query.call(this, peer, message, (err, res, from) => {
      const r = res && res.r
      if (!err && r) {
        if (Buffer.isBuffer(r.nodes)) {
          for (const learned of parseNodes(r.nodes)) {
            if (!trace.hopOf.has(learned)) trace.hopOf.set(learned, hop + 1)
          }
        }
        if (trace.hops === null && Array.isArray(r.values) && r.values.length) trace.hops = hop
      }
      cb(err, res, from)
    })
  }
  const before = datagrams
  const started = process.hrtime.bigint()
  return new Promise((resolve) => {
    grape.lookup(name, (err, peers) => {
      socket.query = query
      resolve({
        found: !err && Array.isArray(peers) && peers.includes(`127.0.0.1:${port}`),
        queries: trace.queries,
        datagrams: datagrams - before,
        hops: trace.hops,
        depth: trace.depth,
        ms: Number(process.hrtime.bigint() - started) / 1e6
      })
    })
  })
}

function pause (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

async function main () {
  const started = Date.now()
  const grapes = [await makeGrape([])]
  grapes.push(await makeGrape([dhtAddress(grapes[0])]))
  const rest = []
  for (let i = 2; i < N; i++) rest.push(makeGrape([dhtAddress(grapes[(i + 1) % 2])]))
  grapes.push(...await Promise.all(rest))
  const upMs = Date.now() - started
  grapes.forEach(countSends)
  await pause(1000) // let the last replies land
  const stored = await new Promise((resolve, reject) => {
    grapes[1].announce('B', 2000, (err, n) => err ? reject(err) : resolve(n))
  })
  await pause(200)
  const lookups = []
  const order = [...Array(N).keys()].slice(2).concat([0])
  for (const i of order) {
    lookups.push(await tracedLookup(grapes[i], 'B'))
    await pause(20)
  }
  const rss = process.memoryUsage().rss
  await Promise.all(grapes.map((g) => new Promise((resolve) => g.stop(resolve))))
  console.log(JSON.stringify({
    n: N,
    up_ms: upMs,
    announce_stored_on: stored,
    rss_mb: Math.round(rss / 1048576),
    lookups
  }))
  process.exit(0)
}

// mulberry32: a small seeded generator, so that the sizes scenario picks repeatably.
function rng (seed) {
  let a = seed >>> 0
  return function () {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function noOtherHalf (grapes) {
  let count = 0
  for (const grape of grapes) {
    const own = grape.node.nodeId[0] >> 7
    const contacts = grape.node.nodes.toArray()
    if (!contacts.some((c) => (c.id[0] >> 7) !== own)) count++
  }
  return count
}

async function sizes (args) {
  const [batch = 500, names = 20, lookupCount = 200, seed = 1] = args.map((a) => parseInt(a, 10))
  const random = rng(seed)
  const pick = (n) => Math.floor(random() * n)
  const started = Date.now()
  const grapes = [await makeGrape([])]
  grapes.push(await makeGrape([dhtAddress(grapes[0])]))
  const seeds = [dhtAddress(grapes[0]), dhtAddress(grapes[1])]
  for (let first = 2; first < N; first += batch) {
    const wave = []
    for (let i = first; i < Math.min(N, first + batch); i++) wave.push(makeGrape(seeds))
    grapes.push(...await Promise.all(wave))
    await pause(1000)
  }
  const upMs = Date.now() - started
  grapes.forEach(countSends)
  const serviceNames = [...Array(names).keys()].map((i) => `rest:scale:${String(i).padStart(4, '0')}`)
  const stored = []
  for (let i = 0; i < names; i++) {
    stored.push(await new Promise((resolve, reject) => {
      grapes[pick(N)].announce(serviceNames[i], 30000 + i, (err, n) => err ? reject(err) : resolve(n))
    }))
  }
  await pause(200)
  const lookups = []
  for (let i = 0; i < lookupCount; i++) {
    const name = pick(names)
    lookups.push(await tracedLookup(grapes[pick(N)], serviceNames[name], 30000 + name))
    await pause(20)
  }
  const rss = process.memoryUsage().rss
  const blind = noOtherHalf(grapes)
  const routingMean = grapes.reduce((s, g) => s + g.node.nodes.count(), 0) / N
  await Promise.all(grapes.map((g) => new Promise((resolve) => g.stop(resolve))))
  console.log(JSON.stringify({
    n: N,
    scenario: 'sizes',
    up_ms: upMs,
    announce_stored_on: stored,
    no_other_half: blind,
    routing_mean: routingMean,
    rss_mb: Math.round(rss / 1048576),
    lookups
  }))
  process.exit(0)
}

const run = process.argv[3] === 'sizes' ? () => sizes(process.argv.slice(4)) : main
run().catch((err) => {
  console.error(err)
  process.exit(1)
})
