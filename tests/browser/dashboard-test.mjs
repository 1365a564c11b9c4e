// Browser test of the dashboard (`/ui/`), run by tests/dashboard.rs: headless
// Chromium (playwright-core, the system's Chromium) drives the page the way
// an operator would, and saves a screenshot after each step.
//   node dashboard-test.mjs queues|auth
// Environment: DASHBOARD_URL (the page), ARTIFACTS (a directory for the
// screenshots), RECEIPT (queues: the dead job), OPS_TOKEN and WORKER_TOKEN
// (auth), CHROMIUM (default /usr/bin/chromium).
import { chromium } from 'playwright-core'
import { readdirSync, unlinkSync } from 'node:fs'
import { join } from 'node:path'

const scenario = process.argv[2]
const url = process.env.DASHBOARD_URL
const artifacts = process.env.ARTIFACTS
if (!url || !artifacts || !['queues', 'auth'].includes(scenario)) {
  throw new Error('usage: DASHBOARD_URL=… ARTIFACTS=… node dashboard-test.mjs queues|auth')
}
// This run's screenshots replace the last run's (a stale failure shot misleads).
for (const f of readdirSync(artifacts)) if (f.startsWith(`${scenario}-`) && f.endsWith('.png')) unlinkSync(join(artifacts, f))
const timeout = 15_000
setTimeout(() => {
  console.error('dashboard test: deadline reached')
  process.exit(2)
}, 100_000).unref()

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu'],
})
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } })
page.setDefaultTimeout(timeout)
const problems = []
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`))
// A refused or dropped socket is logged by Chromium itself; the page's own
// errors are what count.
page.on('console', (m) => {
  if (m.type() === 'error' && !m.text().includes('WebSocket connection to')) problems.push(`console: ${m.text()}`)
})
const shot = async (name) => {
  await page.screenshot({ path: join(artifacts, `${scenario}-${name}.png`), fullPage: true })
  console.log(`screenshot ${scenario}-${name}.png`)
}
const step = (text) => console.log(`step: ${text}`)
const expectText = async (selector, text) => page.locator(selector).filter({ hasText: text }).first().waitFor()

async function confirmDialog(typed = null) {
  await page.waitForSelector('#confirm[open]')
  if (typed) {
    if (!(await page.locator('#confirm-ok').isDisabled())) throw new Error('purge was possible without typing the name')
    await page.fill('#confirm-typed', typed)
  }
  await page.click('#confirm-ok')
  await page.waitForSelector('#confirm', { state: 'hidden' })
}

async function queues() {
  const receipt = process.env.RECEIPT
  step('the queues page shows the dead job in the counts')
  await page.goto(url)
  await page.waitForSelector('#status[data-state="connected"]')
  await expectText('tr[data-queue="emails"] td[data-state="dead"]', '1')
  await shot('queues')

  step('open the queue, its dead jobs, the job')
  await page.click('tr[data-queue="emails"] a.queue-link')
  await page.click('a[data-tab="dead"]')
  await page.click(`tr[data-receipt="${receipt}"] a.job-link`)
  await page.waitForSelector('#job-state .badge.dead')

  step('read its attempts: worker, error, stack')
  await page.waitForSelector('#attempts tr[data-attempt="2"]')
  for (const n of ['1', '2']) {
    await expectText(`#attempts tr[data-attempt="${n}"] .attempt-error`, 'smtp_down: SMTP server refused: 421')
    await expectText(`#attempts tr[data-attempt="${n}"]`, 'mailer')
  }
  await page.click('#attempts tr[data-attempt="2"] details summary')
  await expectText('#attempts tr[data-attempt="2"] pre.stack', 'at send (mailer.rs:12)')
  await expectText('#payload', 'ann@example.com')
  await shot('job-dead')

  step('redrive it (confirmed); the page follows it to completed without a reload')
  await page.click('button.redrive')
  await confirmDialog()
  await page.waitForSelector('#job-state .badge.completed')
  await expectText('#result', '"sent": true')
  // Attempts are numbered across redrives: the third one succeeded.
  await page.waitForSelector('#attempts tr[data-attempt="3"] .badge.completed')
  await shot('job-completed')

  step('find it again by its receipt')
  await page.goto(`${url}#/queues`)
  await page.fill('#lookup-receipt', receipt)
  await page.press('#lookup-receipt', 'Enter')
  await page.waitForSelector('#job-state .badge.completed')
  await expectText('h1', receipt)

  step('pause and resume the queue')
  await page.goto(`${url}#/queues`)
  await page.click('tr[data-queue="emails"] button.pause')
  await page.waitForSelector('tr[data-queue="emails"] .badge.paused')
  await shot('paused')
  await page.click('tr[data-queue="emails"] button.resume')
  await page.waitForSelector('tr[data-queue="emails"] button.pause')
  if (await page.locator('tr[data-queue="emails"] .badge.paused').count()) throw new Error('still shown paused')

  step('page through a queue, 50 jobs a page')
  await page.goto(`${url}#/queue/reports/ready`)
  await page.waitForFunction(() => document.querySelectorAll('tr[data-receipt]').length === 50)
  await page.click('button.next')
  await page.waitForFunction(() => document.querySelectorAll('tr[data-receipt]').length === 10)
  await expectText('.pager', 'page 2')
  await shot('page-2')
  await page.click('button.prev')
  await page.waitForFunction(() => document.querySelectorAll('tr[data-receipt]').length === 50)

  step('cancel one of them (confirmed)')
  await page.click('tr[data-receipt] a.job-link')
  await page.waitForSelector('#job-state .badge.ready')
  await page.click('button.cancel')
  await confirmDialog()
  await page.waitForSelector('#job-state .badge.cancelled')

  step('purge, only once the queue name is typed')
  await page.goto(`${url}#/queues`)
  await expectText('tr[data-queue="reports"] td[data-state="ready"]', '59')
  await page.click('tr[data-queue="reports"] button.purge')
  await page.click('#confirm-cancel')
  await page.waitForSelector('#confirm', { state: 'hidden' })
  await expectText('tr[data-queue="reports"] td[data-state="ready"]', '59')
  await page.click('tr[data-queue="reports"] button.purge')
  await confirmDialog('reports')
  await page.waitForFunction(() =>
    document.querySelector('tr[data-queue="reports"] td[data-state="ready"]')?.textContent === '0')
  await shot('purged')

  step('workers, functions with their schema, triggers, channels')
  await page.goto(`${url}#/workers`)
  await expectText('main td', 'mailer')
  await page.goto(`${url}#/functions`)
  await expectText('main td', 'mail::send')
  await page.click('main a:has-text("report::build")')
  await expectText('main pre', '"to"')
  await shot('function')
  await page.goto(`${url}#/triggers`)
  await expectText('main td', 'queue')
  await page.goto(`${url}#/channels`)
  await expectText('main h2', 'Realtime routes')
  await expectText('tr[data-route="/ws/chat"] td:last-child', '2')
  await shot('channels')
  await page.goto(`${url}#/dlq`)
  await expectText('main', 'No queue has dead letters.')

  step('telemetry: recent traces, one opened as its tree of spans')
  await page.goto(`${url}#/telemetry`)
  await expectText('main h2', 'Recent traces')
  // A job's trace starts at its enqueue; each attempt is a span under it.
  await page.click('tr:has(td:text("enqueue mail::send")) a.trace-link')
  await page.waitForSelector('#trace-tree tr[data-span]')
  await expectText('#trace-tree', 'enqueue mail::send')
  await expectText('#trace-tree', 'call mail::send')
  await shot('trace')
}

