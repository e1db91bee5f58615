// Small shared pieces: phase badges, permission-aware buttons, alerts, times.
import type { ComponentChildren } from 'preact';
import { useId } from 'preact/hooks';
import type { Allowed } from './api';
import { onLinkClick } from './router';

/** A phase as `kubectl get runs` prints it (the same word), with its colour. */
export function Phase({ phase, testid }: { phase?: string; testid?: string }) {
  const p = phase || 'Pending';
  return (
    <span class={`phase phase-${p}`} data-testid={testid}>
      {p}
    </span>
  );
}

/** Errors from the API, announced to screen readers. */
export function Alert({ error, onClose }: { error?: string | null; onClose?: () => void }) {
  if (!error) return null;
  return (
    <div class="alert" role="alert">
      <span>{error}</span>
      {onClose && (
        <button type="button" class="link" onClick={onClose} aria-label="Dismiss error">
          ×
        </button>
      )}
    </div>
  );
}

export function Notice({ children }: { children: ComponentChildren }) {
  return (
    <div class="notice" role="status">
      {children}
    </div>
  );
}

/**
 * A button for an action the API authorizes: disabled with the reason (title and visible text)
 * when `/permissions` says the user may not, or disabled with `why` (title) for another reason.
 */
export function ActionButton(props: {
  label: string;
  perm?: Allowed;
  why?: string | false | null;
  busy?: boolean;
  kind?: 'primary' | 'danger' | '';
  /** The reason is said once elsewhere on the page (repeated buttons): only in the title. */
  quiet?: boolean;
  onClick: () => void;
}) {
  const id = useId();
  const denied = props.perm && !props.perm.allowed;
  const reason = denied ? props.perm!.reason || `you may not ${props.label.toLowerCase()} here` : props.why || '';
  const disabled = !!denied || !!props.why || !!props.busy;
  return (
    <span class="action">
      <button
        type="button"
        class={props.kind || ''}
        disabled={disabled}
        aria-disabled={disabled ? 'true' : undefined}
        title={reason || undefined}
        aria-describedby={denied && !props.quiet ? id : undefined}
        onClick={props.onClick}
      >
        {props.label}
      </button>
      {denied && !props.quiet && (
        <span class="why" id={id}>
          {reason}
        </span>
      )}
    </span>
  );
}

export function Link(props: { href: string; class?: string; children: ComponentChildren }) {
  return (
    <a href={props.href} class={props.class} onClick={onLinkClick}>
      {props.children}
    </a>
  );
}

const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

/** "3 minutes ago" with the exact time as a tooltip. */
export function Time({ at }: { at?: string }) {
  if (!at) return <span class="muted">—</span>;
  const t = Date.parse(at);
  return (
    <time dateTime={at} title={new Date(t).toLocaleString()}>
      {relative(t)}
    </time>
  );
}

export function relative(t: number): string {
  const s = (t - Date.now()) / 1000;
  const a = Math.abs(s);
  if (a < 45) return rtf.format(Math.round(s), 'second');
  if (a < 2700) return rtf.format(Math.round(s / 60), 'minute');
  if (a < 64800) return rtf.format(Math.round(s / 3600), 'hour');
  return rtf.format(Math.round(s / 86400), 'day');
}

/** 1.2 s, 3 m 4 s, 2 h 5 m. */
export function duration(ms: number): string {
  if (!isFinite(ms) || ms < 0) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} m`;
}

export const fmtTime = (at?: string) => (at ? new Date(at).toLocaleString() : '—');

/** Summarises bulk results: null when all succeeded. */
export function failures(results: { namespace: string; name: string; status: number; message?: string }[]) {
  const bad = results.filter((r) => r.status >= 300 || r.status === 0);
  if (!bad.length) return null;
  return `${bad.length} of ${results.length} failed: ${bad
    .map((r) => `${r.namespace}/${r.name}: ${r.message || r.status}`)
    .join('; ')}`;
}
