// A run of 100,000 events (issue 14): its detail page opens at once, the virtualized log keeps a
// window of rows in the DOM, and the last event can be reached by scrolling to the end; a jump to
// the middle loads the rows there. Prints the figures tests/bench reports (`web-bench:` lines):
// time to the first row, time to the last row, the JS heap after scrolling to the end.
//   WEB_RUN: the finished run
'use strict';
const w = require('./lib');

w.run(async () => {
  const ns = w.NS();
  const run = w.env('WEB_RUN');
  const browser = await w.launch();
  const page = await w.newPage(browser, { timeout: 60000 });
  await w.signIn(page, w.env('WEB_TOKEN'));
  const summary = await w.apiJson(page, `/api/v1/namespaces/${ns}/workflowruns/${run}`);
  const last = summary.events.lastSeq;
  w.check(last > 100000, `the run has over 100,000 events: ${last}`);
  await w.firstRender(page, '[data-seq]');
  await page.goto(`/runs/${ns}/${run}`);
  const first = await w.firstRenderTime(page);
  w.log(`web-bench: detail page of a ${last}-event run: first row after ${first.toFixed(0)} ms`);
  await page.locator('[data-seq="1"]').waitFor();

  // To the end: scroll the log's scroller to the bottom until the last row shows.
  const scroller = await w.logScroller(page);
  const t0 = Date.now();
  await w.eventually(`the last event (${last}) in the log`, async () => {
    await scroller.evaluate((el) => el.scrollTo(0, el.scrollHeight));
    return (await w.domSeqs(page)).includes(last);
  }, { timeout: 60000, interval: 250 });
  const toEnd = Date.now() - t0;
  const rows = await w.domSeqs(page);
  w.checkRows(rows);
  w.check(rows.length < 500, `a window of rows in the DOM, not ${rows.length}`);
  const text = await page.locator(`[data-seq="${last}"]`).innerText();
  w.check(text.includes('run.phase') && text.includes('Completed'), `the last row is the run's end: ${text}`);
  w.log(`web-bench: time to the last event of a ${last}-event run: ${toEnd} ms (scrolled to the end; ${rows.length} rows in the DOM)`);

  // The middle: the rows there load, in order.
  const mid = await scroller.evaluate((el) => {
    el.scrollTo(0, el.scrollHeight / 2);
    return el.scrollTop;
  });
  const middle = await w.eventually('rows in the middle of the log', async () => {
    const r = await w.logRows(scroller);
    return r.top && r.bottom ? r : null;
  }, { timeout: 30000 });
  w.checkRows(middle.seqs);
  w.check(Math.abs(middle.top - last / 2) < last / 20, `the middle of the log (scrollTop ${mid}) shows about event ${last / 2}: ${middle.top}`);

  // The inspector on the last published message: its whole payload.
  const events = await w.apiJson(page, `/api/v1/namespaces/${ns}/workflowruns/${run}/events?after=${last - 10}&limit=10`);
  const msg = events.items.filter((e) => e.type === 'message.published').pop();
  await scroller.evaluate((el) => el.scrollTo(0, el.scrollHeight));
  await page.locator(`[data-seq="${msg.seq}"]`).click();
  const payload = await page.getByRole('region', { name: 'Event', exact: true }).getByTestId('event-payload').innerText();
  w.checkEqual(JSON.parse(payload), JSON.parse(msg.payload), `the payload of event ${msg.seq}`);

  const heap = await w.heap(page);
  const mib = (b) => (b / 1048576).toFixed(1);
  w.log(`web-bench: JS heap after scrolling the log to the end: ${mib(heap.beforeGc)} MiB used, ${mib(heap.used)} MiB after a GC (${mib(heap.total)} MiB allocated)`);
  w.check(heap.used < 200 * 1048576, `the heap stays bounded: ${heap.used} bytes`);
});
