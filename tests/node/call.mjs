// One synchronous call through the engine with the Node SDK, for qmesh's tests.
// Usage: III_URL=ws://... node call.mjs FUNCTION_ID 'JSON'
// Prints the result as one JSON line (exit 0), or the error {code,message} (exit 3).
import { connect, deadline, emit, errorBody, fail, stop } from './lib.mjs'

deadline(30, 'node call')
const [functionId, json = 'null'] = process.argv.slice(2)
if (!functionId) fail('usage: call.mjs FUNCTION_ID [JSON]')
let payload
try {
  payload = JSON.parse(json)
} catch (e) {
  fail(`payload is not JSON: ${e.message}`)
}

const iii = connect('node-call')
try {
  // Sent as soon as the socket opens; the SDK queues it until then.
  emit(await iii.trigger({ function_id: functionId, payload, timeoutMs: 25000 }))
} catch (err) {
  emit(errorBody(err))
  await stop(iii, 3)
}
await stop(iii, 0)
