// One node of an Aedes cluster, for scripts/cluster-test --broker aedes.
//
// Aedes clusters by sharing its state through Redis: sessions, subscriptions,
// queued and in-flight QoS 1/2 messages and retained messages live in Redis
// (aedes-persistence-redis), and every publish reaches every node through Redis
// pub/sub (mqemitter-redis). Any node can then serve any client's session.
//
//   node broker.mjs --id N --port MQTT_PORT --redis REDIS_PORT \
//        --ca ca.crt --cert broker.crt --key broker.key
//
// Mutual TLS: a client must present a certificate from our CA (as on the
// RMQTT nodes; the shipped Mosquitto also makes the CN the client id, which
// Aedes cannot). No ACL: this is a test tool on loopback.
import fs from 'node:fs'
import tls from 'node:tls'
import { parseArgs } from 'node:util'
import { Aedes } from 'aedes'
import aedesPersistenceRedis from 'aedes-persistence-redis'
import mqemitterRedis from 'mqemitter-redis'

const { values: args } = parseArgs({
  options: {
    id: { type: 'string' },
    port: { type: 'string' },
    redis: { type: 'string' },
    ca: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' }
  }
})
for (const k of ['id', 'port', 'redis', 'ca', 'cert', 'key']) {
  if (!args[k]) {
    console.error(`missing --${k}`)
    process.exit(64)
  }
}
const redis = { host: '127.0.0.1', port: Number(args.redis) }

const broker = await Aedes.createBroker({
  id: `node${args.id}`,
  persistence: aedesPersistenceRedis({
    ...redis,
    // Default 1000: a session resumed after an outage would get only the first
    // 1000 of its queued messages. As the shipped Mosquitto's max_queued_messages.
    maxSessionDelivery: 100000
  }),
  mq: mqemitterRedis(redis)
})

broker.on('client', (c) => {
  const cn = c.conn.getPeerCertificate?.()?.subject?.CN
  console.error(`node${args.id}: connected ${c.id} (certificate ${cn})`)
})
broker.on('clientDisconnect', (c) => console.error(`node${args.id}: disconnected ${c.id}`))
broker.on('clientError', (c, e) => console.error(`node${args.id}: client ${c.id} error: ${e.message}`))

const server = tls.createServer({
  ca: fs.readFileSync(args.ca),
  cert: fs.readFileSync(args.cert),
  key: fs.readFileSync(args.key),
  requestCert: true,
  rejectUnauthorized: true
}, broker.handle)
server.listen(Number(args.port), '127.0.0.1', () => {
  console.error(`aedes node ${args.id} ready on 127.0.0.1:${args.port} (redis ${redis.port})`)
})
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close()
    broker.close(() => process.exit(0))
  })
}
