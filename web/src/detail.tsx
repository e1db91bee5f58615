// Run detail: phase, progress, times, who triggered it; the stage timeline with each stage's
// result, outputs and approval; Stop / Approve / Reject / Retry / Re-run from here / Export; the
// live event log.
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import {
  call,
  download,
  getJson,
  isActive,
  postJson,
  runPath,
  runsPath,
  type ApiError,
  type RunSummary,
  type StageStatus,
} from './api';
import { useApp } from './ctx';
import { EventLog } from './eventlog';
import { navigate, withNs } from './router';
import { Progress } from './runs';
import { ActionButton, Alert, Link, Notice, Phase, Time, duration, fmtTime } from './ui';

interface K8sRun {
  metadata?: { name?: string; namespace?: string };
}

/** Of the summary shown and one just read (from the run stream or a GET, which may arrive out
 * of order), the newer by resourceVersion, keeping the log's figures (`events`, which only the
 * GET has) when the newer lacks them. */
function newest(shown: RunSummary | null, got: RunSummary): RunSummary {
  const version = (r: RunSummary) => (r.resourceVersion ? BigInt(r.resourceVersion) : null);
  const a = shown && version(shown);
  const b = version(got);
  if (shown && a !== null && b !== null && b < a) {
    return got.events ? { ...shown, events: got.events } : shown;
  }
  return { ...got, events: got.events ?? shown?.events };
}

