// Node side of qmesh's cron tests: a function bound to a `cron` trigger.
// Usage: III_URL=ws://... node cron_worker.mjs TRIGGER_ID EXPRESSION
// Registers node::cron_tick, binds it with {expression} (metadata
// {"from":"node"}), prints {"event":"tick","data":...} for every fire and
// runs until stdin closes.
import { connect, connected, deadline, emit, fail, stop, untilStopped } from './lib.mjs'

deadline(120, 'node cron worker')
const [triggerId, expression] = process.argv.slice(2)
if (!triggerId || !expression) fail('usage: cron_worker.mjs TRIGGER_ID EXPRESSION')

const iii = connect('node-cron')
iii.registerFunction('node::cron_tick', async (data) => {
  emit({ event: 'tick', data })
  return { ok: true }
})
iii.registerTrigger({
  id: triggerId,
  type: 'cron',
  function_id: 'node::cron_tick',
  config: { expression },
  metadata: { from: 'node' },
})

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
