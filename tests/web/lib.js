// What the Playwright scripts of tests/web/ share: the browser (Debian's chromium, never a
// download), signing in through the page, the questions to the Rust side of the test, checks,
// screenshots and what to print when a script fails.
//
// A script is run by tests/web.rs as `node tests/web/NAME.js` with NODE_PATH pointing at the
// node_modules that tests/env/browser.sh installed, and these variables:
//   CHROMIUM            the browser (from the env file of the test environment)
//   WEB_URL             where `devset api` serves the page, e.g. http://127.0.0.1:PORT
//   WEB_NS              the test's namespace
//   WEB_TOKEN           a token of a ServiceAccount with every right in WEB_NS
//   WEB_SCREENSHOTS     where screenshots go (target/web-screenshots)
//   WEB_DOCS_IMAGES     set (docs/images) when DEVSET_UPDATE_SCREENSHOTS=1: screenshots go there too
// and more per script. The Rust side answers questions (`ask`): it restarts `devset api`, reads
// `.status` with kubectl and reads messages from the broker with independent clients.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

const env = (name) => {
  const v = process.env[name];
  if (v === undefined || v === '') throw new Error(`${name} is not set (tests/web.rs sets it)`);
  return v;
};

const BASE = () => env('WEB_URL');
const NS = () => env('WEB_NS');
const ACTIVE = ['Pending', 'Running', 'Stopping', 'WaitingForApproval'];
const COMPLETED = ['Completed', 'Failed', 'Stopped'];

// --- talking to the Rust side: one JSON line out (`@@ask {...}`), one JSON line back ---
let nextId = 1;
const waiting = [];
let lines = null;
function ask(name, data = {}) {
  if (!lines) {
    lines = readline.createInterface({ input: process.stdin });
    lines.on('line', (line) => {
      const w = waiting.shift();
      if (w) w(line);
    });
  }
  const id = nextId++;
  return new Promise((resolve, reject) => {
    waiting.push((line) => {
      const answer = JSON.parse(line);
      if (answer.error) reject(new Error(`${name}: ${answer.error}`));
      else resolve(answer.value);
    });
    process.stdout.write(`@@ask ${JSON.stringify({ id, name, data })}\n`);
  });
}

function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

function checkEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`check failed: ${what}: expected ${e}, got ${a}`);
}

async function eventually(what, fn, { timeout = 30000, interval = 200 } = {}) {
  const start = Date.now();
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() - start > timeout) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- the browser ---
let current = { browser: null, pages: [] };

async function launch() {
  const browser = await chromium.launch({
    executablePath: env('CHROMIUM'),
    headless: true,
    // As root (CI), Chromium's sandbox cannot start; /dev/shm may be small in containers.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--enable-precise-memory-info'],
  });
  current.browser = browser;
  return browser;
}

// A new context (own cookies) and page, its console errors and failed requests remembered for
// the failure report.
async function newPage(browser, opts = {}) {
  const context = await browser.newContext({
    baseURL: opts.base || BASE(),
    viewport: { width: 1280, height: 800 },
    acceptDownloads: true,
    ...opts.context,
  });
  context.setDefaultTimeout(opts.timeout || 15000);
  const page = await context.newPage();
  const record = { page, console: [], failed: [], urls: [] };
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') record.console.push(`${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => record.console.push(`pageerror: ${e.message}`));
  page.on('request', (r) => record.urls.push(r.url()));
  page.on('requestfailed', (r) => record.failed.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) record.failed.push(`${r.request().method()} ${r.url()}: ${r.status()}`);
  });
  current.pages.push(record);
  page.record = record;
  return page;
}

// Signs in through the page: the field `Token`, the button `Sign in`; waits for the Runs page.
async function signIn(page, token, { ns = NS() } = {}) {
  await page.goto(`/signin`);
  await page.getByLabel('Token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Active Runs' }).waitFor();
  if (ns) await page.goto(`/runs?namespace=${encodeURIComponent(ns)}`);
}

// Screenshots go to WEB_SCREENSHOTS, and to WEB_DOCS_IMAGES (for the README) when set, unless
// `docs` is false.
async function screenshot(page, name, opts = {}, { docs = true } = {}) {
  const dirs = [process.env.WEB_SCREENSHOTS, docs && process.env.WEB_DOCS_IMAGES].filter(Boolean);
  for (const dir of dirs) {
    fs.mkdirSync(dir, { recursive: true });
    await page.screenshot({ path: path.join(dir, `${name}.png`), ...opts });
  }
  log(`screenshot ${name}.png`);
}

// The API's JSON from inside the page's context (the session cookie goes along).
async function apiJson(page, url) {
  const res = await page.context().request.get(url, { headers: { Accept: 'application/json' } });
  check(res.ok(), `GET ${url}: ${res.status()} ${await res.text()}`);
  return res.json();
}

