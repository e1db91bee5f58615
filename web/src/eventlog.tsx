// A run's event log: a virtualized list (only the rows in view are in the DOM) over JSON pages
// fetched as the user scrolls (`?after=N&limit=500`, at most MAX_PAGES kept), followed live over
// SSE. Rows are keyed by sequence number, so an event is never shown twice; a row not yet loaded
// is fetched with its page, so none is skipped. The browser's EventSource resumes with
// Last-Event-ID; after a failure the page reconnects itself with `?after=LAST`.
import {
  Virtualizer,
  elementScroll,
  observeElementOffset,
  observeElementRect,
} from '@tanstack/virtual-core';
import { useEffect, useLayoutEffect, useReducer, useRef, useState } from 'preact/hooks';
import { getJson, runPath, type ApiError, type EventPage, type RunEvent } from './api';
import { Alert } from './ui';

const PAGE = 500;
const MAX_PAGES = 24;
const ROW_H = 28;
const PREVIEW = 160;
/** Event types the stream sends (`event:` = type); others are filled from the pages. */
const TYPES = [
  'run.phase',
  'stage.started',
  'stage.retrying',
  'stage.completed',
  'stage.failed',
  'stage.stopped',
  'stage.skipped',
  'stage.waiting',
  'stage.approved',
  'stage.rejected',
  'message.published',
  'message.received',
];
const TERMINAL = ['Completed', 'Failed', 'Stopped'];

/** A row keeps a short preview; the inspector fetches the whole event. */
function slim(e: RunEvent): RunEvent {
  const { headers, payload, ...rest } = e;
  return {
    ...rest,
    payload: payload && payload.length > PREVIEW ? payload.slice(0, PREVIEW) : payload,
    headers: headers ? ({ length: String(Object.keys(headers).length) } as Record<string, string>) : undefined,
  };
}

class LogCache {
  rows = new Map<number, RunEvent>();
  pages = new Map<number, { state: 'loading' | 'loaded'; at: number }>();
  count = 0;
  /** The highest seq the stream delivered (where to resume). */
  streamed = 0;

  add(e: RunEvent) {
    this.rows.set(e.seq, slim(e));
    if (e.seq > this.count) this.count = e.seq;
  }

  /** Where the user looks (a seq): trimming keeps the rows nearest to it. */
  center = 1;

  /**
   * Keeps at most MAX_PAGES pages of rows (fetched or streamed): beyond that, drops the rows
   * farthest from the view, down to three quarters (their pages are fetched again if needed).
   */
  trim() {
    if (this.rows.size <= MAX_PAGES * PAGE) return;
    const c = this.center;
    const far = [...this.rows.keys()].sort((a, b) => Math.abs(b - c) - Math.abs(a - c));
    for (const s of far.slice(0, this.rows.size - (MAX_PAGES * PAGE * 3) / 4)) {
      this.rows.delete(s);
      this.pages.delete(Math.floor((s - 1) / PAGE));
    }
  }
}

export interface LogProps {
  ns: string;
  name: string;
  /** The log's last seq when the page loaded (from the run summary). */
  lastSeq: number;
  /** The run has ended and its log is complete up to lastSeq. */
  finished: boolean;
  /** A lifecycle event arrived: the run's status changed. */
  onActivity: (e: RunEvent) => void;
}

