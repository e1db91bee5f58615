// The run detail's and the schedules page's actions (issue 14), each outcome read back by the
// Rust side with kubectl or Kafka's console consumer: Stop, Approve with a comment (the comment and
// user in status), Reject, Retry, Re-run from here (the new run's inherited stages), Export (the
// downloaded file parses and holds the events), Fire now, Suspend/Resume.
//   set up by the Rust side: `stopme` (Running, long), `gate-a` and `gate-r` (WaitingForApproval
//   on the stage go-live), the schedule `nightly`
'use strict';
const fs = require('fs');
const w = require('./lib');

const jsonpath = (resource, name, path) => w.ask('jsonpath', { resource, name, path });
const stageField = (run, stage, field) => jsonpath('workflowrun', run, `{.status.stages[?(@.name=="${stage}")].${field}}`);

async function phaseIs(page, phase, timeout = 60000) {
  await w.eventually(`the page to show ${phase}`, async () => (await page.getByTestId('run-phase').innerText()).trim() === phase, { timeout, interval: 200 });
}

// The run the page went to after Retry / Re-run from here.
async function followedRun(page, from) {
  return w.eventually('the page to open the new run', async () => {
    const m = new URL(page.url()).pathname.match(/^\/runs\/[^/]+\/([^/]+)$/);
    return m && decodeURIComponent(m[1]) !== from ? decodeURIComponent(m[1]) : null;
  });
}

