// qmesh dashboard. This page is a client of the engine's worker socket (`/`):
// it reads and acts only through engine functions (`invokefunction` →
// `invocationresult`), the same ones the CLI calls. No data is embedded in
// the page; with `[auth]` tokens the socket needs an operator token, offered
// as the `Sec-WebSocket-Protocol` `qmesh.bearer.<base64url>` (a browser
// cannot set headers on a WebSocket).
//
// Everything a job or a worker sent is shown as text (`textContent`), never
// parsed as markup.
'use strict'

const TOKEN_KEY = 'qmesh.dashboard.token'
const POLL_MS = 2000
const CALL_TIMEOUT_MS = 15000
const PAGE_SIZES = [25, 50, 100, 250]
// A job's flow: its root and parent, and its children's subtree with states.
function flowPanel(flow) {
  const rows = []
  const walk = (nodes, depth) => nodes.forEach((c) => {
    rows.push(h('tr', {},
      h('td', {}, '\u00a0'.repeat(depth * 3), link(`#/job/${c.receipt}`, c.receipt, { class: 'mono job-link' })),
      h('td', {}, c.function_id ?? ''), h('td', {}, c.state)))
    walk(c.children ?? [], depth + 1)
  })
  walk(flow.children ?? [], 0)
  return h('section', { class: 'panel', id: 'flow' }, h('h2', {}, 'Flow'),
    h('dl', {},
      h('dt', {}, 'Root'), h('dd', {}, link(`#/job/${flow.root}`, flow.root, { class: 'mono job-link' })),
      h('dt', {}, 'Parent'), h('dd', {}, flow.parent ? link(`#/job/${flow.parent}`, flow.parent, { class: 'mono job-link' }) : '–'),
      h('dt', {}, 'On child failure'), h('dd', {}, flow.on_child_failure),
      h('dt', {}, 'Waiting on'), h('dd', {}, String(flow.waiting_on))),
    table(['Child', 'Function', 'State'], rows, 'No children.'))
}

const STATES = ['ready', 'waiting_for_worker', 'delayed', 'running', 'held', 'waiting_for_children', 'completed', 'dead']

// ---------------------------------------------------------------- helpers

const $ = (sel) => document.querySelector(sel)

// Builds an element: attributes (`on*` are listeners, `text` is textContent)
// and children (strings become text nodes; null and false are skipped).
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else if (k === 'text') el.textContent = String(v)
    else el.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue
    el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return el
}