export function EventLog({ ns, name, lastSeq, finished, onActivity }: LogProps) {
  const base = `${runPath(ns, name)}/events`;
  const cache = useRef(new LogCache()).current;
  const scrollRef = useRef<HTMLDivElement>(null);
  const [, rerender] = useReducer((x: number) => x + 1, 0);
  const [error, setError] = useState<string | null>(null);
  const [conn, setConn] = useState<'live' | 'reconnecting' | 'ended' | 'off'>('off');
  const [selected, setSelected] = useState<number | null>(null);
  const [follow, setFollow] = useState(!finished);
  const followRef = useRef(follow);
  followRef.current = follow;
  const activity = useRef(onActivity);
  activity.current = onActivity;

  if (lastSeq > cache.count) cache.count = lastSeq;

  // The virtualizer (TanStack virtual-core) keeps only the rows in view in the DOM.
  const vref = useRef<Virtualizer<HTMLDivElement, HTMLElement> | null>(null);
  const options = {
    count: cache.count,
    getScrollElement: () => scrollRef.current,
    estimateSize: () => ROW_H,
    overscan: 12,
    scrollToFn: elementScroll,
    observeElementRect,
    observeElementOffset,
    getItemKey: (i: number) => i + 1,
    onChange: () => rerender(0),
  };
  if (!vref.current) vref.current = new Virtualizer(options);
  const v = vref.current;
  v.setOptions({ ...v.options, ...options });
  useLayoutEffect(() => v._didMount(), []);
  useLayoutEffect(() => {
    v._willUpdate();
  });

  // Live: the stream from where the summary left off. It ends with the log's own terminal
  // `run.phase` event, not when the run's status says the run finished: the status can arrive
  // first, and the log's last events would then never be streamed.
  const finishedNow = useRef(finished);
  finishedNow.current = finished;
  useEffect(() => {
    if (!cache.streamed) cache.streamed = lastSeq;
    if (finishedNow.current && cache.streamed >= lastSeq) {
      setConn('ended');
      return;
    }
    let es: EventSource | null = null;
    let timer = 0;
    let flush = 0;
    let closed = false;
    const later = () => {
      if (!flush)
        flush = window.setTimeout(() => {
          flush = 0;
          cache.trim();
          rerender(0);
        }, 50);
    };
    const open = () => {
      if (closed) return;
      es = new EventSource(`${base}?after=${cache.streamed}`);
      es.onopen = () => {
        setConn('live');
        setError(null);
      };
      const onEvent = (m: MessageEvent) => {
        const e = JSON.parse(m.data) as RunEvent;
        cache.add(e);
        if (e.seq > cache.streamed) cache.streamed = e.seq;
        later();
        if (!e.type.startsWith('message.')) activity.current(e);
        if (e.type === 'run.phase' && e.phase && TERMINAL.includes(e.phase)) {
          closed = true;
          es?.close();
          setConn('ended');
        }
      };
      TYPES.forEach((t) => es!.addEventListener(t, onEvent as EventListener));
      es.onmessage = onEvent;
      es.onerror = () => {
        if (closed) return;
        setConn('reconnecting');
        if (es?.readyState === EventSource.CLOSED) {
          // The browser gave up (an error answer): resume ourselves after the last event.
          es.close();
          getJson(`${base}?after=${cache.streamed}&limit=1`).catch((e: ApiError) => setError(e.message));
          timer = window.setTimeout(open, 2000);
        }
      };
    };
    open();
    return () => {
      closed = true;
      es?.close();
      clearTimeout(timer);
      clearTimeout(flush);
    };
  }, [base]);

  // Pages: fetch the ones in view (a moment after scrolling settles), keep the cache bounded.
  const items = v.getVirtualItems();
  const first = items.length ? Math.floor(items[0].index / PAGE) : 0;
  const last = items.length ? Math.floor(items[items.length - 1].index / PAGE) : 0;
  if (items.length) cache.center = items[items.length >> 1].index + 1;
  useEffect(() => {
    if (!cache.count) return;
    const t = window.setTimeout(() => {
      const now = Date.now();
      for (let p = first; p <= last; p++) {
        const st = cache.pages.get(p);
        const end = Math.min((p + 1) * PAGE, cache.count);
        let missing = false;
        for (let s = p * PAGE + 1; s <= end && !missing; s++) missing = !cache.rows.has(s);
        if (!missing || st?.state === 'loading' || (st && now - st.at < 1500)) continue;
        cache.pages.set(p, { state: 'loading', at: now });
        getJson<EventPage>(`${base}?after=${p * PAGE}&limit=${PAGE}`).then(
          (page) => {
            page.items.forEach((e) => cache.add(e));
            cache.pages.set(p, { state: 'loaded', at: Date.now() });
            cache.trim();
            rerender(0);
          },
          (e: ApiError) => {
            cache.pages.delete(p);
            setError(e.message);
          },
        );
      }
    }, 60);
    return () => clearTimeout(t);
  });

  // Follow the tail while the user is at the bottom.
  useEffect(() => {
    if (follow && cache.count) v.scrollToIndex(cache.count - 1, { align: 'end' });
  }, [cache.count, follow]);

  const onScroll = () => {
    const el = scrollRef.current;
    if (!el) return;
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - ROW_H;
    if (atEnd !== followRef.current && !(finished && atEnd)) setFollow(atEnd);
  };

  const focusRow = (seq: number) => {
    if (seq < 1 || seq > cache.count) return;
    v.scrollToIndex(seq - 1, { align: 'auto' });
    requestAnimationFrame(() =>
      requestAnimationFrame(() => scrollRef.current?.querySelector<HTMLElement>(`[data-seq="${seq}"]`)?.focus()),
    );
  };
  const onKey = (e: KeyboardEvent) => {
    const seq = Number((e.target as HTMLElement).dataset?.seq);
    if (!seq) return;
    const to: Record<string, number> = {
      ArrowDown: seq + 1,
      ArrowUp: seq - 1,
      PageDown: seq + 20,
      PageUp: seq - 20,
      Home: 1,
      End: cache.count,
    };
    if (!(e.key in to)) return;
    e.preventDefault();
    focusRow(Math.max(1, Math.min(cache.count, to[e.key])));
  };

  return (
    <div class="log-wrap">
      <div class="log-pane">
        <div class="log-tools">
          <span class="muted">
            {cache.count.toLocaleString()} events ·{' '}
            <span class={`conn conn-${conn}`}>
              {conn === 'live' ? 'live' : conn === 'reconnecting' ? 'reconnecting…' : conn === 'ended' ? 'complete' : 'connecting…'}
            </span>
          </span>
          <button type="button" onClick={() => { setFollow(false); v.scrollToIndex(0, { align: 'start' }); }}>
            Oldest
          </button>
          <button type="button" onClick={() => { v.scrollToIndex(cache.count - 1, { align: 'end' }); if (!finished) setFollow(true); }}>
            Newest
          </button>
          {!finished && (
            <label class="inline">
              <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.currentTarget.checked)} /> Follow
            </label>
          )}
        </div>
        <Alert error={error} onClose={() => setError(null)} />
        <div class="log" ref={scrollRef} onScroll={onScroll} aria-label="Event log" role="list" onKeyDown={onKey}>
          <div class="log-inner" style={{ height: `${v.getTotalSize()}px` }}>
            {items.map((it) => {
              const seq = it.index + 1;
              const e = cache.rows.get(seq);
              return (
                <div role="listitem" key={seq} class="log-row" style={{ transform: `translateY(${it.start}px)` }}>
                  {e ? (
                    <button
                      type="button"
                      data-seq={seq}
                      class={`ev ${selected === seq ? 'on' : ''}`}
                      aria-pressed={selected === seq}
                      onClick={() => setSelected(seq)}
                    >
                      <span class="seq">{seq}</span>
                      <Row e={e} />
                    </button>
                  ) : (
                    <div class="ev pending" aria-busy="true">
                      <span class="seq">{seq}</span>
                      <span class="muted">loading…</span>
                    </div>
                  )}
                </div>
              );
            })}
          </div>
        </div>
      </div>
      {selected !== null && (
        <Inspector
          base={base}
          seq={selected}
          onClose={() => {
            setSelected(null);
            focusRow(selected);
          }}
        />
      )}
    </div>
  );
}

