// Runs: the Active Runs and Completed Runs grids, live from the runs SSE stream (a snapshot of
// ADDED then SYNCED, then ADDED/MODIFIED/DELETED), with filters, selection and bulk actions.
import { useLayoutEffect, useMemo, useState } from 'preact/hooks';
import {
  ACTIVE_PHASES,
  DONE_PHASES,
  call,
  download,
  eachRun,
  getJson,
  isActive,
  postJson,
  runPath,
  runsPath,
  type ApiError,
  type BulkResult,
  type RunRef,
  type RunSummary,
} from './api';
import { ALL, useApp } from './ctx';
import { ActionButton, Alert, Link, Notice, Phase, Time, failures } from './ui';
import { NewRunDialog } from './newrun';

const keyOf = (r: RunRef) => `${r.namespace}/${r.name}`;
const SHOWN = 100;

/** The runs of `ns` (or all namespaces), kept current by the SSE stream. */
function useLiveRuns(ns: string) {
  const [runs, setRuns] = useState<Map<string, RunSummary>>(new Map());
  const [synced, setSynced] = useState(false);
  const [error, setError] = useState<string | null>(null);

  // A layout effect: the stream starts with the first render, not after a paint.
  useLayoutEffect(() => {
    const path = runsPath(ns === ALL ? '' : ns);
    let es: EventSource | null = null;
    let live = new Map<string, RunSummary>();
    let staging: Map<string, RunSummary> | null = null;
    let flushTimer = 0;
    let retry = 0;
    let stopped = false;
    let fails = 0;
    const flush = () => {
      flushTimer = 0;
      setRuns(new Map(live));
    };
    const later = () => {
      if (!flushTimer) flushTimer = window.setTimeout(flush, 40);
    };
    const put = (ev: MessageEvent) => {
      const r = JSON.parse(ev.data) as RunSummary;
      if (staging) staging.set(keyOf(r), r);
      else {
        live.set(keyOf(r), r);
        later();
      }
    };
    const connect = () => {
      if (stopped) return;
      es = new EventSource(path);
      es.onopen = () => {
        staging = new Map();
      };
      es.addEventListener('ADDED', put);
      es.addEventListener('MODIFIED', put);
      es.addEventListener('DELETED', (ev) => {
        const r = JSON.parse((ev as MessageEvent).data) as RunRef;
        if (staging) staging.delete(keyOf(r));
        else {
          live.delete(keyOf(r));
          later();
        }
      });
      es.addEventListener('SYNCED', () => {
        // A fresh snapshot replaces what we had (runs deleted while disconnected go away).
        if (staging) live = staging;
        staging = null;
        fails = 0;
        setSynced(true);
        setError(null);
        flush();
      });
      es.onerror = () => {
        if (!es || es.readyState !== EventSource.CLOSED) return; // the browser reconnects
        es.close();
        staging = null;
        // Say why with the JSON answer of the same route, show that list, and retry.
        getJson<{ items: RunSummary[] }>(`${path}?limit=500`).then(
          (l) => {
            live = new Map(l.items.map((r) => [keyOf(r), r]));
            flush();
            setSynced(true);
            setError('Live updates are interrupted; reconnecting…');
          },
          (e: ApiError) => setError(e.message),
        );
        // 5 s, then longer while it keeps failing (at most a minute).
        retry = window.setTimeout(connect, Math.min(60_000, 5000 * 2 ** fails++));
      };
    };
    connect();
    return () => {
      stopped = true;
      es?.close();
      clearTimeout(retry);
      clearTimeout(flushTimer);
    };
  }, [ns]);
  return { runs, synced, error };
}