export function RunDetail({ ns, name }: { ns: string; name: string }) {
  const { perms } = useApp();
  const [run, setRun] = useState<RunSummary | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [, tick] = useState(0);
  const path = runPath(ns, name);
  const timer = useRef(0);

  const load = useCallback(async () => {
    try {
      const r = await getJson<RunSummary>(path);
      setRun((prev) => newest(prev, r));
      setError((e) => (e && e.startsWith('the API cannot be reached') ? null : e));
    } catch (e) {
      setError((e as ApiError).message);
      // The API may be restarting: try again shortly.
      if ((e as ApiError).status === 0 || (e as ApiError).status >= 500) {
        clearTimeout(timer.current);
        timer.current = window.setTimeout(load, 3000);
      }
    }
  }, [path]);
  useEffect(() => {
    void load();
    return () => clearTimeout(timer.current);
  }, [load]);

  // The run's status, live from the API's watch (`…/workflowruns?name=RUN` as a stream): every
  // change of phase, stage or progress, whatever the log has said so far. The summary of the
  // stream lacks the log's figures (`events`): those stay from the last full load.
  useEffect(() => {
    let es: EventSource | null = null;
    let retry = 0;
    let stopped = false;
    const update = (ev: MessageEvent) => {
      const r = JSON.parse(ev.data) as RunSummary;
      setRun((prev) => newest(prev, r));
    };
    const connect = () => {
      if (stopped) return;
      es = new EventSource(`${runsPath(ns)}?name=${encodeURIComponent(name)}`);
      es.addEventListener('ADDED', update);
      es.addEventListener('MODIFIED', update);
      es.onerror = () => {
        if (!es || es.readyState !== EventSource.CLOSED) return; // the browser reconnects
        es.close();
        retry = window.setTimeout(connect, 5000);
      };
    };
    connect();
    return () => {
      stopped = true;
      clearTimeout(retry);
      es?.close();
    };
  }, [ns, name]);

  // Lifecycle events of the log also reload the whole summary (debounced), with the log's figures.
  const onActivity = useCallback(() => {
    clearTimeout(timer.current);
    timer.current = window.setTimeout(load, 250);
  }, [load]);

  // Durations of running stages grow: redraw every second while the run is active.
  const active = run ? isActive(run.phase) : false;
  useEffect(() => {
    if (!active) return;
    const t = setInterval(() => tick((x) => x + 1), 1000);
    return () => clearInterval(t);
  }, [active]);

  const act = async (what: string, f: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    setNotice(null);
    try {
      await f();
    } catch (e) {
      setError(`${what}: ${(e as ApiError).message}`);
    } finally {
      setBusy(false);
    }
  };
  const goTo = (r: K8sRun) => {
    const n = r.metadata?.name;
    if (n) navigate(`/runs/${encodeURIComponent(r.metadata?.namespace ?? ns)}/${encodeURIComponent(n)}`);
  };
  const stop = () =>
    act('Stop', async () => {
      await postJson(`${path}/stop`);
      setNotice('Stop asked.');
      await load();
    });
  const retry = () => act('Retry', async () => goTo(await postJson<K8sRun>(`${path}/retry`, {})));
  const rerun = (stage: string) =>
    act('Re-run', async () => goTo(await postJson<K8sRun>(`${path}/rerun`, { fromStage: stage })));
  const exportRun = () =>
    act('Export', async () => {
      const r = await call('POST', '/api/v1/workflowruns:export', { runs: [{ namespace: ns, name }], format: 'json' });
      await download(r, `${name}.json`);
    });
  const decide = (stage: string, decision: 'approve' | 'reject', comment: string) =>
    act(decision === 'approve' ? 'Approve' : 'Reject', async () => {
      await postJson(`${path}/stages/${encodeURIComponent(stage)}/${decision}`, comment ? { comment } : {});
      setNotice(`${decision === 'approve' ? 'Approved' : 'Rejected'} ${stage}.`);
      await load();
    });

  if (!run)
    return (
      <div class="detail">
        <p>
          <Link href={withNs('/runs', ns)}>← Runs</Link>
        </p>
        <Alert error={error} />
        {!error && <p class="loading">Loading {name}…</p>}
      </div>
    );

  const ended = !active;
  const waiting = run.stages.filter((s) => s.phase === 'WaitingForApproval');
  const end = run.completedAt ? Date.parse(run.completedAt) : Date.now();
  const begin = run.startedAt ? Date.parse(run.startedAt) : NaN;

  return (
    <div class="detail">
      <p class="crumbs">
        <Link href={withNs('/runs', ns)}>Runs</Link> / {ns} /
      </p>
      <div class="pagehead">
        <h1>{run.name}</h1>
        <Phase phase={run.phase} testid="run-phase" />
        <span class="spacer" />
        <ActionButton label="Stop" kind="danger" perm={perms.stop} busy={busy}
          why={ended ? 'the run has ended' : run.stop ? 'a stop is already asked' : null} onClick={stop} />
        <ActionButton label="Retry" perm={perms.create} busy={busy}
          why={active && 'the run has not finished'} onClick={retry} />
        <ActionButton label="Export" perm={perms.export} busy={busy} onClick={exportRun} />
      </div>
      <Alert error={error} onClose={() => setError(null)} />
      {notice && <Notice>{notice}</Notice>}
      {(run.reason || run.message) && (
        <p class={`reason ${run.phase === 'Failed' ? 'bad' : ''}`}>
          {run.reason && <strong>{run.reason}</strong>} {run.message}
        </p>
      )}
      <dl class="facts wide">
        <dt>Workflow</dt>
        <dd>{run.workflow}</dd>
        <dt>Connector</dt>
        <dd>{run.connector}</dd>
        <dt>Progress</dt>
        <dd><Progress value={run.progress} /></dd>
        <dt>Messages</dt>
        <dd>{run.messagesPublished ?? 0}</dd>
        <dt>Triggered by</dt>
        <dd>{run.triggeredBy ?? '—'}</dd>
        <dt>Created</dt>
        <dd><Time at={run.createdAt} /></dd>
        <dt>Started</dt>
        <dd title={fmtTime(run.startedAt)}><Time at={run.startedAt} /></dd>
        <dt>Completed</dt>
        <dd><Time at={run.completedAt} /></dd>
        <dt>Duration</dt>
        <dd>{isNaN(begin) ? '—' : duration(end - begin)}</dd>
      </dl>

      {waiting.map((s) => (
        <Approval key={s.name} stage={s} busy={busy} onDecide={decide} />
      ))}

      <section aria-labelledby="h-stages">
        <h2 id="h-stages">Stages</h2>
        <Timeline run={run} now={end} onRerun={rerun} busy={busy} />
      </section>

      <section aria-labelledby="h-events">
        <h2 id="h-events">Events</h2>
        {run.events?.expired ? (
          <p class="muted">This run's event log has expired.</p>
        ) : (
          <EventLog ns={ns} name={name} lastSeq={run.events?.lastSeq ?? 0} finished={ended} onActivity={onActivity} />
        )}
        {!!run.events?.droppedMessageEvents && (
          <p class="muted small">{run.events.droppedMessageEvents.toLocaleString()} message events beyond the cap were counted, not kept.</p>
        )}
      </section>
    </div>
  );
}

