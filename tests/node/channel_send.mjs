// Streams through a binary channel with the Node SDK, for qmesh's tests.
// Usage: III_URL=ws://... node channel_send.mjs FUNCTION_ID MIB
// Creates a channel, calls FUNCTION_ID with {reader: <reader ref>}, writes MIB
// MiB of random bytes (1 MiB per write) with a text message {seq, at} after
// each write (at = bytes written before it), ends the stream, and prints
// {sent_bytes, sent_sha256, messages, received: <the function's result>}.
import { createHash, randomBytes } from 'node:crypto'
import { createChannel } from 'iii-sdk/helpers'
import { connect, deadline, emit, errorBody, fail, stop } from './lib.mjs'

deadline(120, 'node channel_send')
const [functionId, mibArg] = process.argv.slice(2)
const mib = Number(mibArg)
if (!functionId || !(mib > 0)) fail('usage: channel_send.mjs FUNCTION_ID MIB')

const iii = connect('node-channel-send')
const channel = await createChannel(iii)
const received = iii.trigger({
  function_id: functionId,
  payload: { reader: channel.readerRef },
  timeoutMs: 100000,
})
received.catch(() => {}) // awaited below; do not crash on an early rejection

const hash = createHash('sha256')
let sent = 0
for (let seq = 0; seq < mib; seq++) {
  const chunk = randomBytes(1 << 20)
  hash.update(chunk)
  // Wait for the bytes to reach the socket, so the message cannot overtake them.
  await new Promise((resolve, reject) =>
    channel.writer.stream.write(chunk, (err) => (err ? reject(err) : resolve())),
  )
  sent += chunk.length
  channel.writer.sendMessage(JSON.stringify({ seq, at: sent }))
}
channel.writer.stream.end()
try {
  emit({ sent_bytes: sent, sent_sha256: hash.digest('hex'), messages: mib, received: await received })
} catch (err) {
  emit(errorBody(err))
  await stop(iii, 3)
}
await stop(iii, 0)
