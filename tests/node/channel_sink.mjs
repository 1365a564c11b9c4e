// Long-running Node worker for qmesh's channel tests: node::channel_sink
// reads the channel ref it is given ({reader}) to the end and answers
// {sha256, bytes, seqs, misplaced}: seqs are the text messages' seq in
// arrival order, misplaced counts messages whose `at` differs from the bytes
// received before them. Prints READY, then serves until stdin closes.
import { createHash } from 'node:crypto'
import { connect, connected, deadline, stop, untilStopped } from './lib.mjs'

deadline(Number(process.env.QMESH_WORKER_DEADLINE_S ?? 300), 'node channel_sink')
const iii = connect('node-channel-sink')

iii.registerFunction('node::channel_sink', async ({ reader }) => {
  const hash = createHash('sha256')
  let got = 0
  let misplaced = 0
  const seqs = []
  // Messages are dispatched as they arrive; bytes still in the Readable's
  // buffer have arrived too, so they count as "before" the message.
  reader.onMessage((text) => {
    const { seq, at } = JSON.parse(text)
    seqs.push(seq)
    if (at !== got + reader.stream.readableLength) misplaced++
  })
  await new Promise((resolve, reject) => {
    reader.stream.on('data', (chunk) => {
      hash.update(chunk)
      got += chunk.length
    })
    reader.stream.on('end', resolve)
    reader.stream.on('error', reject)
  })
  return { sha256: hash.digest('hex'), bytes: got, seqs, misplaced }
})

await connected(iii)
console.log('READY')
await untilStopped()
await stop(iii, 0)
