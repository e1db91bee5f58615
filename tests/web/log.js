// The run detail's live event log (issue 14) holds every event exactly once, compared with the
// API's JSON pages, across a `devset api` restart in the middle of the run (the Rust side kills
// it and starts it again on the same port while the page is open). While the log streams, the
// rows in the DOM are sampled: never an event twice, never a gap.
//   WEB_RUN: a run of `long` (3,000 messages at 150/s) that the Rust side started
'use strict';
const w = require('./lib');

w.run(async () => {
  const ns = w.NS();
  const run = w.env('WEB_RUN');
  const browser = await w.launch();
  const page = await w.newPage(browser);
  await w.signIn(page, w.env('WEB_TOKEN'));
  await page.goto(`/runs/${ns}/${run}`);
  await page.evaluate(() => (window.__devsetNoReload = true));
  const phase = page.getByTestId('run-phase');
  await phase.waitFor();

  // Sample the rows shown while the log streams.
  let stop = false;
  let sampled = 0;
  let sampleError = null;
  const sampler = (async () => {
    while (!stop) {
      try {
        w.checkRows(await w.domSeqs(page));
        sampled++;
      } catch (e) {
        sampleError = sampleError || e;
      }
      await w.sleep(100);
    }
  })();

  // Some of the log arrives live, then the API dies and comes back while the run goes on.
  await w.eventually('live rows in the log', async () => (await w.domSeqs(page)).length > 5, { timeout: 30000 });
  await w.eventually('the run to be Running on the page', async () => (await phase.innerText()).includes('Running'), { timeout: 30000 });
  const before = await w.apiJson(page, `/api/v1/namespaces/${ns}/workflowruns/${run}`);
  w.log(`restarting devset api at event ${before.events.lastSeq}`);
  await w.ask('restart-api');
  const after = await w.apiJson(page, `/api/v1/namespaces/${ns}/workflowruns/${run}`);
  w.log(`devset api is back at event ${after.events.lastSeq}`);
  w.checkEqual(after.phase, 'Running', 'the run still runs after the restart (else restart sooner or make the run longer)');
  w.check(after.events.lastSeq > before.events.lastSeq, 'the run went on while the API was down');

  // The page follows the log to the end, without a reload.
  await w.eventually('the page to show Completed', async () => (await phase.innerText()).includes('Completed'), { timeout: 90000, interval: 250 });
  w.check(await page.evaluate(() => window.__devsetNoReload === true), 'the page was not reloaded');
  const events = await w.apiEvents(page, ns, run);
  const n = events.length;
  w.checkEqual(events.map((e) => e.seq), Array.from({ length: n }, (_, i) => i + 1), 'the API\'s JSON pages are 1..N');
  w.checkEqual(events[n - 1].type, 'run.phase', 'the last event');
  // Let the page take in the last events, then read the log from the top to the end.
  await w.eventually(`the last event (${n}) on the page`, async () => {
    const s = await w.domSeqs(page);
    if (s.includes(n)) return true;
    const scroller = await w.logScroller(page);
    await scroller.evaluate((el) => (el.scrollTop = el.scrollHeight));
    return false;
  }, { timeout: 30000, interval: 300 });
  stop = true;
  await sampler;
  if (sampleError) throw sampleError;
  w.log(`sampled the rows ${sampled} times while streaming: no duplicate, no gap`);
  // Each row shows its event's type (and a published message its payload), as the API has it.
  const expect = (seq) => {
    const e = events[seq - 1];
    return e ? [e.type, ...(e.type === 'message.published' ? [e.payload] : [])] : [];
  };
  const { seen, maxRows, steps } = await w.scrollLogToEnd(page, { lastSeq: n, expect });
  const diff = w.compareSeqs(seen, n);
  w.check(diff.missingCount === 0 && diff.extra.length === 0,
    `the page's log against the API's ${n} events: missing ${diff.missingCount} (${diff.missing}), unexpected ${diff.extra}`);
  w.log(`the page showed each of the ${n} events exactly once (${steps} scroll steps, at most ${maxRows} rows in the DOM)`);
  w.check(maxRows < n, `the log is virtualized: at most ${maxRows} rows in the DOM for ${n} events`);
});
