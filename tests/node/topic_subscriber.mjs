// Node side of qmesh's durable topic tests: one durable:subscriber.
// Usage: III_URL=ws://... node topic_subscriber.mjs TOPIC FUNCTION_ID
// Registers FUNCTION_ID, binds it to TOPIC, prints {"event":"message","data":...}
// for every job it runs and runs until stdin closes.
import { connect, connected, deadline, emit, fail, stop, untilStopped } from './lib.mjs'

deadline(170, 'node topic subscriber')
const [topic, functionId] = process.argv.slice(2)
if (!topic || !functionId) fail('usage: topic_subscriber.mjs TOPIC FUNCTION_ID')

const iii = connect('node-topic')
iii.registerFunction(functionId, async (data) => {
  emit({ event: 'message', data })
  return { ok: true }
})
iii.registerTrigger({ type: 'durable:subscriber', function_id: functionId, config: { topic } })

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