type Range = '' | '1h' | '24h' | '7d' | 'custom';
const RANGE_MS: Record<string, number> = { '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3 };

export function RunsPage() {
  const { ns, perms } = useApp();
  const { runs, synced, error: streamError } = useLiveRuns(ns);
  const [phase, setPhase] = useState('');
  const [workflow, setWorkflow] = useState('');
  const [who, setWho] = useState('');
  const [range, setRange] = useState<Range>('');
  const [since, setSince] = useState('');
  const [until, setUntil] = useState('');
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<preact.ComponentChildren>(null);
  const [busy, setBusy] = useState(false);
  const [format, setFormat] = useState<'json' | 'csv'>('json');
  const [dialog, setDialog] = useState(false);

  const all = useMemo(
    () =>
      [...runs.values()].sort(
        (a, b) => (b.createdAt ?? '').localeCompare(a.createdAt ?? '') || a.name.localeCompare(b.name),
      ),
    [runs],
  );
  const workflows = useMemo(() => [...new Set(all.map((r) => r.workflow))].sort(), [all]);
  const triggerers = useMemo(
    () => [...new Set(all.map((r) => r.triggeredBy).filter((t): t is string => !!t))].sort(),
    [all],
  );

  const shown = useMemo(() => {
    let from = -Infinity;
    let to = Infinity;
    if (range && range !== 'custom') from = Date.now() - RANGE_MS[range];
    if (range === 'custom') {
      if (since) from = Date.parse(since);
      if (until) to = Date.parse(until);
    }
    return all.filter((r) => {
      if (phase && r.phase !== phase) return false;
      if (workflow && r.workflow !== workflow) return false;
      if (who && r.triggeredBy !== who) return false;
      if (from !== -Infinity || to !== Infinity) {
        const t = Date.parse(r.createdAt ?? r.startedAt ?? '');
        if (!(t >= from && t <= to)) return false;
      }
      return true;
    });
  }, [all, phase, workflow, who, range, since, until]);

  const active = shown.filter((r) => isActive(r.phase));
  const done = shown.filter((r) => !isActive(r.phase));
  // Runs that went away are no longer selected.
  const chosen = [...selected].filter((k) => runs.has(k)).map((k) => runs.get(k)!);
  const refs = chosen.map(({ namespace, name }) => ({ namespace, name }));
  const none = chosen.length ? null : 'select runs first';

  const toggle = (k: string, on: boolean) => {
    const s = new Set(selected);
    if (on) s.add(k);
    else s.delete(k);
    setSelected(s);
  };
  const setMany = (keys: string[], on: boolean) => {
    const s = new Set(selected);
    keys.forEach((k) => (on ? s.add(k) : s.delete(k)));
    setSelected(s);
  };

  const bulk = async (what: string, f: () => Promise<BulkResult[] | void>) => {
    setBusy(true);
    setError(null);
    setNotice(null);
    try {
      const res = await f();
      const bad = res ? failures(res) : null;
      if (bad) setError(`${what}: ${bad}`);
      else setNotice(`${what}: ${chosen.length} run${chosen.length === 1 ? '' : 's'} done.`);
    } catch (e) {
      setError(`${what}: ${(e as ApiError).message}`);
    } finally {
      setBusy(false);
    }
  };
  const stop = () =>
    bulk('Stop', async () => (await postJson<{ items: BulkResult[] }>('/api/v1/workflowruns:stop', { runs: refs })).items);
  const del = () =>
    bulk('Delete', async () => {
      const r = (await postJson<{ items: BulkResult[] }>('/api/v1/workflowruns:delete', { runs: refs })).items;
      setSelected(new Set());
      return r;
    });
  const retry = () =>
    bulk('Retry', () => eachRun(refs, (r) => postJson(`${runPath(r.namespace, r.name)}/retry`, {})));
  const exp = () =>
    bulk('Export', async () => {
      const r = await call('POST', '/api/v1/workflowruns:export', { runs: refs, format });
      await download(r, `devset-runs.${format}`);
    });
  const unfinished = chosen.some((r) => isActive(r.phase)) ? 'Retry needs finished runs only' : null;
  const finished = chosen.every((r) => !isActive(r.phase)) && chosen.length ? 'the selected runs have ended' : null;

  return (
    <div class="runs">
      <div class="pagehead">
        <h1>Runs</h1>
        <ActionButton
          label="New Run"
          kind="primary"
          perm={ns === ALL ? undefined : perms.create}
          onClick={() => setDialog(true)}
        />
      </div>
      {dialog && (
        <NewRunDialog
          onClose={() => setDialog(false)}
          onStarted={(r) => {
            setDialog(false);
            setNotice(
              <>
                Started <Link href={`/runs/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.name)}`}>{r.name}</Link>.
              </>,
            );
          }}
        />
      )}
      <Alert error={streamError} />
      <Alert error={error} onClose={() => setError(null)} />
      {notice && <Notice>{notice}</Notice>}

      <form class="filters" role="search" aria-label="Filter runs" onSubmit={(e) => e.preventDefault()}>
        <label>
          Phase
          <select value={phase} onChange={(e) => setPhase(e.currentTarget.value)}>
            <option value="">All</option>
            {[...ACTIVE_PHASES, ...DONE_PHASES].map((p) => (
              <option value={p}>{p}</option>
            ))}
          </select>
        </label>
        <Choice label="Workflow" any="All" value={workflow} set={setWorkflow} options={workflows} />
        <Choice label="Triggered by" any="Anyone" value={who} set={setWho} options={triggerers} />
        <label>
          Time range
          <select value={range} onChange={(e) => setRange(e.currentTarget.value as Range)}>
            <option value="">Any time</option>
            <option value="1h">Last hour</option>
            <option value="24h">Last 24 hours</option>
            <option value="7d">Last 7 days</option>
            <option value="custom">Between…</option>
          </select>
        </label>
        {range === 'custom' && (
          <>
            <When label="Since" value={since} set={setSince} />
            <When label="Until" value={until} set={setUntil} />
          </>
        )}
      </form>

      <div class="bulk" role="toolbar" aria-label="Selected runs">
        <span class="muted">{chosen.length} selected</span>
        <ActionButton label="Stop" perm={perms.stop} why={none || finished} busy={busy} onClick={stop} />
        <ActionButton label="Retry" perm={perms.create} why={none || unfinished} busy={busy} onClick={retry} />
        <ActionButton label="Delete" kind="danger" perm={perms.delete} why={none} busy={busy} onClick={del} />
        <ActionButton label="Export" perm={perms.export} why={none} busy={busy} onClick={exp} />
        <label class="inline">
          Format
          <select value={format} onChange={(e) => setFormat(e.currentTarget.value as 'json' | 'csv')}>
            <option value="json">JSON</option>
            <option value="csv">CSV</option>
          </select>
        </label>
        {chosen.length > 0 && (
          <button type="button" class="link" onClick={() => setSelected(new Set())}>
            Clear selection
          </button>
        )}
      </div>

      {!synced && !streamError ? (
        <p class="loading">Loading runs…</p>
      ) : (
        <>
          <Grid title="Active Runs" id="active" runs={active} all={ns === ALL} selected={selected} toggle={toggle} setMany={setMany} />
          <Grid title="Completed Runs" id="completed" runs={done} all={ns === ALL} selected={selected} toggle={toggle} setMany={setMany} />
        </>
      )}
    </div>
  );
}

function Grid(props: {
  title: string;
  id: string;
  runs: RunSummary[];
  all: boolean;
  selected: Set<string>;
  toggle: (k: string, on: boolean) => void;
  setMany: (k: string[], on: boolean) => void;
}) {
  const [limit, setLimit] = useState(SHOWN);
  const { runs, selected } = props;
  const rows = runs.slice(0, limit);
  const keys = runs.map(keyOf);
  const allOn = keys.length > 0 && keys.every((k) => selected.has(k));
  return (
    <section class="grid" aria-labelledby={`h-${props.id}`}>
      <div class="gridhead">
        <h2 id={`h-${props.id}`}>{props.title}</h2>
        <span class="count">{runs.length}</span>
      </div>
      {runs.length === 0 ? (
        <p class="empty">No runs.</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th class="check">
                <input
                  type="checkbox"
                  aria-label={`Select all ${props.title}`}
                  checked={allOn}
                  onChange={(e) => props.setMany(keys, e.currentTarget.checked)}
                />
              </th>
              <th>Run</th>
              <th>Workflow</th>
              <th>Connector</th>
              <th>Phase</th>
              <th>Progress</th>
              <th>Created</th>
              <th>Triggered by</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => {
              const k = keyOf(r);
              return (
                <tr key={k} data-run={k} data-phase={r.phase} class={selected.has(k) ? 'sel' : ''}>
                  <td class="check">
                    <input
                      type="checkbox"
                      aria-label={`Select ${k}`}
                      checked={selected.has(k)}
                      onChange={(e) => props.toggle(k, e.currentTarget.checked)}
                    />
                  </td>
                  <td>
                    <Link href={`/runs/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.name)}`}>
                      {props.all ? k : r.name}
                    </Link>
                    {r.stop && isActive(r.phase) && <span class="muted"> (stop asked)</span>}
                  </td>
                  <td>{r.workflow}</td>
                  <td>{r.connector}</td>
                  <td>
                    <Phase phase={r.phase} />
                    {r.reason && r.phase === 'Failed' && <div class="muted small">{r.reason}</div>}
                  </td>
                  <td>
                    <Progress value={r.progress} />
                  </td>
                  <td>
                    <Time at={r.createdAt} />
                  </td>
                  <td>{r.triggeredBy ?? <span class="muted">—</span>}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {runs.length > limit && (
        <button type="button" class="link" onClick={() => setLimit(runs.length)}>
          Show all {runs.length}
        </button>
      )}
    </section>
  );
}

/** "2/5" as a bar and its text. */
export function Progress({ value }: { value?: string }) {
  if (!value) return <span class="muted">—</span>;
  const [d, t] = value.split('/').map(Number);
  const pct = t > 0 ? Math.round((100 * d) / t) : 0;
  return (
    <span class="progress" title={`${value} stages done`}>
      <span class="bar" aria-hidden="true">
        <span style={{ width: `${pct}%` }} />
      </span>
      {value}
    </span>
  );
}

function Choice(props: { label: string; any: string; value: string; set: (v: string) => void; options: string[] }) {
  return (
    <label>
      {props.label}
      <select value={props.value} onChange={(e) => props.set(e.currentTarget.value)}>
        <option value="">{props.any}</option>
        {props.options.map((o) => (
          <option value={o}>{o}</option>
        ))}
      </select>
    </label>
  );
}

function When(props: { label: string; value: string; set: (v: string) => void }) {
  return (
    <label>
      {props.label}
      <input type="datetime-local" value={props.value} onInput={(e) => props.set(e.currentTarget.value)} />
    </label>
  );
}
