// Node side of qmesh's HTTP route tests (the README's Node example).
// Usage: III_URL=ws://... node http_route.mjs
// Serves GET /node/hello/:name through an `http` trigger; prints READY once
// the registrations are sent; runs until stdin closes.
import { connect, connected, deadline, stop, untilStopped } from './lib.mjs'

deadline(60, 'node http route')
const iii = connect('node-http')

iii.registerFunction('node::hello', async (req) => ({
  status_code: 200,
  headers: { 'x-served-by': 'node' },
  body: { hello: req.path_params.name, lang: req.query_params.lang ?? null, method: req.method },
}))
iii.registerTrigger({
  type: 'http',
  function_id: 'node::hello',
  config: { api_path: 'node/hello/:name', http_method: 'GET' },
})

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
