// Node side of qmesh's streams client-socket tests.
// Usage: III_URL=ws://... node stream_lifecycle.mjs
// Registers node::stream::auth (the socket's auth function: ?user=NAME lets
// the client in with context {user}, ?deny=1 answers {unauthorized: true},
// anything else throws), node::stream::on_join (refuses group "private") and
// node::stream::on_leave, bound to stream:join and stream:leave. Prints
// {"event":"join"|"leave","data":...} per call, READY, then serves until
// stdin closes.
import { connect, connected, deadline, emit, stop, untilStopped } from './lib.mjs'

deadline(Number(process.env.QMESH_WORKER_DEADLINE_S ?? 120), 'node stream lifecycle')
const iii = connect('node-stream-lifecycle')

iii.registerFunction('node::stream::auth', async ({ query_params: q, addr }) => {
  if (q?.deny) return { unauthorized: true }
  if (!q?.user?.[0]) throw new Error('no user')
  return { context: { user: q.user[0], has_addr: typeof addr === 'string' } }
})
iii.registerFunction('node::stream::on_join', async (data) => {
  emit({ event: 'join', data })
  return data.group_id === 'private' ? { unauthorized: true } : {}
})
iii.registerFunction('node::stream::on_leave', async (data) => {
  emit({ event: 'leave', data })
  return {}
})
iii.registerTrigger({ type: 'stream:join', function_id: 'node::stream::on_join', config: {} })
iii.registerTrigger({ type: 'stream:leave', function_id: 'node::stream::on_leave', config: {} })

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
