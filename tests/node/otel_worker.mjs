// Node worker with OpenTelemetry on, for tests/telemetry.rs: serves
// node::traced. The SDK wraps each call in an `execute node::traced` span
// under the invocation's traceparent and sends it on /otel. Prints READY,
// then serves until stdin closes or SIGTERM.
import { connect, connected, deadline, stop, untilStopped } from './lib.mjs'

deadline(Number(process.env.QMESH_WORKER_DEADLINE_S ?? 120), 'node otel worker')
const iii = connect('node-otel-worker', {
  otel: { enabled: true, serviceName: 'node-otel-worker', spansFlushIntervalMs: 50 },
})

iii.registerFunction('node::traced', async (input) => ({ traced: 'node', n: input?.n ?? null }))

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