// Every event of a run through the API's JSON pages (`?after=N&limit=1000`).
async function apiEvents(page, ns, run) {
  const all = [];
  let after = 0;
  for (;;) {
    const p = await apiJson(page, `/api/v1/namespaces/${ns}/workflowruns/${run}/events?after=${after}&limit=1000`);
    all.push(...p.items);
    after = p.next;
    if (!p.more) return all;
  }
}

// --- finding things on the page ---

// Which of the headings `Active Runs` / `Completed Runs` the run's row or tile is under: the
// nearest of them before it in document order ("" when the run is not on the page).
async function gridOf(page, key) {
  return page.evaluate((key) => {
    const row = document.querySelector(`[data-run="${CSS.escape(key)}"]`);
    if (!row) return '';
    const headings = [...document.querySelectorAll('h1,h2,h3,h4,h5,h6,[role=heading]')].filter((h) =>
      ['Active Runs', 'Completed Runs'].includes(h.textContent.trim()),
    );
    let best = null;
    for (const h of headings) {
      // h precedes row, and comes after the best so far
      if (h.compareDocumentPosition(row) & Node.DOCUMENT_POSITION_FOLLOWING) {
        if (!best || best.compareDocumentPosition(h) & Node.DOCUMENT_POSITION_FOLLOWING) best = h;
      }
    }
    return best ? best.textContent.trim() : '';
  }, key);
}

// The seqs of the event-log rows in the DOM now, in DOM order.
async function domSeqs(page) {
  return page.$$eval('[data-seq]', (rows) => rows.map((r) => Number(r.getAttribute('data-seq'))));
}

// The scrolling element of the event log: the element labelled `Event log`, else the nearest
// scrollable ancestor of a row.
async function logScroller(page) {
  const handle = await page.evaluateHandle(() => {
    const labelled = document.querySelector('[aria-label="Event log"]');
    if (labelled) return labelled;
    const row = document.querySelector('[data-seq]');
    for (let el = row && row.parentElement; el; el = el.parentElement) {
      const s = getComputedStyle(el);
      if (/(auto|scroll)/.test(s.overflowY) && el.scrollHeight > el.clientHeight) return el;
    }
    return document.scrollingElement;
  });
  return handle.asElement();
}

// The rows in the log's scroller now: { seqs, top, bottom }: the seqs of the loaded rows in the
// DOM, and of the rows at the top and bottom edges of the view (0 when what is there is not a
// loaded row: still loading, or not rendered yet after a scroll).
async function logRows(scroller) {
  return scroller.evaluate((el) => {
    const loaded = [...el.querySelectorAll('[data-seq]')];
    const seqs = loaded.map((r) => Number(r.getAttribute('data-seq')));
    const texts = loaded.map((r) => r.textContent);
    const r = el.getBoundingClientRect();
    const at = (y) => {
      const hit = document.elementFromPoint(r.left + Math.min(40, r.width / 2), y);
      const row = hit && hit.closest('[data-seq]');
      return row && el.contains(row) ? Number(row.getAttribute('data-seq')) : 0;
    };
    // The part of the scroller inside the window.
    const top = Math.max(r.top, 0) + 3;
    const bottom = Math.min(r.bottom, window.innerHeight, r.top + el.scrollHeight - el.scrollTop) - 3;
    return { seqs, texts, top: at(top), bottom: at(bottom), view: bottom - top };
  });
}

// Scrolls the virtualized log from the top to the end, collecting every seq seen. At each step
// it waits until the rows at the top and bottom of the view are loaded, and checks that the view
// joins the one before (nothing skipped); the rows in the DOM must be distinct and contiguous.
// With `expect(seq)` (a list of strings), each row's text must hold those strings.
// Returns { seen: Set, maxRows, steps, ms }.
async function scrollLogToEnd(page, { lastSeq, expect, timeout = 300000 } = {}) {
  const scroller = await logScroller(page);
  check(scroller, 'the event log has a scrolling element');
  await scroller.evaluate((el) => {
    el.scrollIntoView({ block: 'start' });
    el.scrollTop = 0;
  });
  const seen = new Set();
  let maxRows = 0;
  let prevBottom = 0;
  let steps = 0;
  const start = Date.now();
  for (;;) {
    let rows = null;
    for (let i = 0; i < 200; i++) {
      rows = await logRows(scroller);
      if (rows.top && rows.bottom) break;
      await sleep(50);
    }
    check(rows.top && rows.bottom, `the rows in view load (top ${rows.top}, bottom ${rows.bottom}, after ${prevBottom})`);
    check(rows.top <= prevBottom + 1, `the view after ${prevBottom} starts at ${rows.top}: rows skipped`);
    checkRows(rows.seqs);
    maxRows = Math.max(maxRows, rows.seqs.length);
    rows.seqs.forEach((s, i) => {
      seen.add(s);
      for (const want of expect ? expect(s) : []) {
        check(rows.texts[i].includes(want), `the row ${s} shows ${JSON.stringify(want)}: ${JSON.stringify(rows.texts[i])}`);
      }
    });
    prevBottom = Math.max(prevBottom, rows.bottom);
    steps++;
    const atEnd = await scroller.evaluate((el, view) => {
      const end = el.scrollTop + el.clientHeight >= el.scrollHeight - 2;
      if (!end) el.scrollTop += Math.max(1, Math.floor(view * 0.8));
      return end;
    }, rows.view);
    if (atEnd && (!lastSeq || seen.has(lastSeq))) break;
    check(Date.now() - start < timeout, `scrolled for ${timeout} ms; ${seen.size} rows seen`);
  }
  return { seen, maxRows, steps, ms: Date.now() - start };
}

