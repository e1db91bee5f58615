// Signing in (issue 14): a token from `kubectl create token` lets you in, a wrong one is refused
// with a message; the token never appears in a URL and page scripts cannot read the cookie.
// With --auth=none there is no sign-in at all.
//   WEB_URL, WEB_TOKEN: an API with --auth=kubernetes and a valid token
//   WEB_URL_NOAUTH: an API with --auth=none
'use strict';
const w = require('./lib');

w.run(async () => {
  const token = w.env('WEB_TOKEN');
  const browser = await w.launch();
  const page = await w.newPage(browser);

  // Not signed in: the Runs page sends you to sign in.
  await page.goto('/');
  await page.getByLabel('Token').waitFor();
  w.check(new URL(page.url()).pathname === '/signin', `not signed in, / ends at /signin, not ${page.url()}`);
  const signIn = page.getByRole('button', { name: 'Sign in' });
  await signIn.waitFor();
  await w.screenshot(page, 'signin');

  // A wrong token: refused, with the API's message, and still on the sign-in page.
  const wrong = 'not-a-valid-token-' + Date.now();
  await page.getByLabel('Token').fill(wrong);
  await signIn.click();
  const alert = page.getByRole('alert').filter({ hasText: /token is not valid/i });
  await alert.waitFor();
  w.log(`wrong token refused: ${(await alert.innerText()).trim()}`);
  w.check(await page.getByLabel('Token').isVisible(), 'still on the sign-in page after a wrong token');
  const cookies0 = await page.context().cookies();
  w.check(!cookies0.some((c) => c.name === 'devset_session'), 'no session cookie after a wrong token');

  // The right token: the Runs page, with a session cookie that scripts cannot read.
  await page.getByLabel('Token').fill(token);
  await signIn.click();
  await page.getByRole('heading', { name: 'Active Runs' }).waitFor();
  await page.getByRole('heading', { name: 'Completed Runs' }).waitFor();
  w.check(new URL(page.url()).pathname.startsWith('/runs'), `signed in, the page is Runs: ${page.url()}`);
  const cookie = (await page.context().cookies()).find((c) => c.name === 'devset_session');
  w.check(cookie, 'a devset_session cookie');
  w.check(cookie.httpOnly, 'the session cookie is HttpOnly');
  w.checkEqual(cookie.sameSite, 'Strict', 'the session cookie is SameSite=Strict');
  const visible = await page.evaluate(() => document.cookie);
  w.check(!visible.includes(token.slice(-20)), 'page scripts cannot read the token');
  for (const u of page.record.urls) {
    w.check(!u.includes(token.slice(-20)) && !u.includes(wrong), `no token in a URL: ${u}`);
  }
  // The session holds across a reload, and the page's session is the token's ServiceAccount.
  await page.reload();
  await page.getByRole('heading', { name: 'Active Runs' }).waitFor();
  const session = await w.apiJson(page, '/api/v1/session');
  w.checkEqual(session.user, `system:serviceaccount:${w.NS()}:${w.env('WEB_SA')}`, 'the session user');
  w.check(!(await page.getByLabel('Token').isVisible()), 'signed in, no Token field after a reload');

  // A POST authenticated by the cookie without the CSRF header is refused.
  const csrf = await page.evaluate(async (ns) => {
    const r = await fetch(`/api/v1/namespaces/${ns}/workflowruns/none/stop`, { method: 'POST', credentials: 'same-origin' });
    return { status: r.status, body: await r.text() };
  }, w.NS());
  w.checkEqual(csrf.status, 403, `a cookie POST without X-Devset-Csrf (${csrf.body})`);
  w.check(/cross-site request refused/.test(csrf.body), `the CSRF refusal says why: ${csrf.body}`);

  // --auth=none: no sign-in, straight to the Runs page.
  const open = await w.newPage(browser, { base: w.env('WEB_URL_NOAUTH') });
  await open.goto(`/runs?namespace=${w.NS()}`);
  await open.getByRole('heading', { name: 'Active Runs' }).waitFor();
  w.check(!(await open.getByLabel('Token').isVisible()), 'with --auth=none the page shows no Token field');
  await open.goto('/');
  await open.getByRole('heading', { name: 'Active Runs' }).waitFor();
  w.check(new URL(open.url()).pathname === '/runs', `with --auth=none / opens /runs: ${open.url()}`);
});
