// Shared helpers for the Node test clients (npm iii-sdk 0.22.1) that qmesh's
// Rust tests spawn: engine URL from III_URL, OTel off, READY / JSON-line output,
// a hard deadline, and a clean stop on stdin EOF or SIGTERM.
import { registerWorker } from 'iii-sdk'

// The SDK logs progress with console.debug (stdout); keep stdout for results.
console.debug = (...args) => console.error(...args)

export function fail(message, code = 1) {
  process.stderr.write(`${message}\n`)
  process.exit(code)
}

export const emit = (value) => process.stdout.write(`${JSON.stringify(value ?? null)}\n`)
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Exits with code 2 after `seconds`, whatever the program is doing. */
export function deadline(seconds, what) {
  setTimeout(() => fail(`${what}: deadline of ${seconds}s reached`, 2), seconds * 1000).unref()
}

/**
 * Connects to the engine at III_URL (0.22.1 does not read III_URL itself).
 * OTel stays off unless `otel` (the SDK's OTel options) turns it on.
 */
export function connect(name, { otel = { enabled: false } } = {}) {
  const url = process.env.III_URL
  if (!url) fail('III_URL is not set (e.g. ws://127.0.0.1:49134)')
  process.env.OTEL_ENABLED ??= 'false'
  // The Node SDK (0.22.1) does not read III_TOKEN itself as Python's and
  // Rust's do; this is how a Node worker presents one.
  const token = process.env.III_TOKEN?.trim()
  return registerWorker(url, {
    workerName: `${name}-${process.pid}`,
    otel,
    enableMetricsReporting: false,
    ...(token ? { headers: { authorization: `Bearer ${token}` } } : {}),
  })
}

/**
 * Resolves once the socket is open. 0.22.1 has no public connection-state API;
 * `connectionState` turns 'connected' in the same tick in which every stored
 * registration is written to the socket, so after this they have been sent.
 */
export async function connected(iii) {
  while (iii.connectionState !== 'connected') await sleep(10)
}

/** Resolves when stdin closes or on SIGTERM / SIGINT. */
export function untilStopped() {
  return new Promise((resolve) => {
    process.once('SIGTERM', resolve)
    process.once('SIGINT', resolve)
    process.stdin.on('end', resolve)
    process.stdin.on('close', resolve)
    process.stdin.on('error', resolve)
    process.stdin.resume()
  })
}

/** Shuts the SDK down (bounded) and exits with `code`. */
export async function stop(iii, code = 0) {
  await Promise.race([iii.shutdown().catch(() => {}), sleep(2000)])
  process.exit(code)
}

/** The wire ErrorBody of a rejected call ({code, message}); the SDK prefixes the message with the code. */
export function errorBody(err) {
  const code = err?.code ?? 'UNKNOWN'
  let message = err?.message ?? String(err)
  if (message.startsWith(`${code}: `)) message = message.slice(code.length + 2)
  return { code, message }
}
