// New Run with params (issue 14): the dialog (`Workflow`, `Connector`, a field per param, `Start`)
// checks a missing required param, starts a run that appears in Active Runs, completes and moves
// to Completed Runs without a reload. The Rust side checks the run's params, phase and the
// messages on Kafka (kubectl, kafka-count); this script asks it for them.
'use strict';
const w = require('./lib');

// Picks `value` in the field labelled `label`: a <select>, or a combobox with options.
async function choose(page, scope, label, value) {
  const field = scope.getByLabel(label, { exact: true });
  const tag = await field.evaluate((el) => el.tagName);
  if (tag === 'SELECT') {
    // The option whose value is `value`, else whose text is or starts with it ("kafka (kafka)").
    const v = await field.evaluate((el, want) => {
      const o = [...el.options].find((o) => o.value === want) || [...el.options].find((o) => o.textContent.trim() === want) ||
        [...el.options].find((o) => o.textContent.trim().startsWith(`${want} `));
      return o ? o.value : null;
    }, value);
    if (v === null) throw new Error(`${label} offers no ${value}`);
    await field.selectOption(v);
  } else {
    await field.click();
    if (tag === 'INPUT') await field.fill(value);
    await page.getByRole('option', { name: value, exact: true }).click();
  }
}

// The names a select or combobox offers, once it has loaded them (the dialog opens at once and
// fills its selects as the catalog answers: "Loading…" until then).
async function options(page, scope, label) {
  const field = scope.getByLabel(label, { exact: true });
  if ((await field.evaluate((el) => el.tagName)) === 'SELECT') {
    return w.eventually(`${label} to load its options`, async () => {
      const names = await field.evaluate((el) => [...el.options].map((o) => o.textContent.trim()));
      return names.includes('Loading…') ? null : names;
    });
  }
  await field.click();
  const names = await page.getByRole('option').allInnerTexts();
  await page.keyboard.press('Escape');
  return names.map((n) => n.trim());
}

w.run(async () => {
  const ns = w.NS();
  const browser = await w.launch();
  const page = await w.newPage(browser);
  await w.signIn(page, w.env('WEB_TOKEN'));
  await page.getByRole('heading', { name: 'Active Runs' }).waitFor();
  // A marker that a reload would clear.
  await page.evaluate(() => (window.__devsetNoReload = true));

  await page.getByRole('button', { name: 'New Run' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  const workflows = await options(page, dialog, 'Workflow');
  for (const wf of ['orders', 'gated', 'long']) w.check(workflows.some((o) => o.includes(wf)), `Workflow offers ${wf}: ${workflows}`);
  await choose(page, dialog, 'Workflow', 'orders');
  const connectors = await options(page, dialog, 'Connector');
  for (const c of ['kafka', 'rabbit']) w.check(connectors.some((o) => o.includes(c)), `Connector offers ${c}: ${connectors}`);
  await choose(page, dialog, 'Connector', 'kafka');

  // The param form: one field per param, the default filled in.
  const orders = dialog.getByLabel('orders', { exact: true });
  const region = dialog.getByLabel('region', { exact: true });
  await orders.waitFor();
  await region.waitFor();
  w.checkEqual(await orders.inputValue(), '3', 'the field orders holds its default');
  await orders.fill('5');
  await region.fill('eu-west');
  await w.screenshot(page, 'new-run');
  // `region` is required: Start without it creates no run.
  await region.fill('');
  await dialog.getByRole('button', { name: 'Start' }).click();
  await w.sleep(1500);
  const invalid = await region.evaluate(
    (el) => (el.checkValidity && !el.checkValidity()) || el.getAttribute('aria-invalid') === 'true',
  );
  const alerted = await dialog.getByRole('alert').count();
  w.check(invalid || alerted > 0, 'a missing required param is marked (invalid field or an alert)');
  w.check(await dialog.isVisible(), 'the dialog stays open while a required param is missing');
  w.checkEqual((await w.ask('runs')).items.length, 0, 'no run created without the required param');

  await region.fill('eu-west');
  await dialog.getByRole('button', { name: 'Start' }).click();
  await dialog.waitFor({ state: 'hidden' });

  // The run appears in Active Runs (live: the page asked nothing again).
  const row = await w.eventually('the new run on the Runs page', async () => {
    if (!new URL(page.url()).pathname.startsWith('/runs')) return null;
    return page.$eval('[data-run]', (el) => el.getAttribute('data-run')).catch(() => null);
  }, { timeout: 20000, interval: 50 });
  // The page may have gone to the run's detail; the Runs page lists it either way.
  if (new URL(page.url()).pathname !== '/runs') {
    await page.goto(`/runs?namespace=${ns}`);
    await page.evaluate(() => (window.__devsetNoReload = true));
  }
  const [rowNs, name] = row.split('/');
  w.checkEqual(rowNs, ns, 'the run is in the test namespace');
  w.log(`the new run: ${row}`);
  const sel = `[data-run="${row}"]`;
  const firstPhase = await page.getAttribute(sel, 'data-phase');
  if (w.ACTIVE.includes(firstPhase)) {
    w.checkEqual(await w.gridOf(page, row), 'Active Runs', `the ${firstPhase} run's grid`);
  } else {
    throw new Error(`the run was ${firstPhase} when it first showed: it never showed in Active Runs`);
  }
  const params = await w.ask('jsonpath', { resource: 'workflowrun', name, path: '{.spec.params}' });
  const got = JSON.parse(params);
  w.check(String(got.orders) === '5' && got.region === 'eu-west', `the run's spec.params (kubectl): ${params}`);

  // Completed, and moved to Completed Runs, without a reload.
  await page.waitForSelector(`${sel}[data-phase="Completed"]`, { timeout: 60000 });
  await w.eventually('the run under Completed Runs', async () => (await w.gridOf(page, row)) === 'Completed Runs', { timeout: 10000 });
  w.check(await page.evaluate(() => window.__devsetNoReload === true), 'the page was not reloaded');
  w.checkEqual(await w.ask('jsonpath', { resource: 'workflowrun', name, path: '{.status.phase}' }), 'Completed', 'the phase (kubectl)');
  w.checkEqual(await w.ask('kafka-count', { topic: `${w.env('WEB_TOPIC')}-orders` }), 5, 'messages on Kafka');
  const by = await w.ask('jsonpath', { resource: 'workflowrun', name, path: '{.status.triggeredBy}' });
  w.check(by.includes(w.env('WEB_SA')), `status.triggeredBy names the signed-in user: ${by}`);
});
