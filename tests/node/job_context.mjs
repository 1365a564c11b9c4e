// Node side of qmesh's job-context test: node::job reports the metadata its
// handler receives ({"event":"job","metadata":...}), beats once with the
// receipt from it (queue::heartbeat), then completes.
import { connect, connected, deadline, emit, stop, untilStopped } from './lib.mjs'

deadline(60, 'node job-context worker')
const iii = connect('node-job')
iii.registerFunction('node::job', async (_input, metadata) => {
  const beat = await iii.trigger({
    function_id: 'queue::heartbeat',
    payload: { receipt: metadata?.job?.receipt, extend: '5s' },
  })
  emit({ event: 'job', metadata, beat })
  return { ok: true }
})
await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