// The rows in the DOM at one moment: no seq twice, and (sorted) no gap between them.
function checkRows(seqs) {
  const sorted = [...seqs].sort((a, b) => a - b);
  for (let i = 1; i < sorted.length; i++) {
    check(sorted[i] !== sorted[i - 1], `the event ${sorted[i]} is shown twice at once`);
    check(sorted[i] === sorted[i - 1] + 1, `the rows shown jump from ${sorted[i - 1]} to ${sorted[i]}`);
  }
}

// Missing and unexpected seqs of a set against 1..n, as short text.
function compareSeqs(seen, n) {
  const missing = [];
  for (let i = 1; i <= n; i++) if (!seen.has(i)) missing.push(i);
  const extra = [...seen].filter((s) => !(s >= 1 && s <= n));
  return { missing: missing.slice(0, 20), missingCount: missing.length, extra: extra.slice(0, 20) };
}

// A button by its accessible name; `enabled` is false when disabled or aria-disabled.
async function buttonState(locator) {
  return locator.evaluate((b) => ({
    enabled: !(b.disabled || b.getAttribute('aria-disabled') === 'true'),
    title: b.getAttribute('title') || '',
  }));
}

// Records, in the next documents the page opens, when an element matching `selector` first
// appears (performance.now(), from the navigation's start); read it with firstRenderTime.
async function firstRender(page, selector) {
  await page.addInitScript((sel) => {
    const look = () => {
      if (window.__devsetFirst === undefined && document.querySelector(sel)) window.__devsetFirst = performance.now();
    };
    new MutationObserver(look).observe(document, { childList: true, subtree: true });
  }, selector);
}

async function firstRenderTime(page, timeout = 60000) {
  await page.waitForFunction(() => window.__devsetFirst !== undefined, null, { timeout });
  return page.evaluate(() => window.__devsetFirst);
}

// The page's JS heap: performance.memory's used size, then after a garbage collection (Chrome
// DevTools Protocol's Runtime.getHeapUsage).
async function heap(page) {
  const before = await page.evaluate(() => (performance.memory ? performance.memory.usedJSHeapSize : 0));
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('HeapProfiler.collectGarbage');
  const { usedSize, totalSize } = await cdp.send('Runtime.getHeapUsage');
  await cdp.detach();
  return { used: usedSize, total: totalSize, beforeGc: before };
}

// Runs `main` with the browser; on failure prints the error, what the pages logged, and saves a
// screenshot of each page as failed-SCRIPT-N.png; the exit code tells the Rust side.
function run(main) {
  const script = path.basename(process.argv[1], '.js');
  const t0 = Date.now();
  main()
    .then(async () => {
      log(`${script}: passed in ${Date.now() - t0} ms`);
      await closeAll();
      process.exit(0);
    })
    .catch(async (e) => {
      console.log(`${script}: FAILED: ${e.stack || e}`);
      let i = 0;
      for (const r of current.pages) {
        i++;
        try {
          console.log(`--- page ${i}: ${r.page.url()}`);
          for (const l of r.console.slice(-30)) console.log(`  console ${l}`);
          for (const l of r.failed.slice(-30)) console.log(`  request ${l}`);
          const dir = process.env.WEB_SCREENSHOTS;
          if (dir && !r.page.isClosed()) {
            fs.mkdirSync(dir, { recursive: true });
            const file = path.join(dir, `failed-${script}-${i}.png`);
            await r.page.screenshot({ path: file, timeout: 5000 });
            console.log(`  screenshot ${file}`);
            const text = await r.page.locator('body').innerText({ timeout: 2000 });
            console.log(`  text: ${text.slice(0, 1500).replace(/\n+/g, ' | ')}`);
          }
        } catch (e2) {
          console.log(`  (could not report: ${e2.message})`);
        }
      }
      await closeAll();
      process.exit(1);
    });
}

async function closeAll() {
  if (current.browser) await current.browser.close().catch(() => {});
  if (lines) lines.close();
}

module.exports = {
  ACTIVE,
  COMPLETED,
  BASE,
  NS,
  env,
  ask,
  log,
  check,
  checkEqual,
  eventually,
  sleep,
  launch,
  newPage,
  signIn,
  screenshot,
  apiJson,
  apiEvents,
  gridOf,
  domSeqs,
  logScroller,
  logRows,
  scrollLogToEnd,
  checkRows,
  compareSeqs,
  buttonState,
  firstRender,
  firstRenderTime,
  heap,
  run,
};
