// Node provider of the trigger type `node-ticker`, for qmesh's trigger tests.
// On each binding it prints {"event":"bound",...}, fires the bound function once
// with {tick:1, config} and prints {"event":"fired","result":...}; on unbinding
// it prints {"event":"unbound","id":...}. Serves until stdin closes or SIGTERM.
import { connect, connected, deadline, emit, errorBody, stop, untilStopped } from './lib.mjs'

deadline(Number(process.env.QMESH_WORKER_DEADLINE_S ?? 300), 'node trigger provider')
const iii = connect('node-ticker')

async function fire({ function_id, config }) {
  try {
    const result = await iii.trigger({ function_id, payload: { tick: 1, config }, timeoutMs: 20000 })
    emit({ event: 'fired', result })
  } catch (err) {
    emit({ event: 'fire_failed', error: errorBody(err) })
  }
}

iii.registerTriggerType(
  { id: 'node-ticker', description: 'Fires each bound function once (qmesh test)' },
  {
    async registerTrigger({ id, function_id, config }) {
      emit({ event: 'bound', id, function_id, config })
      setTimeout(() => fire({ function_id, config }), 0) // after the registration result
    },
    async unregisterTrigger({ id }) {
      emit({ event: 'unbound', id })
    },
  },
)

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
