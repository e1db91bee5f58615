// Click an event → the `Event` inspector shows its payload (pretty-printed JSON) and headers,
// and they match what an independent consumer read from the broker (issue 14).
//   WEB_RUN: a finished run of `orders`
//   WEB_BROKER: [{headers: {..}, key, value}] as the Rust side read them (Kafka's console consumer,
//               or lapin's basic_get on RabbitMQ)
//   WEB_SCREENSHOT: '' for no screenshot
'use strict';
const w = require('./lib');

w.run(async () => {
  const ns = w.NS();
  const run = w.env('WEB_RUN');
  const broker = JSON.parse(w.env('WEB_BROKER'));
  w.check(broker.length > 0, 'the broker holds messages');
  const browser = await w.launch();
  const page = await w.newPage(browser);
  await w.signIn(page, w.env('WEB_TOKEN'));
  await page.goto(`/runs/${ns}/${run}`);
  await page.getByTestId('run-phase').filter({ hasText: 'Completed' }).waitFor();

  // Which rows are the published messages: the API's log says (seq → the message's key).
  const events = await w.apiEvents(page, ns, run);
  const published = events.filter((e) => e.type === 'message.published');
  w.checkEqual(published.length, broker.length, 'message.published events against messages on the broker');
  const inspector = page.getByRole('region', { name: 'Event', exact: true });
  for (const e of published) {
    const m = broker.find((b) => b.key === e.key);
    w.check(m, `the broker has a message with the key ${e.key} of event ${e.seq}`);
    await page.locator(`[data-seq="${e.seq}"]`).click();
    await inspector.waitFor();
    await inspector.getByText(`Event ${e.seq}`).waitFor();
    const payloadText = await inspector.getByTestId('event-payload').innerText();
    const headersText = await inspector.getByTestId('event-headers').innerText();
    // Pretty-printed: the JSON on several lines, and equal to what the broker holds.
    w.check(payloadText.includes('\n  '), `the payload is pretty-printed: ${payloadText}`);
    w.checkEqual(JSON.parse(payloadText), JSON.parse(m.value), `event ${e.seq}: the payload against the broker's`);
    const shown = JSON.parse(headersText);
    // RabbitMQ carries the key as the header devset.key; the page may show it as the key only.
    const want = { ...m.headers };
    if (!('devset.key' in shown)) delete want['devset.key'];
    w.checkEqual(sorted(shown), sorted(want), `event ${e.seq}: the headers against the broker's`);
    w.check((await inspector.innerText()).includes(m.key), `event ${e.seq}: the inspector shows the key ${m.key}`);
    w.log(`event ${e.seq}: payload and headers match the broker's message ${m.key}`);
  }
  if (process.env.WEB_SCREENSHOT !== '') await w.screenshot(page, 'run-detail', { fullPage: true });
});

function sorted(o) {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));
}
