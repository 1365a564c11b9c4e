// A custom stream provider in Node, for qmesh's tests.
// Usage: III_URL=ws://... node stream_provider.mjs STREAM_NAME
// Registers stream::{get,set,delete,list,list_groups,update}(STREAM_NAME)
// over an in-memory map. Prints {"op":...,"input":...} per call (so the test
// sees what the engine sent), READY, then serves until stdin closes. A set
// whose data has {"bad": true} answers a string, which is not a set result.
import { connect, connected, deadline, emit, fail, stop, untilStopped } from './lib.mjs'

deadline(Number(process.env.QMESH_WORKER_DEADLINE_S ?? 120), 'node stream provider')
const name = process.argv[2]
if (!name) fail('usage: stream_provider.mjs STREAM_NAME')
const iii = connect('node-stream-provider')

const groups = new Map() // group -> Map(item -> data)
const group = (g) => {
  if (!groups.has(g)) groups.set(g, new Map())
  return groups.get(g)
}
const provide = (op, handler) =>
  iii.registerFunction(`stream::${op}(${name})`, async (input) => {
    emit({ op, input })
    return handler(input)
  })

provide('get', ({ group_id, item_id }) => group(group_id).get(item_id) ?? null)
provide('set', ({ group_id, item_id, data }) => {
  if (data?.bad) return 'not a set result'
  const old = group(group_id).get(item_id) ?? null
  group(group_id).set(item_id, data)
  return { old_value: old, new_value: data }
})
provide('delete', ({ group_id, item_id }) => {
  const old = group(group_id).get(item_id) ?? null
  group(group_id).delete(item_id)
  return { old_value: old }
})
provide('list', ({ group_id }) => [...group(group_id).values()])
provide('list_groups', () => [...groups.keys()].filter((g) => groups.get(g).size > 0).sort())
provide('update', ({ group_id, item_id, ops }) => {
  const old = group(group_id).get(item_id) ?? null
  const next = { ...(old ?? {}) }
  for (const op of ops) if (op.type === 'set') next[op.path] = op.value
  group(group_id).set(item_id, next)
  return { old_value: old, new_value: next }
})

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
