// The page's shell: session, namespace picker, navigation and the routes.
import { render } from 'preact';
import { useEffect, useLayoutEffect, useState } from 'preact/hooks';
import { ALL, AppCtx } from './ctx';
import { ApiError, call, getJson, nsPath, setOnUnauthorized, type Permissions, type Session } from './api';
import { navigate, useLocation, withNs } from './router';
import { Alert, Link } from './ui';
import { RunsPage } from './runs';
import { RunDetail } from './detail';
import { SchedulesPage } from './schedules';
import { SignIn } from './signin';
import './style.css';

// Asked at once, in parallel, before the first render (the page waits on both).
const sessionAtStart = call('GET', '/api/v1/session', undefined, { quiet401: true }).then(
  (r) => r.json() as Promise<Session>,
);
let namespacesAtStart: Promise<{ items: string[] }> | null = call('GET', '/api/v1/namespaces', undefined, {
  quiet401: true,
}).then((r) => r.json());
sessionAtStart.catch(() => {});
namespacesAtStart.catch(() => {});

function App() {
  const { path, query } = useLocation();
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [namespaces, setNamespaces] = useState<string[] | null>(null);
  const [perms, setPerms] = useState<Permissions>({});
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    setOnUnauthorized(() => setSession(null));
    sessionAtStart.then(setSession, (e: ApiError) => {
        if (e.status === 401) setSession(null);
        else {
          setSession({ user: 'anonymous', groups: [], auth: 'none' });
          if (e.status !== 404) setError(e.message);
        }
      });
  }, []);

  // Signed out: the sign-in page, coming back here after.
  useEffect(() => {
    if (session === null && path !== '/signin')
      navigate(`/signin?next=${encodeURIComponent(path + location.search)}`, true);
    if (session && path === '/signin') {
      const next = query.get('next') ?? '';
      navigate(next.startsWith('/') && !next.startsWith('//') ? next : '/runs', true);
    }
    if (session && path === '/') navigate('/runs', true);
  }, [session, path]);

  useEffect(() => {
    if (!session) return;
    const fresh = () => getJson<{ items: string[] }>('/api/v1/namespaces');
    const early = namespacesAtStart?.catch(fresh);
    namespacesAtStart = null;
    (early ?? fresh()).then(
      (l) => setNamespaces(l.items),
      (e: ApiError) => {
        setNamespaces([]);
        if (e.status !== 404) setError(e.message);
      },
    );
  }, [session]);

  const detail = /^\/runs\/([^/]+)\/([^/]+)\/?$/.exec(path);
  const ns =
    query.get('namespace') ||
    (detail && decodeURIComponent(detail[1])) ||
    (namespaces && namespaces[0]) ||
    (namespaces ? 'default' : '');

  useLayoutEffect(() => {
    if (!session || !ns || ns === ALL) return setPerms({});
    getJson<{ actions: Permissions }>(`${nsPath(ns)}/permissions`).then(
      (p) => setPerms(p.actions ?? {}),
      () => setPerms({}), // unknown: the API still authorizes every action
    );
  }, [session, ns]);

  if (session === undefined) return <p class="loading">Loading…</p>;
  if (session === null || path === '/signin')
    return <SignIn onSignedIn={(s) => setSession(s)} />;
  if (!namespaces) return <p class="loading">Loading…</p>;

  const signOut = async () => {
    try {
      await call('DELETE', '/api/v1/session');
    } catch {
      /* signed out anyway */
    }
    setSession(null);
  };

  const pick = (v: string) => {
    const base = path.startsWith('/runs/') ? '/runs' : path;
    navigate(withNs(base, v));
  };
  const choices = namespaces.includes(ns) || ns === ALL ? namespaces : [ns, ...namespaces];

  let page;
  if (detail)
    page = <RunDetail key={path} ns={decodeURIComponent(detail[1])} name={decodeURIComponent(detail[2])} />;
  else if (path.startsWith('/schedules')) page = <SchedulesPage key={ns} />;
  else page = <RunsPage key={ns} />;

  return (
    <AppCtx.Provider value={{ session, namespaces, ns, perms }}>
      <header class="top">
        <Link href={withNs('/runs', ns)} class="brand">
          devset
        </Link>
        <nav aria-label="Main">
          <Link href={withNs('/runs', ns)} class={path.startsWith('/runs') ? 'current' : ''}>
            Runs
          </Link>
          <Link href={withNs('/schedules', ns)} class={path.startsWith('/schedules') ? 'current' : ''}>
            Schedules
          </Link>
        </nav>
        <label class="nspick">
          Namespace
          <select value={ns} onChange={(e) => pick(e.currentTarget.value)}>
            {choices.map((n) => (
              <option value={n}>{n}</option>
            ))}
            <option value={ALL}>All namespaces</option>
          </select>
        </label>
        <span class="user" title={session.groups.join(', ')}>
          {session.user}
        </span>
        {session.auth === 'kubernetes' && (
          <button type="button" class="link" onClick={signOut}>
            Sign out
          </button>
        )}
      </header>
      <main id="main">
        <Alert error={error} onClose={() => setError(null)} />
        {page}
      </main>
    </AppCtx.Provider>
  );
}

render(<App />, document.getElementById('app')!);