function uuid() {
  // crypto.randomUUID needs a secure context; an engine reached over plain
  // http on another host is not one.
  const b = crypto.getRandomValues(new Uint8Array(16))
  b[6] = (b[6] & 0x0f) | 0x40
  b[8] = (b[8] & 0x3f) | 0x80
  const x = [...b].map((n) => n.toString(16).padStart(2, '0')).join('')
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`
}

function base64url(text) {
  let bin = ''
  for (const byte of new TextEncoder().encode(text)) bin += String.fromCharCode(byte)
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

const fmtNum = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'))
function fmtTime(ms) {
  if (!ms) return '–'
  const d = new Date(ms)
  const pad = (n, w = 2) => String(n).padStart(w, '0')
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`
}
function fmtDuration(ms) {
  if (ms === null || ms === undefined) return '–'
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`
  return `${(ms / 3_600_000).toFixed(1)} h`
}
const fmtRate = (r) => (r === null || r === undefined ? '–' : `${r.toFixed(r < 10 ? 1 : 0)}/s`)
const json = (v) => JSON.stringify(v, null, 2)
const badge = (state) => h('span', { class: `badge ${state}`, text: state })
const link = (hash, text, attrs = {}) => h('a', { href: hash, ...attrs }, text)
const enc = encodeURIComponent
const shortId = (id) => (id ? String(id).slice(0, 8) : '–')

function table(headers, rows, empty = 'Nothing here.') {
  if (!rows.length) return h('p', { class: 'muted', text: empty })
  return h('table', {},
    h('thead', {}, h('tr', {}, headers.map((c) => h('th', { class: c.endsWith('#') ? 'num' : null }, c.replace(/#$/, ''))))),
    h('tbody', {}, rows))
}

// ------------------------------------------------------------- connection

class CallError extends Error {
  constructor(code, message) {
    super(message)
    this.code = code
  }
}

const conn = { ws: null, ready: false, pending: new Map(), retry: null, backoff: 500 }

function socketUrl() {
  // The page lives at <engine>/ui/; the worker socket is <engine>/.
  const u = new URL('..', location.href)
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:'
  u.hash = ''
  u.search = ''
  return u.href
}

function setStatus(state, text) {
  const s = $('#status')
  s.dataset.state = state
  s.textContent = text
}

function connect() {
  clearTimeout(conn.retry)
  if (conn.ws) {
    conn.ws.onclose = null
    conn.ws.close()
  }
  const token = sessionStorage.getItem(TOKEN_KEY)
  const protocols = token ? ['qmesh', `qmesh.bearer.${base64url(token)}`] : []
  setStatus('connecting', 'connecting…')
  const ws = new WebSocket(socketUrl(), protocols)
  conn.ws = ws
  let registered = false
  ws.onmessage = (ev) => {
    let msg
    try {
      msg = JSON.parse(ev.data)
    } catch {
      return
    }
    if (msg.type === 'workerregistered') {
      registered = true
      onConnected(msg.worker_id)
    } else {
      onFrame(msg)
    }
  }
  ws.onclose = (ev) => {
    if (conn.ws !== ws) return
    conn.ws = null
    conn.ready = false
    for (const p of conn.pending.values()) p.reject(new CallError('disconnected', 'the connection to the engine closed'))
    conn.pending.clear()
    if (!registered) {
      // A refused upgrade (401) and an engine that is down look alike to a page.
      setStatus('refused', 'refused')
      showLogin(token
        ? 'The engine refused the connection: the token is not valid here, or the engine is not reachable.'
        : 'The engine refused the connection: it asks for a token, or it is not reachable. Enter an operator token.')
      renderEmpty('Not connected: no data.')
    } else {
      setStatus('closed', `closed (${ev.code})`)
    }
    conn.retry = setTimeout(connect, conn.backoff)
    conn.backoff = Math.min(conn.backoff * 2, 10_000)
  }
}

function onConnected(workerId) {
  conn.ready = true
  conn.backoff = 500
  setStatus('connected', 'connected')
  $('#login').hidden = true
  // Named, so operators see who is watching in the workers list; a name
  // per tab (two live connections may not share one).
  send({
    type: 'invokefunction',
    function_id: 'engine::workers::register',
    data: { name: `dashboard-${workerId.slice(0, 8)}`, runtime: 'browser', version: '1', os: navigator.platform || 'browser' },
    action: { type: 'void' },
  })
  refresh(true)
}

function onFrame(msg) {
  switch (msg.type) {
    case 'invocationresult': {
      const p = conn.pending.get(msg.invocation_id)
      if (!p) return
      conn.pending.delete(msg.invocation_id)
      clearTimeout(p.timer)
      if (msg.error) p.reject(new CallError(msg.error.code, msg.error.message))
      else p.resolve(msg.result ?? null)
      return
    }
    case 'invokefunction':
      // The page serves no function; say so rather than leave a caller waiting.
      if (msg.invocation_id) {
        send({
          type: 'invocationresult', invocation_id: msg.invocation_id, function_id: msg.function_id,
          error: { code: 'function_not_found', message: 'the dashboard serves no function' },
        })
      }
      return
    case 'ping':
      send({ type: 'pong' })
      return
    case 'error':
      notify(`${msg.error?.code}: ${msg.error?.message}`, true)
  }
}

function send(frame) {
  if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN) throw new CallError('disconnected', 'not connected to the engine')
  conn.ws.send(JSON.stringify(frame))
}

// One engine function call: resolves with its result, rejects with its error.
function call(functionId, data = {}) {
  return new Promise((resolve, reject) => {
    if (!conn.ready) return reject(new CallError('disconnected', 'not connected to the engine'))
    const id = uuid()
    const timer = setTimeout(() => {
      conn.pending.delete(id)
      reject(new CallError('timeout', `${functionId} did not answer within ${CALL_TIMEOUT_MS / 1000} s`))
    }, CALL_TIMEOUT_MS)
    conn.pending.set(id, { resolve, reject, timer })
    try {
      send({ type: 'invokefunction', invocation_id: id, function_id: functionId, data })
    } catch (e) {
      conn.pending.delete(id)
      clearTimeout(timer)
      reject(e)
    }
  })
}

// ------------------------------------------------------------ UI plumbing

function showLogin(why) {
  $('#login-why').textContent = why
  $('#login').hidden = false
}

let noticeTimer = null
function notify(text, bad = false) {
  const n = $('#notice')
  n.textContent = text
  n.className = bad ? 'bad' : ''
  n.hidden = false
  clearTimeout(noticeTimer)
  noticeTimer = setTimeout(() => (n.hidden = true), bad ? 12_000 : 5_000)
}

// Asks before an action; `typed` is a word the operator must type (purge).
function confirmAction(text, typed = null) {
  const dialog = $('#confirm')
  $('#confirm-text').textContent = text
  const label = $('#confirm-typed-label')
  const input = $('#confirm-typed')
  const ok = $('#confirm-ok')
  label.hidden = !typed
  input.value = ''
  $('#confirm-expect').textContent = typed ?? ''
  ok.disabled = !!typed
  input.oninput = () => (ok.disabled = input.value !== typed)
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(dialog.returnValue === 'ok')
    dialog.returnValue = 'cancel'
    dialog.showModal()
    if (typed) input.focus()
  })
}

// Runs an action (after a confirmation when `ask` is given), reports its
// answer, and refreshes the view at once.
async function act(what, functionId, data, ask = null, typed = null) {
  if (ask && !(await confirmAction(ask, typed))) return null
  try {
    const r = await call(functionId, data)
    notify(`${what}: done ${r ? JSON.stringify(r) : ''}`)
    refresh(true)
    return r
  } catch (e) {
    notify(`${what} failed: ${e.code}: ${e.message}`, true)
    return null
  }
}

function renderEmpty(text) {
  current = null
  $('#main').replaceChildren(h('p', { class: 'muted', text }))
}

function errorPanel(e) {
  const why = e.code === 'FORBIDDEN'
    ? 'This connection may not call it: operator functions need an operator token.'
    : ''
  return h('section', { class: 'panel error', 'data-error': e.code },
    h('b', {}, e.code ?? 'error'), ': ', e.message ?? String(e), why ? h('p', { text: why }) : null)
}

// --------------------------------------------------------------- routing

// A view: `load(params, state)` → data (engine calls only), and
// `render(data, params, state)` → a node. The current view is loaded again
// every POLL_MS and re-rendered only when its data changed.
const views = {}
let current = null
let loading = false

function route() {
  const parts = (location.hash.replace(/^#\/?/, '') || 'queues').split('/').map(decodeURIComponent)
  const name = views[parts[0]] ? parts[0] : 'queues'
  for (const a of document.querySelectorAll('header nav a')) {
    const on = a.dataset.nav === name || (a.dataset.nav === 'queues' && (name === 'queue' || name === 'job')) ||
      (a.dataset.nav === 'telemetry' && name === 'trace')
    if (on) a.setAttribute('aria-current', 'page')
    else a.removeAttribute('aria-current')
  }
  current = { name, view: views[name], params: parts.slice(1), state: {}, sig: null }
  $('#main').replaceChildren(h('p', { class: 'muted', text: 'Loading…' }))
  refresh(true)
}

async function refresh(now = false) {
  if (!current || !conn.ready) return
  if (loading && !now) return
  if (document.hidden && !now) return
  const view = current
  const seq = (view.seq = (view.seq ?? 0) + 1)
  loading = true
  try {
    let data
    let node
    try {
      data = await view.view.load(view.params, view.state)
    } catch (e) {
      data = { error: e.code, message: e.message }
      node = errorPanel(e)
    }
    // A newer load (an action's refresh) may have finished first.
    if (view !== current || seq !== view.seq) return
    const sig = JSON.stringify(data)
    if (sig !== view.sig) {
      view.sig = sig
      $('#main').replaceChildren(node ?? view.view.render(data, view.params, view.state))
    }
    $('#updated').textContent = new Date().toLocaleTimeString()
  } finally {
    loading = false
  }
}

// Rerenders the current view from fresh data (after a pager click).
function reload() {
  if (current) current.sig = null
  refresh(true)
}

// ------------------------------------------------------------------ rates

// Completions and dead letters per second, from the counts of successive
// `queue::list` answers (the engine keeps totals, not rates).
const rateSeen = new Map()
function rates(q) {
  const now = performance.now()
  const prev = rateSeen.get(q.queue)
  const out = prev?.out ?? { completed: null, dead: null }
  if (!prev || now - prev.at >= 1000) {
    if (prev) {
      const dt = (now - prev.at) / 1000
      // A count the engine cannot know (JetStream queues keep no completed jobs) stays unknown.
      out.completed = q.completed === null ? null : Math.max(0, (q.completed - prev.completed) / dt)
      out.dead = Math.max(0, (q.dead - prev.dead) / dt)
    }
    rateSeen.set(q.queue, { at: now, completed: q.completed, dead: q.dead, out })
  }
  return out
}

// ------------------------------------------------------------------ views

views.queues = {
  async load() {
    const list = await call('queue::list')
    return (list.queues ?? []).map((q) => ({ ...q, rates: rates(q) }))
  },
  render(queues) {
    const rows = queues.map((q) => h('tr', { 'data-queue': q.queue },
      h('td', {}, link(`#/queue/${enc(q.queue)}/ready`, q.queue, { class: 'queue-link' }), ' ', q.paused ? badge('paused') : null),
      STATES.map((s) => h('td', { class: 'num', 'data-state': s }, link(`#/queue/${enc(q.queue)}/${s}`, fmtNum(q[s])))),
      h('td', { class: 'num' }, q.oldest_ready_age_ms === null ? '–' : fmtDuration(q.oldest_ready_age_ms)),
      h('td', { class: 'num', 'data-rate': 'completed' }, fmtRate(q.rates.completed)),
      h('td', { class: 'num', 'data-rate': 'dead' }, fmtRate(q.rates.dead)),
      h('td', {}, queueActions(q)),
    ))
    return h('div', {},
      h('h1', {}, 'Queues'),
      h('section', { class: 'panel' }, table(
        ['Queue', ...STATES.map((s) => `${s.replace(/_/g, ' ')}#`), 'Oldest ready#', 'Completed/s#', 'Dead/s#', 'Actions'],
        rows, 'No queue yet: queues appear with their first job (or a pause).')))
  },
}