async function auth() {
  step('without a token: refused, no data')
  await page.goto(url)
  await page.waitForSelector('#status[data-state="refused"]')
  await page.waitForSelector('#login:not([hidden])')
  await expectText('main', 'Not connected: no data.')
  if (await page.locator('tr[data-queue]').count()) throw new Error('data shown without a token')
  await shot('refused')

  step('a worker token: connected, but operator functions are refused')
  await page.fill('#token', process.env.WORKER_TOKEN)
  await page.click('#login button[type="submit"]')
  await page.waitForSelector('#status[data-state="connected"]')
  await page.goto(`${url}#/queue/emails/waiting_for_worker`)
  await page.waitForSelector('[data-error="FORBIDDEN"]')
  if (await page.locator('tr[data-receipt]').count()) throw new Error('jobs shown to a worker token')
  await shot('forbidden')

  step('an operator token: the jobs')
  await page.click('#token-button')
  await page.fill('#token', process.env.OPS_TOKEN)
  await page.click('#login button[type="submit"]')
  await page.waitForSelector('#status[data-state="connected"]')
  await page.waitForSelector('tr[data-receipt]')
  await shot('operator')
}

try {
  await (scenario === 'queues' ? queues() : auth())
  if (problems.length) throw new Error(problems.join('\n'))
  console.log('dashboard test: ok')
} catch (e) {
  console.error(`dashboard test failed: ${e.stack ?? e}`)
  for (const p of problems) console.error(p)
  try {
    await shot('failure')
    console.error('--- page text:', await page.locator('body').innerText())
  } catch {}
  process.exitCode = 1
} finally {
  await browser.close()
}