const clock = (t: string) => {
  const d = new Date(t);
  return `${d.toLocaleTimeString(undefined, { hour12: false })}.${String(d.getMilliseconds()).padStart(3, '0')}`;
};

function Row({ e }: { e: RunEvent }) {
  const kind = e.type.split('.')[0];
  let text = '';
  if (e.type === 'run.phase') text = [e.phase, e.reason !== e.phase && e.reason, e.message].filter(Boolean).join(' · ');
  else if (kind === 'message') text = [target(e), e.key && `key ${e.key}`, e.payload].filter(Boolean).join(' · ');
  else text = [e.attempt && e.attempt > 1 && `attempt ${e.attempt}`, e.reason, e.user, e.message].filter(Boolean).join(' · ');
  return (
    <>
      <span class="time">{clock(e.time)}</span>
      <span class={`type t-${kind} t-${e.type.replace('.', '-')}`}>{e.type}</span>
      <span class="st">{e.stage ?? ''}</span>
      <span class="text">{text}</span>
    </>
  );
}

function target(e: RunEvent): string {
  const t = e.target as Record<string, unknown> | undefined;
  if (!t) return '';
  return String(t.topic ?? t.queue ?? [t.exchange, t.routingKey].filter((x) => x !== undefined).join(' / '));
}

export function pretty(payload?: string): string {
  if (payload === undefined || payload === null) return '';
  try {
    return JSON.stringify(JSON.parse(payload), null, 2);
  } catch {
    return payload;
  }
}

/** The `Event` inspector: the whole event, payload and headers pretty-printed. */
function Inspector({ base, seq, onClose }: { base: string; seq: number; onClose: () => void }) {
  const [ev, setEv] = useState<RunEvent | null>(null);
  const [error, setError] = useState<string | null>(null);
  const ref = useRef<HTMLElement>(null);
  useEffect(() => {
    setEv(null);
    setError(null);
    const ctl = new AbortController();
    getJson<RunEvent>(`${base}/${seq}`, ctl.signal).then(setEv, (e: ApiError) => {
      if (e.name !== 'AbortError') setError(e.message);
    });
    return () => ctl.abort();
  }, [base, seq]);
  const { headers, payload, ...meta } = ev ?? ({} as RunEvent);
  return (
    <section
      class="inspector"
      role="region"
      aria-label="Event"
      ref={ref}
      onKeyDown={(e) => {
        if (e.key === 'Escape') onClose();
      }}
    >
      <div class="insp-head">
        <h3>
          Event {seq}
          {ev && <span class="muted"> · {ev.type}</span>}
        </h3>
        <button type="button" class="link" onClick={onClose} aria-label="Close event">
          ×
        </button>
      </div>
      <Alert error={error} />
      {!ev && !error && <p class="loading">Loading…</p>}
      {ev && (
        <>
          <dl class="facts">
            {Object.entries(meta).map(([k, val]) => (
              <>
                <dt>{k}</dt>
                <dd>{typeof val === 'object' ? JSON.stringify(val) : String(val)}</dd>
              </>
            ))}
          </dl>
          <h4>Headers</h4>
          <pre data-testid="event-headers">{JSON.stringify(headers ?? {}, null, 2)}</pre>
          <h4>
            Payload
            {ev.payloadTruncated && <span class="muted"> (cut at {payload?.length} of {ev.payloadBytes} bytes)</span>}
          </h4>
          <pre data-testid="event-payload">{pretty(payload)}</pre>
        </>
      )}
    </section>
  );
}
