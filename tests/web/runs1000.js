// The Runs page with 1,000 runs (issue 14): the first row, then the whole list as the run stream
// delivers it, and every run listed once (checked against kubectl's list). No controller runs
// them, so they are Pending. Prints the figures
// tests/bench reports (`web-bench:` lines).
//   WEB_RUNS: how many runs the namespace holds
'use strict';
const w = require('./lib');

w.run(async () => {
  const ns = w.NS();
  const n = Number(w.env('WEB_RUNS'));
  const browser = await w.launch();
  const page = await w.newPage(browser, { timeout: 60000 });
  await w.signIn(page, w.env('WEB_TOKEN'));
  await page.goto('/schedules');
  await w.firstRender(page, '[data-run]');
  await page.goto(`/runs?namespace=${ns}`);
  const first = await w.firstRenderTime(page);
  // The grid shows its count; past a first screenful it offers `Show all N`.
  const showAll = page.getByRole('button', { name: `Show all ${n}` });
  await w.eventually(`all ${n} runs counted`, async () => (await showAll.count()) > 0 || (await page.locator('[data-run]').count()) === n, { timeout: 60000, interval: 20 });
  const listed = await page.evaluate(() => performance.now());
  w.log(`web-bench: Runs with ${n} runs: first row after ${first.toFixed(0)} ms, all ${n} listed after ${listed.toFixed(0)} ms`);
  if (await showAll.count()) {
    const t0 = Date.now();
    await showAll.click();
    await w.eventually(`${n} rows`, async () => (await page.locator('[data-run]').count()) === n, { timeout: 30000, interval: 20 });
    w.log(`web-bench: Show all ${n}: ${Date.now() - t0} ms to render every row`);
  }
  const keys = await page.$$eval('[data-run]', (rows) => rows.map((r) => r.getAttribute('data-run')));
  const names = (await w.ask('runs')).items.map((r) => `${ns}/${r.metadata.name}`).sort();
  w.checkEqual([...keys].sort(), names, 'the runs listed against kubectl\'s list');
  w.checkEqual(new Set(keys).size, n, 'each run once');
  // No controller ran them: each is Pending, under Active Runs.
  const phases = await page.$$eval('[data-run]', (rows) => [...new Set(rows.map((r) => r.getAttribute('data-phase')))]);
  w.checkEqual(phases, ['Pending'], 'the phases shown');
  for (const k of [keys[0], keys[n - 1]]) w.checkEqual(await w.gridOf(page, k), 'Active Runs', `${k}'s grid`);
});