function queueActions(q) {
  return h('div', { class: 'actions' },
    q.paused
      ? h('button', { class: 'resume', onclick: () => act(`resume ${q.queue}`, 'queue::resume', { queue: q.queue }) }, 'Resume')
      : h('button', { class: 'pause quiet', onclick: () => act(`pause ${q.queue}`, 'queue::pause', { queue: q.queue }) }, 'Pause'),
    h('button', {
      class: 'purge danger',
      onclick: () => act(`purge ${q.queue}`, 'queue::purge', { queue: q.queue },
        `Purge queue ${q.queue}? Its ready, waiting and delayed jobs are deleted (running jobs finish, dead letters stay). This cannot be undone.`,
        q.queue),
    }, 'Purge'),
    q.dead > 0
      ? h('button', {
        class: 'redrive-all quiet',
        onclick: () => act(`redrive ${q.queue}`, 'iii::queue::redrive', { queue: q.queue },
          `Move all ${fmtNum(q.dead)} dead jobs of ${q.queue} back to ready, with a fresh attempt budget?`),
      }, 'Redrive dead')
      : null)
}

views.queue = {
  async load([queue, state = 'ready'], st) {
    st.cursors ??= [null]
    st.page ??= 0
    st.limit ??= 50
    const [stats, page] = await Promise.all([
      call('queue::stats', { queue }),
      call('queue::peek', { queue, state, limit: st.limit, cursor: st.cursors[st.page] ?? undefined }),
    ])
    return { stats, page, page_no: st.page, limit: st.limit }
  },
  render({ stats, page, page_no, limit }, [queue, state = 'ready'], st) {
    const tabs = h('div', { class: 'tabs' }, STATES.map((s) => link(`#/queue/${enc(queue)}/${s}`,
      `${s.replace(/_/g, ' ')} (${fmtNum(stats[s])})`, { 'aria-current': s === state ? 'page' : null, 'data-tab': s })))
    const rows = page.jobs.map((j) => h('tr', { 'data-receipt': j.receipt },
      h('td', {}, link(`#/job/${j.receipt}`, j.receipt, { class: 'mono job-link' })),
      h('td', {}, j.function_id),
      h('td', {}, badge(j.state)),
      h('td', { class: 'num' }, fmtNum(j.attempts)),
      h('td', {}, fmtTime(j.enqueued_at_ms)),
      h('td', {}, j.due_at_ms ? fmtTime(j.due_at_ms) : '–'),
      h('td', {}, j.last_error ? `${j.last_error.code}: ${j.last_error.message}` : ''),
    ))
    const turn = (to) => {
      st.page = to
      reload()
    }
    const pager = h('div', { class: 'pager' },
      h('button', { class: 'quiet prev', disabled: page_no === 0, onclick: () => turn(page_no - 1) }, '← Previous'),
      h('span', { text: `page ${page_no + 1}` }),
      h('button', {
        class: 'quiet next', disabled: !page.next_cursor,
        onclick: () => {
          st.cursors[page_no + 1] = page.next_cursor
          turn(page_no + 1)
        },
      }, 'Next →'),
      h('label', {}, 'per page ', h('select', {
        onchange: (e) => {
          st.limit = Number(e.target.value)
          st.cursors = [null]
          turn(0)
        },
      }, PAGE_SIZES.map((n) => h('option', { value: n, selected: n === limit }, n)))),
      page_no > 0 && !page.jobs.length ? h('span', {}, 'This page\'s first job has moved on. ', h('a', { href: '#', onclick: (e) => { e.preventDefault(); turn(0) } }, 'Back to the first page')) : null)
    return h('div', {},
      h('h1', {}, `Queue ${queue}`, stats.paused ? badge('paused') : null),
      h('section', { class: 'panel' },
        h('dl', { class: 'facts' },
          h('dt', {}, 'Oldest ready job'), h('dd', {}, stats.oldest_ready_age_ms === null ? '–' : fmtDuration(stats.oldest_ready_age_ms)),
          h('dt', {}, 'Settings'), h('dd', { class: 'mono' }, Object.entries(stats.settings ?? {}).map(([k, v]) => `${k}=${v}`).join(', '))),
        h('p', {}, queueActions({ ...stats, queue }))),
      tabs,
      h('section', { class: 'panel' },
        table(['Receipt', 'Function', 'State', 'Attempts#', 'Enqueued', 'Due', 'Last error'], rows, `No ${state.replace(/_/g, ' ')} job.`),
        pager))
  },
}

