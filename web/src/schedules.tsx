// Schedules: each WorkflowSchedule's next time, last run, Suspend/Resume and Fire now.
import { useCallback, useEffect, useState } from 'preact/hooks';
import { getJson, nsPath, postJson, type ApiError, type Schedule } from './api';
import { ALL, useApp } from './ctx';
import { ActionButton, Alert, Link, Notice, Time } from './ui';

const REFRESH_MS = 15_000;

export function SchedulesPage() {
  const { ns, namespaces, perms } = useApp();
  const [items, setItems] = useState<Schedule[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<preact.ComponentChildren>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const spaces = ns === ALL ? namespaces : [ns];

  const load = useCallback(async () => {
    try {
      const lists = await Promise.all(
        spaces.map((n) => getJson<{ items: Schedule[] }>(`${nsPath(n)}/workflowschedules`)),
      );
      setItems(lists.flatMap((l) => l.items).sort((a, b) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name)));
    } catch (e) {
      setItems((i) => i ?? []);
      setError((e as ApiError).message);
    }
  }, [spaces.join(',')]);

  useEffect(() => {
    void load();
    const t = setInterval(load, REFRESH_MS);
    return () => clearInterval(t);
  }, [load]);

  const act = async (key: string, what: string, f: () => Promise<void>) => {
    setBusy(key);
    setError(null);
    setNotice(null);
    try {
      await f();
      await load();
    } catch (e) {
      setError(`${what}: ${(e as ApiError).message}`);
    } finally {
      setBusy(null);
    }
  };

  const base = (s: Schedule) => `${nsPath(s.namespace)}/workflowschedules/${encodeURIComponent(s.name)}`;
  const runLink = (s: Schedule, run: string) => `/runs/${encodeURIComponent(s.namespace)}/${encodeURIComponent(run)}`;

  return (
    <div class="schedules">
      <div class="pagehead">
        <h1>Schedules</h1>
        <button type="button" onClick={() => void load()}>
          Refresh
        </button>
      </div>
      <Alert error={error} onClose={() => setError(null)} />
      {notice && <Notice>{notice}</Notice>}
      {[perms.suspend, perms.fire].some((a) => a && !a.allowed) && (
        <p class="denied-note">
          {perms.suspend && !perms.suspend.allowed && <>Suspend / Resume: {perms.suspend.reason}. </>}
          {perms.fire && !perms.fire.allowed && <>Fire now: {perms.fire.reason}.</>}
        </p>
      )}
      {items === null ? (
        <p class="loading">Loading schedules…</p>
      ) : items.length === 0 ? (
        <p class="empty">No schedules{ns === ALL ? '' : ` in ${ns}`}.</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Schedule</th>
              <th>When</th>
              <th>Workflow</th>
              <th>Connector</th>
              <th>Next time</th>
              <th>Last run</th>
              <th>Active</th>
              <th>State</th>
              <th>
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {items.map((s) => {
              const k = `${s.namespace}/${s.name}`;
              return (
                <tr key={k} data-schedule={k} data-suspended={String(s.suspend)}>
                  <td>{ns === ALL ? k : s.name}</td>
                  <td>
                    <code>{s.schedule}</code> <span class="muted small">{s.timeZone}</span>
                  </td>
                  <td>{s.workflow}</td>
                  <td>{s.connector}</td>
                  <td>{s.suspend ? <span class="muted">suspended</span> : <Time at={s.nextScheduleTime} />}</td>
                  <td>
                    {s.lastRunName ? <Link href={runLink(s, s.lastRunName)}>{s.lastRunName}</Link> : <span class="muted">—</span>}
                    {s.lastScheduleTime && (
                      <div class="small muted">
                        <Time at={s.lastScheduleTime} />
                      </div>
                    )}
                  </td>
                  <td>
                    {s.active.length
                      ? s.active.map((r) => (
                          <div>
                            <Link href={runLink(s, r)}>{r}</Link>
                          </div>
                        ))
                      : <span class="muted">—</span>}
                  </td>
                  <td>
                    {s.ready ? (
                      <span class={s.ready.status === 'True' ? 'ok' : 'bad'} title={s.ready.message}>
                        {s.ready.status === 'True' ? 'Ready' : s.ready.reason || 'Not ready'}
                      </span>
                    ) : (
                      <span class="muted">—</span>
                    )}
                  </td>
                  <td class="actions">
                    <ActionButton
                      label={s.suspend ? 'Resume' : 'Suspend'}
                      perm={perms.suspend}
                      quiet
                      busy={busy === k}
                      onClick={() =>
                        act(k, s.suspend ? 'Resume' : 'Suspend', async () => {
                          await postJson(`${base(s)}/${s.suspend ? 'resume' : 'suspend'}`);
                          setNotice(`${s.name} ${s.suspend ? 'resumed' : 'suspended'}.`);
                        })
                      }
                    />
                    <ActionButton
                      label="Fire now"
                      kind="primary"
                      perm={perms.fire}
                      quiet
                      busy={busy === k}
                      onClick={() =>
                        act(k, 'Fire now', async () => {
                          const r = await postJson<{ metadata?: { name?: string } }>(`${base(s)}/fire`);
                          const n = r.metadata?.name;
                          setNotice(
                            n ? (
                              <>
                                Started <Link href={runLink(s, n)}>{n}</Link>.
                              </>
                            ) : (
                              'Started.'
                            ),
                          );
                        })
                      }
                    />
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </div>
  );
}
