// The New Run dialog: Workflow, Connector and a form generated from the workflow's params,
// validated by type and required before `POST /api/v1/trigger`.
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { getJson, nsPath, postJson, type ApiError, type Connector, type Param, type RunRef, type Workflow } from './api';
import { ALL, useApp } from './ctx';
import { Alert } from './ui';

type Value = string | boolean;

/** The param's value for the API, or an error naming what is wrong. */
export function parseParam(p: Param, v: Value | undefined): { value?: unknown; error?: string } {
  if (p.type === 'boolean') return v === undefined ? (p.required ? { error: `${p.name} is required` } : {}) : { value: !!v };
  const s = typeof v === 'string' ? v.trim() : '';
  if (s === '') return p.required && p.default === undefined ? { error: `${p.name} is required` } : {};
  if (p.type === 'integer') {
    if (!/^[+-]?\d+$/.test(s) || !Number.isSafeInteger(Number(s))) return { error: `${p.name} must be a whole number` };
    return { value: Number(s) };
  }
  if (p.type === 'number') {
    const n = Number(s);
    if (!isFinite(n)) return { error: `${p.name} must be a number` };
    return { value: n };
  }
  return { value: typeof v === 'string' ? v : String(v) };
}

const initial = (p: Param): Value | undefined =>
  p.default === undefined || p.default === null
    ? undefined
    : p.type === 'boolean'
      ? !!p.default
      : typeof p.default === 'string'
        ? p.default
        : JSON.stringify(p.default);

export function NewRunDialog({ onClose, onStarted }: { onClose: () => void; onStarted: (r: RunRef) => void }) {
  const app = useApp();
  const ref = useRef<HTMLDialogElement>(null);
  const [ns, setNs] = useState(app.ns === ALL ? app.namespaces[0] ?? 'default' : app.ns);
  const [workflows, setWorkflows] = useState<Workflow[] | null>(null);
  const [connectors, setConnectors] = useState<Connector[] | null>(null);
  const [workflow, setWorkflow] = useState('');
  const [connector, setConnector] = useState('');
  const [values, setValues] = useState<Record<string, Value | undefined>>({});
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    const back = document.activeElement as HTMLElement | null;
    ref.current?.showModal();
    ref.current?.querySelector<HTMLElement>('#nr-workflow')?.focus();
    return () => back?.focus?.();
  }, []);

  useEffect(() => {
    setWorkflows(null);
    setConnectors(null);
    // Each list, and a choice still in it (else its first item).
    const catalog = <T extends { name: string }>(
      what: string,
      setList: (l: T[]) => void,
      choose: (f: (cur: string) => string) => void,
    ) =>
      getJson<{ items: T[] }>(`${nsPath(ns)}/${what}`).then(
        (l) => {
          setList(l.items);
          choose((cur) => (l.items.some((x) => x.name === cur) ? cur : l.items[0]?.name ?? ''));
        },
        (e: ApiError) => {
          setList([]);
          setError(e.message);
        },
      );
    void catalog<Workflow>('workflows', setWorkflows, setWorkflow);
    void catalog<Connector>('brokerconnectors', setConnectors, setConnector);
  }, [ns]);

  const wf = useMemo(() => workflows?.find((w) => w.name === workflow), [workflows, workflow]);
  useEffect(() => {
    const v: Record<string, Value | undefined> = {};
    wf?.params.forEach((p) => (v[p.name] = initial(p)));
    setValues(v);
    setErrors({});
  }, [wf]);

  const start = async (e: Event) => {
    e.preventDefault();
    setError(null);
    const errs: Record<string, string> = {};
    const params: Record<string, unknown> = {};
    if (!workflow.trim()) errs['Workflow'] = 'Workflow is required';
    if (!connector.trim()) errs['Connector'] = 'Connector is required';
    for (const p of wf?.params ?? []) {
      const r = parseParam(p, values[p.name]);
      if (r.error) errs[p.name] = r.error;
      else if (r.value !== undefined) params[p.name] = r.value;
    }
    setErrors(errs);
    const first = Object.keys(errs)[0];
    if (first) {
      ref.current?.querySelector<HTMLElement>(`[data-field="${CSS.escape(first)}"]`)?.focus();
      return;
    }
    setBusy(true);
    try {
      const r = await postJson<RunRef>('/api/v1/trigger', { namespace: ns, workflow: workflow.trim(), connector: connector.trim(), params });
      onStarted({ namespace: r.namespace ?? ns, name: r.name });
    } catch (err) {
      setError((err as ApiError).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <dialog ref={ref} class="dialog" aria-labelledby="newrun-title" onClose={onClose} onCancel={onClose}>
      <form onSubmit={start} noValidate>
        <h2 id="newrun-title">New Run</h2>
        {app.ns === ALL && (
          <div class="field">
            <label for="nr-ns">Namespace</label>
            <select id="nr-ns" value={ns} onChange={(e) => setNs(e.currentTarget.value)}>
              {app.namespaces.map((n) => (
                <option value={n}>{n}</option>
              ))}
            </select>
          </div>
        )}
        <CatalogField
          label="Workflow"
          items={workflows?.map((w) => ({ name: w.name, text: w.name })) ?? null}
          value={workflow}
          set={setWorkflow}
          error={errors['Workflow']}
          hint={wf?.description}
        />
        <CatalogField
          label="Connector"
          items={connectors?.map((c) => ({ name: c.name, text: `${c.name} (${c.type})` })) ?? null}
          value={connector}
          set={setConnector}
          error={errors['Connector']}
        />
        {wf && wf.params.length > 0 && (
          <fieldset>
            <legend>Parameters</legend>
            {wf.params.map((p) => (
              <ParamField
                key={`${wf.name}/${p.name}`}
                p={p}
                value={values[p.name]}
                error={errors[p.name]}
                onChange={(v) => {
                  setValues({ ...values, [p.name]: v });
                  // A field marked wrong is checked again as it is corrected.
                  if (errors[p.name]) {
                    const { [p.name]: _, ...rest } = errors;
                    const again = parseParam(p, v).error;
                    setErrors(again ? { ...rest, [p.name]: again } : rest);
                  }
                }}
              />
            ))}
          </fieldset>
        )}
        <Alert error={error} />
        <div class="buttons">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy}>
            Start
          </button>
        </div>
      </form>
    </dialog>
  );
}

