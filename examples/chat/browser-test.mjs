// Browser test of the chat example: headless Chromium opens the page twice,
// both join a room, and a message typed in one must appear in the other.
//   node browser-test.mjs http://127.0.0.1:PORT/   (CHROMIUM=/path overrides /usr/bin/chromium)
import { chromium } from 'playwright-core'

const pageUrl = process.argv[2]
if (!pageUrl) throw new Error('usage: browser-test.mjs PAGE_URL')
const timeout = 15_000
setTimeout(() => {
  console.error('browser test: deadline reached')
  process.exit(2)
}, 60_000).unref()

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu'],
})
try {
  const open = async (nick) => {
    const page = await browser.newPage()
    page.setDefaultTimeout(timeout)
    page.on('pageerror', (e) => console.error(`${nick}'s page: ${e.message}`))
    await page.goto(pageUrl)
    await page.fill('#nick', nick)
    await page.click('#connect')
    await page.waitForSelector(`#status:has-text("connected as ${nick}")`)
    await page.fill('#room', 'lobby')
    await page.click('#join')
    await page.waitForSelector('section[data-room="lobby"]')
    return page
  }
  const ann = await open('ann')
  const bob = await open('bob')
  // Presence: each page sees both names once both have joined.
  for (const page of [ann, bob]) {
    await page.waitForSelector('section[data-room="lobby"] .names:has-text("ann, bob")')
  }
  await ann.fill('section[data-room="lobby"] .text', 'hello from ann')
  await ann.press('section[data-room="lobby"] .text', 'Enter')
  await bob.waitForSelector('section[data-room="lobby"] .log >> text=ann: hello from ann')
  // Leaving updates the other page's presence.
  await ann.close()
  await bob.waitForFunction(
    () => document.querySelector('section[data-room="lobby"] .names')?.textContent === 'bob',
  )
  console.log('browser test: ok')
} catch (e) {
  for (const page of browser.contexts().flatMap((c) => c.pages())) {
    console.error(`--- page ${await page.title()}:`, await page.locator('body').innerText())
  }
  throw e
} finally {
  await browser.close()
}
