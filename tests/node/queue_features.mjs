// Node side of qmesh's queue-features test (issue 18). Functions, named
// `<prefix>::…` (argv[2], default "node"):
//   report  — reports progress 50 then 100 and two log lines about its own
//             job (receipt from the job context in metadata), then completes;
//   long    — runs `data.ms` milliseconds, beating every `data.beat_ms`
//             (queue::heartbeat) when set, then completes;
//   leaf / mid / root — a flow: leaf returns data.n (or fails when
//             data.fail), mid returns the sum of its children's results,
//             root returns the children it received;
//   limited — completes at once, reporting when it ran ({"event":"ran"}).
import { connect, connected, deadline, emit, sleep, stop, untilStopped } from './lib.mjs'

deadline(120, 'node queue-features worker')
const prefix = process.argv[2] ?? 'node'
const iii = connect(`${prefix}-features`)
const call = (function_id, payload) => iii.trigger({ function_id, payload })

iii.registerFunction(`${prefix}::report`, async (_input, metadata) => {
  const receipt = metadata?.job?.receipt
  await call('queue::progress', { receipt, progress: 50 })
  await call('queue::log', { receipt, line: `${prefix} halfway` })
  await call('queue::progress', { receipt, progress: { percent: 100, stage: 'done' } })
  await call('queue::log', { receipt, line: `${prefix} finished` })
  return { reported: true }
})

iii.registerFunction(`${prefix}::long`, async (input, metadata) => {
  const receipt = metadata?.job?.receipt
  const started = Date.now()
  while (Date.now() - started < input.ms) {
    if (input.beat_ms) {
      await sleep(input.beat_ms)
      await call('queue::heartbeat', { receipt })
    } else {
      await sleep(50)
    }
  }
  emit({ event: 'long', receipt, attempt: metadata?.job?.attempt })
  return { ran_ms: Date.now() - started }
})

iii.registerFunction(`${prefix}::leaf`, async (input) => {
  if (input.fail) throw new Error(`leaf ${input.n} failed on purpose`)
  return input.n
})
iii.registerFunction(`${prefix}::mid`, async (_input, metadata) =>
  (metadata?.job?.children ?? []).reduce((sum, c) => sum + (c.result ?? 0), 0))
iii.registerFunction(`${prefix}::root`, async (_input, metadata) => metadata?.job?.children ?? [])

iii.registerFunction(`${prefix}::limited`, async (input) => {
  emit({ event: 'ran', i: input.i, tenant: input.tenant, at: Date.now() })
  return true
})

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