w.run(async () => {
  const ns = w.NS();
  const user = `system:serviceaccount:${ns}:${w.env('WEB_SA')}`;
  const topic = w.env('WEB_TOPIC');
  const browser = await w.launch();
  const page = await w.newPage(browser);
  await w.signIn(page, w.env('WEB_TOKEN'));

  // Stop.
  await page.goto(`/runs/${ns}/stopme`);
  await phaseIs(page, 'Running');
  await page.getByRole('button', { name: 'Stop', exact: true }).click();
  await phaseIs(page, 'Stopped');
  w.checkEqual(await jsonpath('workflowrun', 'stopme', '{.status.phase}'), 'Stopped', 'stopme phase (kubectl)');
  w.checkEqual(await jsonpath('workflowrun', 'stopme', '{.spec.stop}'), 'true', 'stopme spec.stop (kubectl)');
  const stopped = await w.buttonState(page.getByRole('button', { name: 'Stop', exact: true }));
  w.check(!stopped.enabled && stopped.title, `Stop is disabled on a stopped run, with a reason: ${JSON.stringify(stopped)}`);
  w.log('Stop: Stopped');

  // Approve with a comment.
  const comment = 'ship it from the page';
  await page.goto(`/runs/${ns}/gate-a`);
  await phaseIs(page, 'WaitingForApproval');
  await page.getByLabel('Comment').fill(comment);
  await page.getByRole('button', { name: 'Approve' }).click();
  await phaseIs(page, 'Completed');
  w.checkEqual(await stageField('gate-a', 'go-live', 'approval.decision'), 'Approved', 'the decision (kubectl)');
  w.checkEqual(await stageField('gate-a', 'go-live', 'approval.user'), user, 'the approver in status (kubectl)');
  w.checkEqual(await stageField('gate-a', 'go-live', 'outputs.comment'), comment, 'the comment in status (kubectl)');
  const [after] = await w.ask('kafka-read', { topic: `${topic}-after`, n: 1 });
  w.checkEqual(after.value, `approved by ${user}: ${comment}`, 'the stage after the approval published the decision');
  const record = await page.locator('[data-stage="go-live"]').innerText();
  w.check(record.includes(user) && record.includes(comment), `the page shows the approval record: ${record}`);
  w.log('Approve: Completed, user and comment in status');

  // Reject.
  await page.goto(`/runs/${ns}/gate-r`);
  await phaseIs(page, 'WaitingForApproval');
  await page.getByLabel('Comment').fill('not today');
  await page.getByRole('button', { name: 'Reject' }).click();
  await phaseIs(page, 'Failed');
  w.checkEqual(await jsonpath('workflowrun', 'gate-r', '{.status.reason}'), 'Rejected', 'the rejected run\'s reason');
  w.checkEqual(await stageField('gate-r', 'go-live', 'approval.decision'), 'Rejected', 'the decision (kubectl)');
  w.checkEqual(await stageField('gate-r', 'go-live', 'approval.user'), user, 'the rejecting user (kubectl)');
  w.log('Reject: Failed, Rejected');

  // Retry: a new run of the whole workflow, the page goes to it.
  await page.getByRole('button', { name: 'Retry' }).click();
  const retried = await followedRun(page, 'gate-r');
  w.checkEqual(await jsonpath('workflowrun', retried, '{.spec.rerunOf.name}'), 'gate-r', `${retried} spec.rerunOf.name`);
  w.checkEqual(await jsonpath('workflowrun', retried, '{.spec.rerunOf.fromStage}'), '', `${retried} has no fromStage`);
  await phaseIs(page, 'WaitingForApproval');
  w.log(`Retry: ${retried} waits for the approval again`);

  // Re-run from here, from the stage `rest` of the approved run: first and go-live Inherited.
  await page.goto(`/runs/${ns}/gate-a`);
  await phaseIs(page, 'Completed');
  await page.locator('[data-stage="rest"]').getByRole('button', { name: 'Re-run from here' }).click();
  const rerun = await followedRun(page, 'gate-a');
  await phaseIs(page, 'Completed');
  w.checkEqual(await jsonpath('workflowrun', rerun, '{.spec.rerunOf.name}'), 'gate-a', `${rerun} spec.rerunOf.name`);
  w.checkEqual(await jsonpath('workflowrun', rerun, '{.spec.rerunOf.fromStage}'), 'rest', `${rerun} spec.rerunOf.fromStage`);
  for (const s of ['first', 'go-live']) {
    w.checkEqual(await stageField(rerun, s, 'phase'), 'Inherited', `${rerun}: the stage ${s} (kubectl)`);
    await page.locator(`[data-stage="${s}"][data-stage-phase="Inherited"]`).waitFor();
  }
  w.checkEqual(await stageField(rerun, 'rest', 'phase'), 'Succeeded', `${rerun}: the stage rest (kubectl)`);
  // Inherited stages publish nothing: before = gate-a, gate-r and the retry, 2 each; after =
  // gate-a and the re-run, 4 each, the re-run's with the inherited decision.
  w.checkEqual(await w.ask('kafka-count', { topic: `${topic}-before` }), 6, 'messages before the approval (Kafka)');
  w.checkEqual(await w.ask('kafka-count', { topic: `${topic}-after` }), 8, 'messages after the approval (Kafka)');
  const all = await w.ask('kafka-read', { topic: `${topic}-after`, n: 8 });
  w.checkEqual(all[7].value, `approved by ${user}: ${comment}`, 'the re-run used the inherited outputs');
  w.log(`Re-run from here: ${rerun} inherited first and go-live`);

  // Export: the downloaded file parses and holds the run's events.
  await page.goto(`/runs/${ns}/gate-a`);
  await phaseIs(page, 'Completed');
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export' }).click()]);
  const file = await download.path();
  const exported = JSON.parse(fs.readFileSync(file, 'utf8'));
  const events = await w.apiEvents(page, ns, 'gate-a');
  const item = (exported.items || []).find((i) => i.name === 'gate-a');
  w.check(item, `the export holds gate-a: ${JSON.stringify(exported).slice(0, 300)}`);
  w.checkEqual(item.events.map((e) => [e.seq, e.type]), events.map((e) => [e.seq, e.type]), 'the exported events against the API\'s');
  w.log(`Export: ${download.suggestedFilename()} holds ${item.events.length} events`);

  // Runs page with all of these, for the README.
  await page.goto(`/runs?namespace=${ns}`);
  await page.locator(`[data-run="${ns}/${rerun}"]`).waitFor();
  await w.screenshot(page, 'runs');

  // Schedules: Suspend, Resume, Fire now.
  await page.goto(`/schedules?namespace=${ns}`);
  const row = page.locator(`[data-schedule="${ns}/nightly"]`);
  await row.waitFor();
  await row.getByRole('button', { name: 'Suspend' }).click();
  await w.eventually('spec.suspend true', async () => (await jsonpath('workflowschedule', 'nightly', '{.spec.suspend}')) === 'true');
  await page.locator(`[data-schedule="${ns}/nightly"][data-suspended="true"]`).waitFor();
  await row.getByRole('button', { name: 'Resume' }).click();
  await w.eventually('spec.suspend false', async () => (await jsonpath('workflowschedule', 'nightly', '{.spec.suspend}')) === 'false');
  const before = (await w.ask('runs')).items.length;
  await row.getByRole('button', { name: 'Fire now' }).click();
  const fired = await w.eventually('a run of the schedule', async () => {
    const runs = (await w.ask('runs')).items;
    const ours = runs.filter((r) => (r.metadata.labels || {})['devset.io/schedule'] === 'nightly');
    return runs.length === before + 1 && ours.length === 1 ? ours[0].metadata.name : null;
  });
  await w.eventually(`${fired} to complete`, async () => (await jsonpath('workflowrun', fired, '{.status.phase}')) === 'Completed', { timeout: 60000 });
  await w.eventually('the last run on the schedules page', async () => (await row.innerText()).includes(fired), { timeout: 30000 });
  w.log(`Fire now: ${fired} completed`);
  await w.screenshot(page, 'schedules');
});
