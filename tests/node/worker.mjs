// Long-running Node worker for qmesh's SDK tests: registers node::add,
// node::echo, node::fail and node::relay (which calls py::add through the
// engine). Prints READY, then serves until stdin closes or SIGTERM.
import { connect, connected, deadline, stop, untilStopped } from './lib.mjs'

deadline(Number(process.env.QMESH_WORKER_DEADLINE_S ?? 300), 'node worker')
const iii = connect('node-worker')

iii.registerFunction('node::add', async ({ a, b }) => ({ sum: a + b }))
iii.registerFunction('node::echo', async (input) => input)
iii.registerFunction('node::fail', async () => {
  throw new Error('boom')
})
iii.registerFunction('node::relay', async (input) => {
  const { _caller_worker_id, ...payload } = input ?? {} // injected by the engine
  const result = await iii.trigger({ function_id: 'py::add', payload, timeoutMs: 20000 })
  return { via: 'node', result }
})

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
