// The HTTP API the page speaks (docs/api-reference.md, docs/web.md): types and fetch helpers.

export type RunPhase =
  | 'Pending'
  | 'Running'
  | 'Stopping'
  | 'WaitingForApproval'
  | 'Stopped'
  | 'Completed'
  | 'Failed';

export const ACTIVE_PHASES: RunPhase[] = ['Pending', 'Running', 'Stopping', 'WaitingForApproval'];
export const DONE_PHASES: RunPhase[] = ['Completed', 'Failed', 'Stopped'];
export const isActive = (p: string) => (ACTIVE_PHASES as string[]).includes(p);

export interface ApprovalRecord {
  decision: 'Approved' | 'Rejected';
  user: string;
  comment?: string;
  time?: string;
}

export interface StageStatus {
  name: string;
  phase: string;
  reason?: string;
  startedAt?: string;
  completedAt?: string;
  attempts?: number;
  published?: number;
  received?: number;
  outputs?: Record<string, string>;
  approval?: ApprovalRecord;
  message?: string;
}

export interface LogSummary {
  lastSeq: number;
  storedMessageEvents: number;
  droppedMessageEvents: number;
  expired: boolean;
}

export interface RunSummary {
  namespace: string;
  name: string;
  uid?: string;
  resourceVersion?: string;
  workflow: string;
  connector: string;
  phase: RunPhase;
  reason?: string;
  message?: string;
  progress?: string;
  messagesPublished?: number;
  triggeredBy?: string;
  stop: boolean;
  createdAt?: string;
  startedAt?: string;
  completedAt?: string;
  stages: StageStatus[];
  events?: LogSummary;
}

export interface RunEvent {
  seq: number;
  time: string;
  type: string;
  namespace: string;
  run: string;
  phase?: string;
  stage?: string;
  attempt?: number;
  reason?: string;
  message?: string;
  user?: string;
  outputs?: Record<string, string>;
  target?: Record<string, unknown>;
  sequence?: number;
  partition?: number;
  offset?: number;
  deliveryTag?: number;
  key?: string;
  headers?: Record<string, string>;
  payload?: string;
  payloadBytes?: number;
  payloadTruncated?: boolean;
}

export interface EventPage {
  items: RunEvent[];
  next: number;
  more: boolean;
  complete: boolean;
}

export interface Param {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean';
  default?: unknown;
  required: boolean;
  description?: string;
}

export interface Workflow {
  name: string;
  description?: string;
  params: Param[];
  stages: { name: string; kind: string; dependsOn: string[] }[];
}

export interface Connector {
  name: string;
  type: string;
}

export interface Schedule {
  namespace: string;
  name: string;
  schedule: string;
  timeZone: string;
  suspend: boolean;
  concurrencyPolicy: string;
  workflow: string;
  connector: string;
  nextScheduleTime?: string;
  lastScheduleTime?: string;
  lastRunName?: string;
  active: string[];
  ready?: { status: string; reason: string; message: string };
}

export interface Session {
  user: string;
  groups: string[];
  auth: 'kubernetes' | 'none';
}

export interface Allowed {
  allowed: boolean;
  reason?: string;
}

export type Action = 'create' | 'stop' | 'delete' | 'approve' | 'export' | 'fire' | 'suspend';
export type Permissions = Partial<Record<Action, Allowed>>;

export interface BulkResult {
  namespace: string;
  name: string;
  status: number;
  reason?: string;
  message?: string;
}

export interface RunRef {
  namespace: string;
  name: string;
}

/** An API answer that was not a success: the message of its Kubernetes `Status` body. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Called when the API answers 401: the page shows the sign-in. */
let onUnauthorized: () => void = () => {};
export const setOnUnauthorized = (f: () => void) => {
  onUnauthorized = f;
};

const enc = encodeURIComponent;
export const nsPath = (ns: string) => `/api/v1/namespaces/${enc(ns)}`;
export const runPath = (ns: string, name: string) => `${nsPath(ns)}/workflowruns/${enc(name)}`;
/** The run list (JSON or SSE) of one namespace, or of all when `ns` is empty. */
export const runsPath = (ns: string) => (ns ? `${nsPath(ns)}/workflowruns` : '/api/v1/workflowruns');

export async function errorOf(r: Response): Promise<ApiError> {
  let msg = `${r.status} ${r.statusText}`;
  try {
    const text = await r.text();
    try {
      const body = JSON.parse(text);
      if (body && typeof body.message === 'string') msg = body.message;
    } catch {
      if (text.trim()) msg = `${msg}: ${text.trim().slice(0, 300)}`;
    }
  } catch {
    /* keep the status line */
  }
  return new ApiError(r.status, msg);
}

/** Sends a request to the API; POST/DELETE carry the CSRF header. Throws ApiError. */
export async function call(
  method: string,
  path: string,
  body?: unknown,
  opts: { quiet401?: boolean; signal?: AbortSignal } = {},
): Promise<Response> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers['X-Devset-Csrf'] = '1';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r: Response;
  try {
    r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      signal: opts.signal,
    });
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    throw new ApiError(0, `the API cannot be reached (${(e as Error).message})`);
  }
  if (!r.ok) {
    const err = await errorOf(r);
    if (r.status === 401 && !opts.quiet401) onUnauthorized();
    throw err;
  }
  return r;
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  return (await call('GET', path, undefined, { signal })).json() as Promise<T>;
}

export async function postJson<T>(path: string, body?: unknown): Promise<T> {
  const r = await call('POST', path, body ?? {});
  const text = await r.text();
  return (text ? JSON.parse(text) : {}) as T;
}

/** Saves a response body as a file (export). */
export async function download(r: Response, fallbackName: string) {
  const blob = await r.blob();
  const cd = r.headers.get('Content-Disposition') ?? '';
  const m = /filename="?([^";]+)"?/.exec(cd);
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = m ? m[1] : fallbackName;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

/** Runs several runs' single-run requests (retry) and reports them as the bulk routes do. */
export async function eachRun(
  runs: RunRef[],
  f: (r: RunRef) => Promise<unknown>,
): Promise<BulkResult[]> {
  return Promise.all(
    runs.map(async (r) => {
      try {
        await f(r);
        return { ...r, status: 201 };
      } catch (e) {
        const err = e as ApiError;
        return { ...r, status: err.status ?? 0, message: err.message };
      }
    }),
  );
}