function Approval({ stage, busy, onDecide }: { stage: StageStatus; busy: boolean; onDecide: (s: string, d: 'approve' | 'reject', c: string) => void }) {
  const { perms } = useApp();
  const [comment, setComment] = useState('');
  const id = `comment-${stage.name}`;
  return (
    <section class="approval" aria-label={`Approval of ${stage.name}`}>
      <h2>Waiting for approval: {stage.name}</h2>
      {stage.message && <p>{stage.message}</p>}
      <label for={id}>Comment</label>
      <textarea id={id} rows={2} maxLength={1024} value={comment} onInput={(e) => setComment(e.currentTarget.value)} />
      <div class="buttons">
        <ActionButton label="Approve" kind="primary" perm={perms.approve} busy={busy} onClick={() => onDecide(stage.name, 'approve', comment)} />
        <ActionButton label="Reject" kind="danger" perm={perms.approve} quiet busy={busy} onClick={() => onDecide(stage.name, 'reject', comment)} />
      </div>
    </section>
  );
}

/**
 * Stages on one time axis (the run's start to its end, or now): each bar spans its stage's
 * start to end, so stages that ran in parallel stand side by side in time.
 */
function Timeline({ run, now, onRerun, busy }: { run: RunSummary; now: number; onRerun: (s: string) => void; busy: boolean }) {
  const { perms } = useApp();
  const starts = run.stages.map((s) => (s.startedAt ? Date.parse(s.startedAt) : NaN)).filter((t) => !isNaN(t));
  const t0 = run.startedAt ? Date.parse(run.startedAt) : starts.length ? Math.min(...starts) : now;
  const span = Math.max(1, now - t0);
  const notDone = isActive(run.phase) ? 'the run has not finished' : null;
  if (!run.stages.length) return <p class="muted">No stage has started yet.</p>;
  const denied = perms.create && !perms.create.allowed;
  return (
    <>
    {denied && <p class="denied-note">Re-run from here: {perms.create!.reason}</p>}
    <ol class="timeline">
      {run.stages.map((s) => {
        const a = s.startedAt ? Date.parse(s.startedAt) : NaN;
        const b = s.completedAt ? Date.parse(s.completedAt) : now;
        const left = isNaN(a) ? 0 : ((a - t0) / span) * 100;
        const width = isNaN(a) ? 0 : Math.max(0.6, ((b - a) / span) * 100);
        return (
          <li class="stage" data-stage={s.name} data-stage-phase={s.phase}>
            <div class="stage-row">
              <span class="stage-name">{s.name}</span>
              <span class="track" aria-hidden="true">
                {!isNaN(a) && <span class={`barfill phase-${s.phase}`} style={{ left: `${left}%`, width: `${Math.min(width, 100 - left)}%` }} />}
              </span>
              <Phase phase={s.phase} />
              <span class="dur">{isNaN(a) ? '' : duration(b - a)}</span>
            </div>
            <div class="stage-more">
              {s.reason && <span><strong>{s.reason}</strong></span>}
              {s.message && <span>{s.message}</span>}
              {!!s.attempts && s.attempts > 1 && <span>{s.attempts} attempts</span>}
              {s.published !== undefined && !s.outputs?.published && <span>{s.published} published</span>}
              {s.received !== undefined && !s.outputs?.received && <span>{s.received} received</span>}
              {s.approval && (
                <span class="approved">
                  {s.approval.decision} by {s.approval.user}
                  {s.approval.comment && <>: “{s.approval.comment}”</>}
                  {s.approval.time && <> · {fmtTime(s.approval.time)}</>}
                </span>
              )}
              <ActionButton label="Re-run from here" perm={perms.create} quiet busy={busy} why={notDone} onClick={() => onRerun(s.name)} />
            </div>
            {s.outputs && Object.keys(s.outputs).length > 0 && (
              <dl class="outputs" aria-label={`Outputs of ${s.name}`}>
                {Object.entries(s.outputs).map(([k, v]) => (
                  <>
                    <dt>{k}</dt>
                    <dd>{v}</dd>
                  </>
                ))}
              </dl>
            )}
          </li>
        );
      })}
    </ol>
    </>
  );
}
