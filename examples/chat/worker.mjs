// The chat example's worker: it handles the realtime route /ws/chat (rooms,
// messages, presence) with ordinary functions, and serves the page.
//
//   III_URL=ws://127.0.0.1:49134 QMESH_REALTIME_URL=ws://127.0.0.1:3113 PORT=8080 node worker.mjs
//
// The worker talks to the engine's worker listener (III_URL); browsers reach
// the route on the engine's realtime listener (QMESH_REALTIME_URL), a
// separate port, so the worker port never has to be public.
// Clients connect to ws://REALTIME/ws/chat?nick=ann and send
//   {"action":"join","room":"lobby","id":1}
//   {"action":"say","room":"lobby","text":"hi","id":2}
//   {"action":"leave","room":"lobby","id":3}
// Each gets a reply echoing its action and id; rooms receive broadcasts
//   {"topic":"room:lobby","data":{"type":"message"|"presence",...}}
import { registerWorker } from 'iii-sdk'
import { createServer } from 'node:http'
import { readFile } from 'node:fs/promises'

const ENGINE = process.env.III_URL ?? 'ws://127.0.0.1:49134'
const PUBLIC = process.env.QMESH_REALTIME_URL ?? 'ws://127.0.0.1:3113'
const PORT = Number(process.env.PORT ?? 8080)
const ROUTE = '/ws/chat'
process.env.OTEL_ENABLED ??= 'false'
console.debug = () => {} // the SDK's connection chatter

const iii = registerWorker(ENGINE, {
  workerName: 'chat-example',
  otel: { enabled: false },
  enableMetricsReporting: false,
})
const call = (function_id, payload) => iii.trigger({ function_id, payload })
const topic = (room) => `room:${room}`

function roomName(data) {
  const room = String(data?.room ?? '')
  if (!/^[\w-]{1,32}$/.test(room)) throw new Error('room: 1 to 32 letters, digits, - or _')
  return room
}

/** Tells a room who is in it now (`leaving` is a channel on its way out). */
async function presence(room, leaving) {
  const { channels } = await call('channel::list', { topic: topic(room) })
  const who = channels
    .filter((c) => c.channel_id !== leaving)
    .map((c) => c.state?.nick)
    .filter(Boolean)
    .sort()
  await call('channel::publish', { topic: topic(room), data: { type: 'presence', room, who } })
}

iii.registerFunction('chat::connect', async ({ channel }) => {
  const asked = String(channel.opening_data.nick ?? '').trim().slice(0, 32)
  const nick = asked || `guest-${channel.channel_id.slice(-4)}`
  await call('channel::set_state', { channel_id: channel.channel_id, state: { nick, rooms: [] } })
  return { type: 'welcome', nick }
})

iii.registerFunction('chat::join', async ({ channel, data }) => {
  const room = roomName(data)
  const rooms = [...new Set([...channel.state.rooms, room])]
  await call('channel::set_state', { channel_id: channel.channel_id, state: { rooms }, merge: true })
  await call('channel::subscribe', { channel_id: channel.channel_id, topic: topic(room) })
  await presence(room)
  return { room }
})

iii.registerFunction('chat::leave', async ({ channel, data }) => {
  const room = roomName(data)
  const rooms = channel.state.rooms.filter((r) => r !== room)
  await call('channel::set_state', { channel_id: channel.channel_id, state: { rooms }, merge: true })
  await call('channel::unsubscribe', { channel_id: channel.channel_id, topic: topic(room) })
  await presence(room)
  return { room }
})

iii.registerFunction('chat::say', async ({ channel, data }) => {
  const room = roomName(data)
  if (!channel.state.rooms.includes(room)) throw new Error(`join ${room} first`)
  const text = String(data.text ?? '').slice(0, 2000)
  if (!text) throw new Error('text is empty')
  const message = { type: 'message', room, from: channel.state.nick, text, at: Date.now() }
  await call('channel::publish', { topic: topic(room), data: message })
  return { sent: true }
})

iii.registerFunction('chat::disconnect', async ({ channel }) => {
  for (const room of channel.state?.rooms ?? []) await presence(room, channel.channel_id)
})

// The page, with the engine's public (realtime) address filled in.
const page = (await readFile(new URL('./index.html', import.meta.url), 'utf8')).replace('__ENGINE_URL__', PUBLIC)
const server = createServer((req, res) => {
  if (req.url === '/' || req.url.startsWith('/?')) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page)
  } else {
    res.writeHead(404).end('not found')
  }
})
server.listen(PORT, '127.0.0.1', () => {
  const port = server.address().port
  // Only pages served from here may open the socket (browsers always send Origin).
  const route_options = { allowed_origins: [`http://127.0.0.1:${port}`, `http://localhost:${port}`] }
  const bind = (function_id, config) => iii.registerTrigger({ type: 'websocket', function_id, config })
  bind('chat::connect', { route: ROUTE, on: 'connect', route_options })
  bind('chat::join', { route: ROUTE, on: 'message', match: { action: 'join' } })
  bind('chat::leave', { route: ROUTE, on: 'message', match: { action: 'leave' } })
  bind('chat::say', { route: ROUTE, on: 'message', match: { action: 'say' } })
  bind('chat::disconnect', { route: ROUTE, on: 'disconnect' })
  console.log(`chat page: http://127.0.0.1:${port}/ (engine ${ENGINE}, realtime ${PUBLIC})`)
})

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    server.close()
    iii.shutdown?.()
    process.exit(0)
  })
}