function ParamField({ p, value, error, onChange }: { p: Param; value?: Value; error?: string; onChange: (v: Value) => void }) {
  const id = `param-${p.name}`;
  const described = [p.description && `${id}-desc`, error && `err-${p.name}`].filter(Boolean).join(' ') || undefined;
  const common = {
    id,
    name: p.name,
    'data-field': p.name,
    'aria-invalid': error ? true : undefined,
    'aria-describedby': described,
    'aria-required': p.required && p.default === undefined ? true : undefined,
  };
  return (
    <div class={`field${p.type === 'boolean' ? ' checkbox' : ''}`}>
      {p.type === 'boolean' ? (
        <>
          <input type="checkbox" {...common} checked={!!value} onChange={(e) => onChange(e.currentTarget.checked)} />
          <label for={id}>{p.name}</label>
        </>
      ) : (
        <>
          <label for={id}>{p.name}</label>
          <input
            {...common}
            type="text"
            inputMode={p.type === 'integer' ? 'numeric' : p.type === 'number' ? 'decimal' : undefined}
            value={typeof value === 'string' ? value : ''}
            onInput={(e) => onChange(e.currentTarget.value)}
          />
        </>
      )}
      <span class="hint">
        {p.type}
        {p.required && p.default === undefined ? ', required' : ''}
        {p.default !== undefined ? `, default ${JSON.stringify(p.default)}` : ''}
      </span>
      {p.description && (
        <span class="hint" id={`${id}-desc`}>
          {p.description}
        </span>
      )}
      {error && (
        <span class="field-error" id={`err-${p.name}`}>
          {error}
        </span>
      )}
    </div>
  );
}

/** A select of what the namespace has (a text field when the list cannot be read). */
function CatalogField(props: {
  label: string;
  items: { name: string; text: string }[] | null;
  value: string;
  set: (v: string) => void;
  error?: string;
  hint?: string;
}) {
  const id = `nr-${props.label.toLowerCase()}`;
  const attrs = {
    id,
    'data-field': props.label,
    value: props.value,
    'aria-invalid': props.error ? true : undefined,
    'aria-describedby': props.error ? `err-${props.label}` : undefined,
  };
  return (
    <div class="field">
      <label for={id}>{props.label}</label>
      {props.items === null || props.items.length > 0 ? (
        <select {...attrs} onChange={(e) => props.set(e.currentTarget.value)}>
          {props.items === null && <option value="">Loading…</option>}
          {(props.items ?? []).map((i) => (
            <option value={i.name}>{i.text}</option>
          ))}
        </select>
      ) : (
        <input {...attrs} placeholder={`${props.label.toLowerCase()} name`} onInput={(e) => props.set(e.currentTarget.value)} />
      )}
      {props.hint && <span class="hint">{props.hint}</span>}
      {props.error && (
        <span class="field-error" id={`err-${props.label}`}>
          {props.error}
        </span>
      )}
    </div>
  );
}