views.job = {
  async load([receipt]) {
    const [job, why, workers] = await Promise.all([
      call('queue::get', { receipt }),
      call('queue::explain', { receipt }).catch(() => null),
      call('engine::workers::list').catch(() => ({ workers: [] })),
    ])
    const names = {}
    for (const w of workers.workers ?? []) names[w.id] = w.name
    return { job, why, names }
  },
  render({ job, why, names }) {
    const receipt = job.receipt
    const traceId = job.trace_id ?? (typeof job.traceparent === 'string' ? job.traceparent.split('-')[1] : null)
    const actions = []
    if (job.state === 'dead') {
      actions.push(h('button', {
        class: 'redrive',
        onclick: () => act('redrive', 'iii::queue::redrive_message', { queue: job.queue, message_id: receipt },
          `Redrive job ${receipt}? It goes back to ready with a fresh attempt budget; its history stays.`),
      }, 'Redrive'))
      actions.push(h('button', {
        class: 'discard danger',
        onclick: () => act('discard', 'iii::queue::discard_message', { queue: job.queue, message_id: receipt },
          `Discard dead job ${receipt}? It is deleted for good.`),
      }, 'Discard'))
    }
    if (['ready', 'waiting_for_worker', 'delayed'].includes(job.state)) {
      actions.push(h('button', {
        class: 'cancel danger',
        onclick: () => act('cancel', 'queue::cancel', { receipt }, `Cancel job ${receipt}? It will not run.`),
      }, 'Cancel'))
    }
    const history = (job.history ?? []).map((a) => h('tr', { 'data-attempt': a.attempt },
      h('td', { class: 'num' }, a.attempt),
      h('td', { class: 'mono', title: a.worker_id ?? '' }, a.worker_id ? `${names[a.worker_id] ?? 'gone'} (${shortId(a.worker_id)})` : '–'),
      h('td', {}, fmtTime(a.started_at_ms)),
      h('td', {}, fmtTime(a.ended_at_ms)),
      h('td', { class: 'num' }, a.started_at_ms && a.ended_at_ms ? fmtDuration(a.ended_at_ms - a.started_at_ms) : '–'),
      h('td', {}, badge(a.outcome)),
      h('td', { class: 'attempt-error' }, a.error ? [
        h('div', {}, `${a.error.code}: ${a.error.message}`),
        a.error.stacktrace ? h('details', {}, h('summary', {}, 'stack'), h('pre', { class: 'stack', text: a.error.stacktrace })) : null,
      ] : ''),
    ))
    const progress = job.progress ?? null
    const logs = Array.isArray(job.logs) ? job.logs : null
    return h('div', {},
      h('h1', {}, 'Job ', h('span', { class: 'mono', text: receipt }), h('span', { id: 'job-state' }, badge(job.state))),
      why?.explanation ? h('p', { class: 'explain', text: `Why: ${why.explanation}` }) : null,
      h('section', { class: 'panel' },
        h('dl', { class: 'facts' },
          h('dt', {}, 'Queue'), h('dd', {}, link(`#/queue/${enc(job.queue)}/${job.state}`, job.queue)),
          h('dt', {}, 'Function'), h('dd', { class: 'mono' }, `${job.function_id} (namespace ${job.namespace})`),
          h('dt', {}, 'Attempts'), h('dd', {}, `${job.attempts} of ${job.max_attempts}`),
          h('dt', {}, 'Priority'), h('dd', {}, job.priority),
          h('dt', {}, 'Enqueued'), h('dd', {}, fmtTime(job.enqueued_at_ms)),
          h('dt', {}, 'Due'), h('dd', {}, fmtTime(job.due_at_ms)),
          h('dt', {}, 'Finished'), h('dd', {}, fmtTime(job.finished_at_ms)),
          h('dt', {}, 'Redrives'), h('dd', {}, job.redrives),
          h('dt', {}, 'Trace id'), h('dd', { class: 'mono', id: 'trace-id' }, traceId ? link(`#/trace/${traceId}`, traceId) : '–')),
        actions.length ? h('p', { class: 'actions' }, actions) : null),
      progress !== null ? h('section', { class: 'panel', id: 'progress' }, h('h2', {}, 'Progress'),
        typeof progress === 'number' ? h('progress', { max: 100, value: progress }, `${progress}%`) : null,
        h('pre', { text: typeof progress === 'number' ? `${progress}%` : json(progress) })) : null,
      h('section', { class: 'panel' }, h('h2', {}, 'Payload'), h('pre', { id: 'payload', text: json(job.data) })),
      job.result !== null && job.result !== undefined
        ? h('section', { class: 'panel' }, h('h2', {}, 'Result'), h('pre', { id: 'result', text: json(job.result) }))
        : null,
      job.last_error ? h('section', { class: 'panel' }, h('h2', {}, 'Last error'),
        h('p', { class: 'error', text: `${job.last_error.code}: ${job.last_error.message} (${job.last_error.reason})` })) : null,
      h('section', { class: 'panel', id: 'attempts' }, h('h2', {}, `Attempts (${(job.history ?? []).length})`),
        table(['Attempt#', 'Worker', 'Started', 'Ended', 'Took#', 'Outcome', 'Error'], history, 'Not started yet.')),
      job.flow ? flowPanel(job.flow) : null,
      logs ? h('section', { class: 'panel', id: 'logs' },
        h('h2', {}, `Logs (${logs.length}${job.logs_dropped ? `, ${job.logs_dropped} older dropped` : ''})`),
        table(['When', 'Line'], logs.map((l) => h('tr', {},
          h('td', {}, fmtTime(l.at_ms)),
          h('td', { class: 'mono' }, l.line))), 'No log line.')) : null)
  },
}

