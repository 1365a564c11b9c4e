// One call with OpenTelemetry on, made inside a `node caller` span, for
// tests/telemetry.rs. Usage: III_URL=ws://... node otel_call.mjs FUNCTION_ID 'JSON'
// Prints {trace_id, span_id, result}: the caller span's ids and the result.
import { flushOtel, withSpan } from '@iii-dev/helpers/observability'
import { connect, connected, deadline, emit, fail, stop } from './lib.mjs'

deadline(30, 'node otel call')
const [functionId, json = 'null'] = process.argv.slice(2)
if (!functionId) fail('usage: otel_call.mjs FUNCTION_ID [JSON]')
const payload = JSON.parse(json)

const iii = connect('node-otel-call', {
  otel: { enabled: true, serviceName: 'node-otel-call', spansFlushIntervalMs: 50 },
})
await connected(iii)
const out = await withSpan('node caller', {}, async (span) => {
  const result = await iii.trigger({ function_id: functionId, payload, timeoutMs: 25000 })
  const { traceId, spanId } = span.spanContext()
  return { trace_id: traceId, span_id: spanId, result }
})
await flushOtel()
emit(out)
await stop(iii, 0)
