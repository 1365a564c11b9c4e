// Node side that binds to a trigger type, for qmesh's trigger tests.
// Usage: III_URL=ws://... node trigger_binder.mjs TRIGGER_TYPE
// Registers node::on_tick, binds it with config {"every":"1s"}, prints
// {"event":"tick","data":...} on the first tick, unbinds, waits 1 s, exits 0.
import { connect, connected, deadline, emit, fail, sleep, stop } from './lib.mjs'

deadline(30, 'node trigger binder')
const triggerType = process.argv[2]
if (!triggerType) fail('usage: trigger_binder.mjs TRIGGER_TYPE')

const iii = connect('node-binder')
let ticked
const firstTick = new Promise((resolve) => (ticked = resolve))
iii.registerFunction('node::on_tick', async (data) => {
  emit({ event: 'tick', data })
  setTimeout(ticked, 200) // unbind only after this result has gone out
  return { ok: true }
})
const binding = iii.registerTrigger({ type: triggerType, function_id: 'node::on_tick', config: { every: '1s' } })

await connected(iii)
console.log('READY')
await firstTick
binding.unregister()
await sleep(1000)
await stop(iii, 0)