views.dlq = {
  async load([queue], st) {
    st.offset ??= 0
    st.limit ??= 50
    const topics = await call('engine::queue::dlq_topics')
    const chosen = queue ?? topics[0]?.topic
    const messages = chosen
      ? await call('engine::queue::dlq_messages', { queue: chosen, offset: st.offset, limit: st.limit })
      : []
    return { topics, chosen, messages, offset: st.offset, limit: st.limit }
  },
  render({ topics, chosen, messages, offset, limit }, _params, st) {
    const tabs = h('div', { class: 'tabs' }, topics.map((t) => link(`#/dlq/${enc(t.topic)}`, `${t.topic} (${fmtNum(t.message_count)})`,
      { 'aria-current': t.topic === chosen ? 'page' : null })))
    const rows = messages.map((m) => h('tr', { 'data-receipt': m.id },
      h('td', {}, link(`#/job/${m.id}`, m.id, { class: 'mono job-link' })),
      h('td', {}, m.function_id),
      h('td', {}, m.error ?? ''),
      h('td', {}, fmtTime(m.failed_at_ms)),
      h('td', { class: 'num' }, m.retries),
      h('td', {}, h('div', { class: 'actions' },
        h('button', {
          class: 'quiet', onclick: () => act('redrive', 'iii::queue::redrive_message', { queue: chosen, message_id: m.id }),
        }, 'Redrive'),
        h('button', {
          class: 'danger', onclick: () => act('discard', 'iii::queue::discard_message', { queue: chosen, message_id: m.id },
            `Discard dead job ${m.id}? It is deleted for good.`),
        }, 'Discard'))),
    ))
    const turn = (to) => {
      st.offset = Math.max(0, to)
      reload()
    }
    return h('div', {},
      h('h1', {}, 'Dead letters'),
      topics.length ? tabs : h('p', { class: 'muted', text: 'No queue has dead letters.' }),
      chosen ? h('section', { class: 'panel' },
        h('p', { class: 'actions' }, h('button', {
          class: 'danger', onclick: () => act(`redrive ${chosen}`, 'iii::queue::redrive', { queue: chosen },
            `Move every dead job of ${chosen} back to ready, with a fresh attempt budget?`),
        }, `Redrive all of ${chosen}`)),
        table(['Receipt', 'Function', 'Error', 'Failed', 'Attempts#', 'Actions'], rows, 'No dead letter here.'),
        h('div', { class: 'pager' },
          h('button', { class: 'quiet', disabled: offset === 0, onclick: () => turn(offset - limit) }, '← Newer'),
          h('span', { text: `${offset + 1}–${offset + messages.length}, newest first` }),
          h('button', { class: 'quiet', disabled: messages.length < limit, onclick: () => turn(offset + limit) }, 'Older →'))) : null)
  },
}

