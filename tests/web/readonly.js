// A user who may only get and list (issue 14) sees the action buttons disabled, each with the
// reason from the API's /permissions (in its title, and as text on the page), and can still
// export (export needs only `get`).
//   WEB_VIEWER_TOKEN / WEB_VIEWER_SA: the get/list ServiceAccount
//   set up by the Rust side: `waiting` (WaitingForApproval), `done` (Completed), schedule `nightly`
'use strict';
const w = require('./lib');

w.run(async () => {
  const ns = w.NS();
  const viewer = `system:serviceaccount:${ns}:${w.env('WEB_VIEWER_SA')}`;
  const browser = await w.launch();
  const page = await w.newPage(browser);
  await w.signIn(page, w.env('WEB_VIEWER_TOKEN'));

  // A disabled button whose title names the user and the verb it lacks; `shown`: the reason is
  // also text on the page.
  async function denied(name, verb, { scope = page, shown = true } = {}) {
    const buttons = scope.getByRole('button', { name, exact: true });
    await buttons.first().waitFor();
    const n = await buttons.count();
    for (let i = 0; i < n; i++) {
      const b = await w.buttonState(buttons.nth(i));
      w.check(!b.enabled, `${name} is disabled for ${viewer}`);
      w.check(b.title.includes(viewer) && b.title.includes(`cannot ${verb}`), `${name}'s title gives the reason: ${JSON.stringify(b.title)}`);
      if (shown) {
        const text = await page.locator('body').innerText();
        w.check(text.includes(b.title), `the reason of ${name} is on the page: ${b.title}`);
      }
    }
    w.log(`${name}: disabled (${n}), "${(await buttons.first().getAttribute('title'))}"`);
  }

  await page.goto(`/runs?namespace=${ns}`);
  await page.locator(`[data-run="${ns}/done"]`).waitFor();
  await denied('New Run', 'create');

  await page.goto(`/runs/${ns}/waiting`);
  await page.getByTestId('run-phase').filter({ hasText: 'WaitingForApproval' }).waitFor();
  await denied('Stop', 'patch');
  await denied('Approve', 'approve');
  await denied('Reject', 'approve');
  await w.screenshot(page, 'run-detail-viewer', {}, { docs: false });

  await page.goto(`/runs/${ns}/done`);
  await page.getByTestId('run-phase').filter({ hasText: 'Completed' }).waitFor();
  await denied('Retry', 'create');
  await denied('Re-run from here', 'create');
  const exp = await w.buttonState(page.getByRole('button', { name: 'Export' }));
  w.check(exp.enabled, 'Export is enabled: it needs only get');

  await page.goto(`/schedules?namespace=${ns}`);
  const row = page.locator(`[data-schedule="${ns}/nightly"]`);
  await row.waitFor();
  await denied('Fire now', 'create', { scope: row });
  await denied('Suspend', 'patch', { scope: row });
  // The API agrees: the session may not stop a run.
  const res = await page.evaluate(async (ns) => {
    const r = await fetch(`/api/v1/namespaces/${ns}/workflowruns/waiting/stop`, {
      method: 'POST',
      headers: { 'X-Devset-Csrf': '1' },
      credentials: 'same-origin',
    });
    return r.status;
  }, ns);
  w.checkEqual(res, 403, 'the API refuses the viewer\'s stop');
  w.checkEqual(await w.ask('jsonpath', { resource: 'workflowrun', name: 'waiting', path: '{.status.phase}' }), 'WaitingForApproval', 'the run still waits (kubectl)');
});