views.workers = {
  async load() {
    return (await call('engine::workers::list')).workers ?? []
  },
  render(workers) {
    const rows = workers.map((w) => h('tr', {},
      h('td', {}, w.name || h('span', { class: 'muted', text: '(unnamed)' })),
      h('td', { class: 'mono', title: w.id }, shortId(w.id)),
      h('td', {}, badge(w.status)),
      h('td', {}, w.namespace),
      h('td', {}, [w.runtime, w.version].filter(Boolean).join(' ')),
      h('td', { class: 'num' }, fmtNum(w.function_count)),
      h('td', { class: 'num' }, fmtNum(w.active_invocations)),
      h('td', {}, w.ip_address ?? ''),
      h('td', {}, fmtTime(w.connected_at_ms))))
    return h('div', {}, h('h1', {}, `Workers (${workers.length})`),
      h('section', { class: 'panel' }, table(['Name', 'Id', 'Status', 'Namespace', 'Runtime', 'Functions#', 'Running#', 'Address', 'Connected'], rows, 'No worker connected.')))
  },
}

views.functions = {
  async load() {
    return (await call('engine::functions::list')).functions ?? []
  },
  render(functions) {
    const rows = functions.map((f) => h('tr', {},
      h('td', {}, link(`#/function/${enc(f.namespace)}/${enc(f.function_id)}`, f.function_id, { class: 'mono' })),
      h('td', {}, f.namespace),
      h('td', {}, f.worker_name),
      h('td', { class: 'num' }, fmtNum(f.instances)),
      h('td', {}, f.description ?? '')))
    return h('div', {}, h('h1', {}, `Functions (${functions.length})`),
      h('section', { class: 'panel' }, table(['Function', 'Namespace', 'Worker', 'Workers#', 'Description'], rows, 'No function registered.')))
  },
}

views.function = {
  async load([namespace, functionId]) {
    return call('engine::functions::info', { namespace, function_id: functionId })
  },
  render(f) {
    const triggers = (f.registered_triggers ?? []).map((t) => h('tr', {},
      h('td', { class: 'mono' }, t.id), h('td', {}, t.trigger_type), h('td', {}, h('pre', { text: json(t.config) }))))
    return h('div', {}, h('h1', {}, 'Function ', h('span', { class: 'mono', text: f.function_id })),
      h('section', { class: 'panel' }, h('dl', { class: 'facts' },
        h('dt', {}, 'Namespace'), h('dd', {}, f.namespace),
        h('dt', {}, 'Worker'), h('dd', {}, `${f.worker_name} (${f.instances} connected)`),
        h('dt', {}, 'Description'), h('dd', {}, f.description ?? '–'))),
      h('section', { class: 'panel' }, h('h2', {}, 'Request schema'), h('pre', { text: f.request_schema ? json(f.request_schema) : 'none registered' }),
        h('h2', {}, 'Response schema'), h('pre', { text: f.response_schema ? json(f.response_schema) : 'none registered' }),
        f.metadata ? [h('h2', {}, 'Metadata'), h('pre', { text: json(f.metadata) })] : null),
      h('section', { class: 'panel' }, h('h2', {}, 'Triggers'), table(['Id', 'Type', 'Config'], triggers, 'No trigger bound to it.')))
  },
}

views.triggers = {
  async load() {
    const [types, bound] = await Promise.all([
      call('engine::triggers::list', { include_internal: true }),
      call('engine::registered-triggers::list'),
    ])
    return { types: types.triggers ?? [], bound: bound.registered_triggers ?? [] }
  },
  render({ types, bound }) {
    const typeRows = types.map((t) => h('tr', {},
      h('td', { class: 'mono' }, t.id), h('td', {}, t.namespace), h('td', {}, t.worker_name), h('td', {}, t.description ?? '')))
    const boundRows = bound.map((b) => h('tr', {},
      h('td', { class: 'mono', title: b.id }, shortId(b.id)),
      h('td', {}, b.trigger_type),
      h('td', {}, link(`#/function/${enc(b.namespace)}/${enc(b.function_id)}`, b.function_id, { class: 'mono' })),
      h('td', {}, b.worker_name),
      h('td', {}, badge(b.state)),
      h('td', { class: 'mono' }, b.config_summary)))
    return h('div', {}, h('h1', {}, 'Triggers'),
      h('h2', {}, `Trigger types (${types.length})`),
      h('section', { class: 'panel' }, table(['Type', 'Namespace', 'Provider', 'Description'], typeRows)),
      h('h2', {}, `Bindings (${bound.length})`),
      h('section', { class: 'panel' }, table(['Id', 'Type', 'Function', 'Worker', 'State', 'Config'], boundRows, 'No trigger bound.')))
  },
}

views.channels = {
  async load() {
    const [channels, routes] = await Promise.all([
      call('engine::channels::list'),
      call('channel::routes'),
    ])
    return { channels: channels.channels ?? [], routes: routes.routes ?? [] }
  },
  render({ channels, routes }) {
    const routeRows = routes.map((r) => h('tr', { 'data-route': r.route },
      h('td', { class: 'mono' }, r.route), h('td', { class: 'num' }, fmtNum(r.handlers)), h('td', { class: 'num' }, fmtNum(r.connections))))
    const channelRows = channels.map((c) => h('tr', {},
      h('td', { class: 'mono', title: c.channel_id }, shortId(c.channel_id)),
      h('td', { class: 'mono', title: c.owner ?? '' }, shortId(c.owner)),
      h('td', {}, fmtDuration(c.age_ms)),
      h('td', {}, `${JSON.stringify(c.writer)} → ${JSON.stringify(c.reader)}`),
      h('td', { class: 'num' }, `${fmtNum(c.frames_in)} / ${fmtNum(c.bytes_in)} B`),
      h('td', { class: 'num' }, `${fmtNum(c.frames_out)} / ${fmtNum(c.bytes_out)} B`),
      h('td', { class: 'num' }, `${fmtNum(c.buffered_bytes)} B`)))
    return h('div', {}, h('h1', {}, 'Channels'),
      h('h2', {}, `Realtime routes (${routes.length})`),
      h('section', { class: 'panel' }, table(['Route', 'Handlers#', 'Connections#'], routeRows, 'No realtime route.')),
      h('h2', {}, `Binary channels (${channels.length})`),
      h('section', { class: 'panel' }, table(['Id', 'Owner', 'Age', 'Ends (writer → reader)', 'In (frames / bytes)#', 'Out#', 'Buffered#'], channelRows, 'No binary channel open.')))
  },
}

// Unix nanoseconds (as the telemetry functions give them) → a readable time.
const fromNanos = (ns) => fmtTime(Math.floor(Number(ns) / 1e6))
const spanMs = (s) => `${((Number(s.end_time_unix_nano) - Number(s.start_time_unix_nano)) / 1e6).toFixed(2)} ms`

// Recent traces (one row per trace: its root span) and log lines, kept in
// the engine's bounded memory (engine::traces::list, engine::logs::list).
views.telemetry = {
  async load() {
    const [traces, logs] = await Promise.all([
      call('engine::traces::list', { limit: 50 }),
      call('engine::logs::list', { limit: 100 }),
    ])
    return { traces: traces.spans ?? [], total: traces.total ?? 0, logs: logs.logs ?? [] }
  },
  render({ traces, total, logs }) {
    const traceRows = traces.map((s) => h('tr', { 'data-trace': s.trace_id },
      h('td', {}, link(`#/trace/${s.trace_id}`, s.trace_id, { class: 'mono trace-link' })),
      h('td', {}, s.name), h('td', {}, s.service_name), h('td', {}, badge(s.status)),
      h('td', {}, fromNanos(s.start_time_unix_nano)), h('td', { class: 'num' }, spanMs(s))))
    const logRows = logs.map((l) => h('tr', {},
      h('td', {}, fromNanos(l.timestamp_unix_nano)), h('td', {}, l.severity_text),
      h('td', {}, l.service_name), h('td', { class: 'mono' }, l.body),
      h('td', {}, l.trace_id ? link(`#/trace/${l.trace_id}`, shortId(l.trace_id), { class: 'mono' }) : '')))
    return h('div', {}, h('h1', {}, 'Telemetry'),
      h('h2', {}, `Recent traces (${traces.length} of ${fmtNum(total)})`),
      h('section', { class: 'panel' }, table(['Trace', 'Root span', 'Service', 'Status', 'Started', 'Took#'], traceRows, 'No trace kept.')),
      h('h2', {}, `Recent logs (${logs.length})`),
      h('section', { class: 'panel' }, table(['When', 'Level', 'Service', 'Message', 'Trace'], logRows, 'No log line kept.')))
  },
}

// One trace, its spans nested under their parents (engine::traces::tree).
views.trace = {
  async load([traceId]) {
    return call('engine::traces::tree', { trace_id: traceId })
  },
  render(tree, [traceId]) {
    const rows = []
    const walk = (nodes, depth) => nodes.forEach((s) => {
      rows.push(h('tr', { 'data-span': s.span_id },
        h('td', {}, '\u00a0'.repeat(depth * 3), s.name), h('td', {}, s.service_name),
        h('td', {}, badge(s.status)), h('td', {}, s.status_description ?? ''),
        h('td', {}, fromNanos(s.start_time_unix_nano)), h('td', { class: 'num' }, spanMs(s))))
      walk(s.children ?? [], depth + 1)
    })
    walk(tree.roots ?? [], 0)
    return h('div', {}, h('h1', {}, 'Trace'), h('p', { class: 'mono', text: traceId }),
      h('section', { class: 'panel', id: 'trace-tree' },
        table(['Span', 'Service', 'Status', 'Detail', 'Started', 'Took#'], rows, 'No span of this trace is kept.')))
  },
}

// ------------------------------------------------------------------ start

$('#lookup').addEventListener('submit', (e) => {
  e.preventDefault()
  const receipt = $('#lookup-receipt').value.trim()
  if (receipt) location.hash = `#/job/${enc(receipt)}`
})
$('#login').addEventListener('submit', (e) => {
  e.preventDefault()
  const token = $('#token').value.trim()
  if (token) sessionStorage.setItem(TOKEN_KEY, token)
  $('#token').value = ''
  conn.backoff = 500
  connect()
})
$('#token-clear').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY)
  connect()
})
$('#token-button').addEventListener('click', () => showLogin('The token is kept in this tab only (sessionStorage) and sent when the page connects.'))
window.addEventListener('hashchange', route)
document.addEventListener('visibilitychange', () => refresh(true))
setInterval(refresh, POLL_MS)
route()
connect()
